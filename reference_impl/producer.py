"""The producer (rollout side) as a steppable object, and its process main.

One `step()` is one protocol action on the next publish batch:

1. `wait`     - backpressure: pause while in_flight >= high, resume at <= low;
2. `features` - run the frozen target model, write one feature blob per sample;
3. `commit`   - `commit_samples` on the shared store (dedup, fresh flags);
4. `publish`  - append the batch's refs to the channel and fsync.

All state that must survive a crash is outside the object: on start it re-derives
what was published from the channel (so a batch committed but not published
before a crash is published now, whatever `commit` says about freshness) and
the published count from the channel's complete records.

    python -m reference_impl.producer --config run/config.json [--incarnation N]
"""

from __future__ import annotations

import errno
import os
import sys
import time
from typing import Callable, List, Optional

from . import failpoints
from .channel import CLOSED, ChannelReader, ChannelWriter, read_consumed, sentinel, set_sentinel
from .config import EXIT_USAGE, RunConfig
from .contracts import FeatureSpec, SampleRef, ref_to_dict
from .controller import DataFlowController
from .devices import pick_device
from .feature_store import FeatureStore
from .flow_control import Backpressure
from .history import HistoryWriter, NullHistory
from .process_loop import Failed, load_process, open_history, process_args, run_process
from .stores import StoreUnavailable, open_store
from .stores.base import record_network_events

IO_ERRNOS = (errno.EIO, errno.ENOSPC)


class ProducerFailed(Failed):
    """A clean, reported failure (I/O past the retry budget)."""


class Producer:
    def __init__(self, cfg: RunConfig, *, incarnation: int = 0, history: Optional[HistoryWriter] = None,
                 store=None, sleep: Callable[[float], None] = time.sleep) -> None:
        import torch

        self.cfg = cfg
        self.inc = incarnation
        self.h = history or NullHistory()
        self.sleep = sleep
        self.device = pick_device(cfg.producer_device, "producer")
        self.store = store if store is not None else open_store(cfg.backend, cfg.workdir)
        record_network_events(self.store, self.h)
        self.ctl = DataFlowController(self.store)
        self.features = FeatureStore(cfg.path("features"))
        self.features.remove_temp_files()
        self.channel = ChannelWriter(cfg.workdir)
        self._torch = torch
        self.published_ids = set(self.channel.ids)
        self.bp = Backpressure(cfg.high_watermark, cfg.low_watermark)
        self.next_index = 0
        self.batch: List[SampleRef] = []
        self.phase = "wait"
        self.consumed_seen = 0
        self.republish = 0  # records to write again (an impolite-channel fault asked for them)
        failpoints.on_action("duplicate", self.request_republish)
        self.h.emit("recover", published=self.channel.records, committed=self._safe_committed_count(),
                    torn_bytes_repaired=self.channel.torn_bytes_repaired)

    def _safe_committed_count(self) -> Optional[int]:
        try:
            return self.store.committed_count()
        except StoreUnavailable:
            raise
        except Exception:  # a third-party store without a working count
            return None

    @property
    def published(self) -> int:
        return self.channel.records

    @property
    def done(self) -> bool:
        return sentinel(self.cfg.workdir, CLOSED) is not None

    # -- one protocol action per call -------------------------------------
    def step(self) -> str:
        """Returns "progress", "idle" (wait before calling again) or "done"."""
        return getattr(self, "_step_" + self.phase)()

    def _step_wait(self) -> str:
        while self.next_index < self.cfg.num_samples and self.cfg.sample_id(self.next_index) in self.published_ids:
            self.next_index += 1
        if self.next_index >= self.cfg.num_samples:
            if not self.done:
                set_sentinel(self.cfg.workdir, CLOSED, {"records": self.published})
                self.h.emit("close", published=self.published)
            return "done"
        consumed = read_consumed(self.cfg.workdir)
        self.consumed_seen = consumed
        change = self.bp.observe(self.published, consumed)
        in_flight = self.published - consumed
        if change == "pause":
            self.h.emit("pause", published=self.published, consumed=consumed, in_flight=in_flight,
                        high=self.bp.high)
        elif change == "resume":
            self.h.emit("resume", published=self.published, consumed=consumed, in_flight=in_flight,
                        low=self.bp.low)
        if not self.bp.may_publish():
            return "idle"
        if self.republish:
            return self._step_republish()
        ids = []
        i = self.next_index
        while i < self.cfg.num_samples and len(ids) < self.cfg.publish_batch:
            sid = self.cfg.sample_id(i)
            if sid not in self.published_ids:
                ids.append(i)
            i += 1
        self.batch_indices = ids
        self.phase = "features"
        return "progress"

    def _step_features(self) -> str:
        from .model import sample_features

        cfg = self.cfg
        refs = []
        written = []
        for i in self.batch_indices:
            sid = cfg.sample_id(i)
            feats = sample_features(cfg.seed, i, cfg.seq_len, cfg.vocab, cfg.hidden, str(self.device))
            if not self.features.exists(sid):
                self._with_io_retry("features", lambda: self.features.put(sid, feats))
                written.append(sid)
            refs.append(self._make_ref(i, feats))
        if written:  # the renames durable before the commit says the samples exist
            self._with_io_retry("features", self.features.sync)
        self.batch = refs
        self.h.emit("features", ids=written)
        failpoints.hit("producer.after_features_before_commit")
        self.phase = "commit"
        return "progress"

    def _make_ref(self, index: int, feats) -> SampleRef:
        cfg = self.cfg
        sid = cfg.sample_id(index)
        specs = {k: FeatureSpec(k, tuple(v.shape), str(v.dtype).replace("torch.", ""), device_hint=str(self.device),
                             required=True)
                 for k, v in feats.items()}
        return SampleRef(
            sample_id=sid,
            run_id=cfg.run_id,
            source_task_id=f"prompt-{index}",
            feature_store_uri=f"{self.features.uri}/{sid}",
            feature_keys={k: f"{sid}/{k}" for k in feats},
            feature_specs=specs,
            strategy="eagle3",
            target_model_version=f"tiny-target-seed{cfg.seed}",
            num_tokens=cfg.seq_len,
            estimated_bytes=sum(v.numel() * v.element_size() for v in feats.values()),
            metadata={"index": index},
        )

    def _step_commit(self) -> str:
        fresh = self.ctl.commit(self.batch)
        self.h.emit("commit", ids=[r.sample_id for r in self.batch], fresh=list(fresh))
        failpoints.hit("producer.after_commit_before_publish")
        self.phase = "publish"
        return "progress"

    def _step_publish(self) -> str:
        # Publish every ref of the batch that is not in the channel yet, fresh
        # or not: a non-fresh commit may be one that never reached the channel.
        todo = [r for r in self.batch if r.sample_id not in self.published_ids]
        published_before = self.published
        for k, ref in enumerate(todo):
            if k:
                failpoints.hit("producer.mid_publish_batch")
            self._with_io_retry("channel", lambda: self.channel.append_one(ref_to_dict(ref), self.inc))
        self._with_io_retry("channel", self.channel.sync)
        ids = [r.sample_id for r in todo]
        self.published_ids.update(ids)
        self.h.emit("publish", ids=ids, first_pos=published_before, published=self.published,
                    consumed=self.consumed_seen, in_flight_before=published_before - self.consumed_seen)
        if self.batch_indices:
            self.next_index = max(self.next_index, max(self.batch_indices) + 1)
        self.batch = []
        self.phase = "wait"
        if self.cfg.producer_delay_s:
            self.sleep(self.cfg.producer_delay_s)
        return "progress"

    def request_republish(self, records: int) -> None:
        """Write the last `records` channel records again at the next publish (the `duplicate` fault)."""
        self.republish += int(records)

    def _step_republish(self) -> str:
        """Append copies of the last records already in the channel, as a producer that lost
        track of what it published would (at-least-once delivery); the consumer's dedup must hold."""
        k = min(self.republish, self.published, self.cfg.publish_batch)
        self.republish = 0
        recs = ChannelReader(self.cfg.workdir).poll()[self.published - k:self.published] if k else []
        first = self.published
        for _, rec in recs:
            self._with_io_retry("channel", lambda rec=rec: self.channel.append_one(rec["ref"], self.inc))
        if recs:
            self._with_io_retry("channel", self.channel.sync)
        self.h.emit("publish", ids=[rec["ref"]["sample_id"] for _, rec in recs], first_pos=first,
                    published=self.published, consumed=self.consumed_seen,
                    in_flight_before=first - self.consumed_seen, duplicate=True)
        return "progress"

    def _with_io_retry(self, where: str, fn):
        """Run `fn`, retrying injected/real EIO and ENOSPC a bounded number of times."""
        attempt = 0
        while True:
            try:
                return fn()
            except OSError as e:
                if e.errno not in IO_ERRNOS:
                    raise
                attempt += 1
                fatal = attempt > self.cfg.io_retries
                self.h.emit("io_error", where=where, errno=errno.errorcode.get(e.errno, str(e.errno)),
                            attempt=attempt, fatal=fatal, message=str(e))
                if fatal:
                    raise ProducerFailed(f"{where}: {e} (after {attempt} attempts)") from e
                self.sleep(self.cfg.io_retry_delay_s * attempt)

    def close(self) -> None:
        self.channel.close()
        try:
            self.store.close()
        except Exception:
            pass


def run_producer(cfg: RunConfig, incarnation: int, history: HistoryWriter) -> int:
    """The producer process: the process loop around `Producer` (see `process_loop`)."""
    return run_process("producer", cfg, history, lambda: Producer(cfg, incarnation=incarnation, history=history))


def main(argv=None) -> int:
    args = process_args("python -m reference_impl.producer", "Reference producer: commit and publish sample refs.",
                        argv, resume=False)
    loaded = load_process("producer", args.config, device="producer_device")
    if loaded is None:
        return EXIT_USAGE
    cfg, _ = loaded
    history = open_history(cfg, "producer", args.incarnation)
    history.emit("start", pid=os.getpid(), resume=args.incarnation > 0, backend=cfg.backend)
    return run_producer(cfg, args.incarnation, history)


if __name__ == "__main__":
    # Run the canonical module's main, not this __main__ copy, so that
    # variants patching reference_impl.producer reach the classes in use.
    from reference_impl.producer import main as _main

    sys.exit(_main())
