"""The consumer (training side) as a steppable object, and its process main.

One `step()` is one protocol action, by phase:

1. `fill`       - poll the channel, take refs into the current optimizer window
                  (skipping released samples and second copies);
2. `train`      - one optimizer step over the window (`accumulation` micro-batches);
3. `checkpoint` - every `checkpoint_every` steps (and at the end, or when starved
                  of input with trained samples unacked): model, optimizer,
                  `global_step` and the `unacked` ids, written atomically;
4. `ack`        - `record_train_ack(unacked, global_step)`: the durable ack;
5. `consumed`   - the channel's consumed count (the done-prefix) written;
6. `release`    - feature blobs of the acked samples deleted.

The checkpoint is written before the ack of the same step, so a crash between
them leaves a checkpoint ahead of the ledger, which reconcile rolls forward (the
samples are in the model: they must be released, not trained again). Features
are deleted only after the ack is durable.

On start the consumer loads the newest checkpoint and reconciles it with the
store (`DataFlowController.reconcile`): released samples are skipped, the rest
of the channel is trained. A lost ledger (store server restarted, ids gone)
fails closed: exit 3 and the `channel.failed` sentinel, never silent retraining.

    python -m reference_impl.consumer --config run/config.json [--resume] [--incarnation N]
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional

from . import failpoints
from .channel import (
    CLOSED,
    CONSUMER_DONE,
    ChannelReader,
    read_consumed,
    sentinel,
    set_sentinel,
    sync_consumed,
    write_consumed,
)
from .checkpoint_file import decode_checkpoint, encode_checkpoint
from .config import EXIT_USAGE, RunConfig
from .contracts import SampleRef
from .controller import DataFlowController, LedgerLost
from .devices import pick_device
from .feature_store import FeatureStore
from .fileio import fsync_dir, makedirs_durable, sync_if_present
from .history import HistoryWriter, NullHistory
from .process_loop import FailClosed, load_process, open_history, process_args, run_process
from .ref_queue import StreamingRefQueue
from .stores import open_store
from .stores.base import record_network_events

CHECKPOINT = os.path.join("checkpoint", "consumer.pt")


class ConsumerFailClosed(FailClosed):
    """The consumer stops rather than risk wrong training (`reason`, `detail`)."""


def checkpoint_path(cfg: RunConfig) -> str:
    return cfg.path(CHECKPOINT)


def load_checkpoint(cfg: RunConfig, map_location="cpu") -> Optional[Dict[str, Any]]:
    """The checkpoint (`checkpoint_file` format) with its tensors on `map_location`, or None."""
    try:
        with open(checkpoint_path(cfg), "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    return decode_checkpoint(data, map_location)


def save_checkpoint(cfg: RunConfig, state: Dict[str, Any]) -> None:
    """Atomic: temp file, fsync, rename, fsync the directory."""
    path = checkpoint_path(cfg)
    makedirs_durable(os.path.dirname(path))  # the checkpoint/ entry itself must survive a power cut
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(encode_checkpoint(state))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    failpoints.hit("consumer.mid_checkpoint_replace")
    fsync_dir(os.path.dirname(path))


def sync_checkpoint(cfg: RunConfig) -> None:
    """Make the checkpoint as it is now durable: file, `checkpoint/` entry, and its own entry.

    A consumer killed between its rename and its directory fsync leaves a
    checkpoint that is visible but not durable; reconcile rolls the ledger
    forward to it, so it must be durable first, or a power cut leaves the
    ledger ahead of the checkpoint on disk."""
    path = checkpoint_path(cfg)
    if sync_if_present(path):
        makedirs_durable(os.path.dirname(path))


class Consumer:
    def __init__(self, cfg: RunConfig, *, incarnation: int = 0, history=None, store=None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        import torch

        from .model import DraftModel

        self.cfg = cfg
        self.inc = incarnation
        self.h = history or NullHistory()
        self.clock = clock
        self._torch = torch
        self.device = pick_device(cfg.consumer_device, "consumer")
        self.store = store if store is not None else open_store(cfg.backend, cfg.workdir)
        record_network_events(self.store, self.h)
        self.ctl = DataFlowController(self.store)
        self.features = FeatureStore(cfg.path("features"))
        self.index_of = {cfg.sample_id(i): i for i in range(cfg.num_samples)}
        self.model = DraftModel(cfg.vocab, cfg.hidden, cfg.num_samples, cfg.seed).to(self.device)
        self.optim = self.model.optimizer(cfg.lr)
        self.global_step = 0
        self.acked_step = 0
        self.unacked: List[str] = []  # trained since the last ack, in the model
        self.window: List[SampleRef] = []
        self.phase = "fill"
        self.finished = False
        self.last_progress = clock()
        self.consumed_written = read_consumed(cfg.workdir)
        sync_consumed(cfg.workdir)  # what was read is durable before anyone acts on it
        self._final_window = False
        self.ledger_id = None
        self.queue = StreamingRefQueue(ChannelReader(cfg.workdir))
        self.replay = 0  # records to read again (an impolite-channel fault asked for them)
        failpoints.on_action("replay", self.request_replay)
        self._resume()

    # -- start: checkpoint + reconcile ------------------------------------
    def _resume(self) -> None:
        cfg = self.cfg
        ckpt = load_checkpoint(cfg, map_location=self.device)
        if ckpt is not None:
            sync_checkpoint(cfg)  # durable before reconcile rolls the ledger forward to it
        if ckpt is not None:
            self.model.load_state_dict(ckpt["model"])
            self.optim.load_state_dict(ckpt["optim"])
            self.global_step = self.acked_step = int(ckpt["global_step"])
        if cfg.pre_o11:
            # Pre-O1.1: a private store per process, nothing to reconcile with.
            self.h.emit("reconcile", marker_step=None, checkpoint_step=self._ckpt_step(ckpt),
                        checkpoint_inc=ckpt.get("writer_inc") if ckpt else None, released=[], requeued=[],
                        rolled_forward=[], consumed_before=self.consumed_written, marker_acked_count=0,
                        layout="private")
            return
        try:
            rec = self.ctl.reconcile(ckpt)
        except LedgerLost as e:
            raise ConsumerFailClosed(e.reason, e.detail) from e
        self.ledger_id = self.ctl.ledger_id()
        self.queue.skip_ids.update(rec.released)
        # `marker_step` is what reconcile read first; a roll-forward ack came after it.
        self.h.emit("reconcile", marker_step=rec.marker_step, checkpoint_step=rec.checkpoint_step,
                    checkpoint_inc=ckpt.get("writer_inc") if ckpt else None, released=rec.released,
                    requeued=rec.requeued, rolled_forward=rec.rolled_forward,
                    consumed_before=self.consumed_written,
                    marker_acked_count=len(rec.released) - len(rec.rolled_forward))
        if ckpt is not None and rec.checkpoint_step and rec.checkpoint_step > (rec.marker_step or 0):
            self.h.emit("ack", step=rec.checkpoint_step, ids=list(ckpt.get("unacked") or []), durable=True,
                        roll_forward=True)
        # Blobs of released samples that a crash left behind (acked, not yet deleted).
        present = set(self.features.list_ids())  # one directory read, not a stat per released sample
        leftover = [sid for sid in rec.released if sid in present]
        if leftover:
            failpoints.hit("consumer.after_ack_before_release")
            self.h.emit("release_features", ids=self.features.delete(leftover), gc=True)

    @staticmethod
    def _ckpt_step(ckpt) -> Optional[int]:
        return int(ckpt["global_step"]) if ckpt is not None else None

    # -- one protocol action per call -------------------------------------
    def step(self) -> str:
        """Returns "progress", "idle" (wait before calling again) or "done"."""
        if self.finished:
            return "done"
        return getattr(self, "_step_" + self.phase)()

    def request_replay(self, records: int) -> None:
        """Move the read position `records` back before the next read (the `replay` fault)."""
        self.replay += int(records)

    def _step_fill(self) -> str:
        cfg = self.cfg
        need = cfg.window
        if self.replay:
            back, self.replay = self.replay, 0
            frm, to = self.queue.rewind(back)
            self.h.emit("replay", from_pos=frm, to_pos=to)
        closed_before_poll = sentinel(cfg.workdir, CLOSED) is not None
        got = self.queue.poll()
        moved = got > 0
        while len(self.window) < need:
            d = self.queue.next()
            if d is None:
                break
            kind, pos, ref = d
            if kind == "take":
                self.window.append(ref)
                self.h.emit("read", pos=pos, id=ref.sample_id)
            else:
                self.h.emit("skip", pos=pos, id=ref.sample_id, reason=kind.split("-", 1)[1])
        self._publish_consumed()
        if len(self.window) >= need:
            failpoints.hit("consumer.after_read_before_train")
            self.phase = "train"
            return "progress"
        input_over = closed_before_poll and self.queue.buffered == 0 and got == 0
        if input_over:
            if self.window:
                # The last, short window (single rank: a smaller optimizer step).
                failpoints.hit("consumer.after_read_before_train")
                self._final_window = True
                self.phase = "train"
                return "progress"
            if self.unacked:
                self.phase = "checkpoint"
                return "progress"
            return self._finish()
        if self.unacked and self.clock() - self.last_progress > cfg.starve_checkpoint_s:
            # Starved with trained samples unacked: make them durable so the
            # consumed count (and the producer's backpressure) can move.
            self.phase = "checkpoint"
            return "progress"
        if moved:
            self.last_progress = self.clock()
            return "progress"
        return "idle"

    def _step_train(self) -> str:
        cfg = self.cfg
        refs = self.window
        batches, indices, trained = [], [], []
        for ref in refs:
            sid = ref.sample_id
            try:
                feats = self.features.get(sid)
            except FileNotFoundError:
                # Only a protocol bug gets here (blobs go only after a durable
                # ack, and acked samples are skipped): say so loudly, the
                # checkers then report the loss.
                self.h.emit("missing_features", id=sid)
                self.queue.mark_acked([sid])
                continue
            batches.append({k: v.to(self.device) for k, v in feats.items()})
            indices.append(self.index_of[sid])
            trained.append(sid)
        self.window = []
        if trained:
            self.optim.zero_grad(set_to_none=True)
            micro = max(1, -(-len(trained) // cfg.accumulation))
            for lo in range(0, len(trained), micro):
                # Cross-entropy weighted by the micro-batch's share of the step;
                # the witness term unweighted, so each sample adds exactly 1.
                share = len(indices[lo:lo + micro]) / len(trained)
                self.model.loss(batches[lo:lo + micro], indices[lo:lo + micro], cfg.world_size,
                                ce_weight=share).backward()
            self.optim.step()
            self.global_step += 1
            self.unacked.extend(trained)
            self.h.emit("train", step=self.global_step, ids=trained)
            failpoints.hit("consumer.after_train_before_checkpoint")
        self.last_progress = self.clock()
        if cfg.consumer_step_delay_s:
            time.sleep(cfg.consumer_step_delay_s)
        due = self.global_step - self.acked_step >= cfg.checkpoint_every
        self.phase = "checkpoint" if (self.unacked and (due or self._final_window)) else "fill"
        self._final_window = False
        return "progress"

    def _step_checkpoint(self) -> str:
        state = {
            "global_step": self.global_step,
            "writer_inc": self.inc,
            "unacked": list(self.unacked),
            "acked_step": self.acked_step,  # the ledger must be at least here on resume
            "model": self.model.state_dict(),
            "optim": self.optim.state_dict(),
            "ledger_id": self.ledger_id,
        }
        save_checkpoint(self.cfg, state)
        self.h.emit("checkpoint", step=self.global_step, unacked=list(self.unacked))
        failpoints.hit("consumer.after_checkpoint_before_ack")
        self.phase = "ack"
        return "progress"

    def _step_ack(self) -> str:
        ids = list(self.unacked)
        self.ctl.ack(ids, global_step=self.global_step, durable=True)
        self.h.emit("ack", step=self.global_step, ids=ids, durable=True)
        self.acked_step = self.global_step
        self.unacked = []
        self.queue.mark_acked(ids)
        self._released_pending = ids
        failpoints.hit("consumer.after_ack_before_consumed")
        self.phase = "consumed"
        return "progress"

    def _step_consumed(self) -> str:
        self._publish_consumed()
        failpoints.hit("consumer.after_ack_before_release")
        self.phase = "release"
        return "progress"

    def _step_release(self) -> str:
        ids = getattr(self, "_released_pending", [])
        self.h.emit("release_features", ids=self.features.delete(ids))
        self._released_pending = []
        self.last_progress = self.clock()
        self.phase = "fill"
        return "progress"

    def _publish_consumed(self) -> None:
        # Never written lower than what is there: a restarted consumer re-derives
        # its frontier from the start of the channel and catches up.
        if self.queue.consumed > self.consumed_written:
            write_consumed(self.cfg.workdir, self.queue.consumed)
            self.consumed_written = self.queue.consumed
            self.h.emit("consumed", consumed=self.queue.consumed)

    def _finish(self) -> str:
        set_sentinel(self.cfg.workdir, CONSUMER_DONE,
                     {"consumed": self.queue.consumed, "global_step": self.global_step})
        self.h.emit("done", consumed=self.queue.consumed, step=self.global_step)
        self.finished = True
        return "done"

    def close(self) -> None:
        try:
            self.store.close()
        except Exception:
            pass


def run_consumer(cfg: RunConfig, incarnation: int, history: HistoryWriter) -> int:
    """The consumer process: the process loop around `Consumer` (see `process_loop`)."""
    return run_process("consumer", cfg, history, lambda: Consumer(cfg, incarnation=incarnation, history=history))


def main(argv=None) -> int:
    args = process_args("python -m reference_impl.consumer",
                        "Reference consumer: train the draft head on published refs.", argv, resume=True)
    loaded = load_process("consumer", args.config, device="consumer_device")
    if loaded is None:
        return EXIT_USAGE
    cfg, device = loaded
    if not args.resume and os.path.exists(checkpoint_path(cfg)):
        print(f"consumer: error: {checkpoint_path(cfg)} exists; pass --resume to continue that run "
              f"or use a fresh workdir", file=sys.stderr)
        return EXIT_USAGE
    history = open_history(cfg, "consumer", args.incarnation)
    history.emit("start", pid=os.getpid(), resume=args.resume, device=str(device), backend=cfg.backend)
    return run_consumer(cfg, args.incarnation, history)


if __name__ == "__main__":
    # Run the canonical module's main, not this __main__ copy, so that
    # variants patching reference_impl.consumer reach the classes in use.
    from reference_impl.consumer import main as _main

    sys.exit(_main())
