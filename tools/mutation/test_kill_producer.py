"""Killing-test items aimed at the survivors of `reference_impl/producer.py` (tools/mutation/run.py runs them
with test_kill.py). Each drives the producer in this process (mutmut selects a test for a mutant only when it
saw the test call the mutant's function here), on a tiny workload, with a recording history and a recording
`sleep`, and compares what the producer did exactly: its events, its channel records, its feature blobs, its
store commits, its sleeps, its fsyncs of the features directory and its step statuses. Items, in the order
of the tests:

1. a fault-free run: every event with every field, one publish batch after another, the close, each
   failpoint reached under its name as often as the batches pass it; the channel's
   records (the full ref of each, its incarnation), the blobs (the target model's features of each prompt),
   the store's commits, the closed sentinel, a pause of `producer_delay_s` after each publish, and a finished
   producer that stays done without closing twice;
2. a restart after a batch was committed but not published, with a torn channel tail and a feature temp file
   left behind: the recover event's counts, the leftovers removed, the batch published again although its
   commit is not fresh and its blobs are not rewritten (nor the features directory synced for it); a restart
   after a crash in the middle of a publish batch (an odd number of records in the channel) publishes the rest;
3. backpressure: a pause at the high watermark (idle steps while paused), a resume at the low one, each with
   its counts, and the publish after it with the consumed count it saw;
4. injected I/O errors: EIO on the features directory's fsync, on a channel append and on the channel's
   fsync retried (an `io_error` event per failure, a growing sleep between tries) up to `io_retries`, ENOSPC
   on a feature blob one try past it fails cleanly (`ProducerFailed` naming where, the error and the
   attempts); an error that is neither is raised at once;
5. the duplicate fault (`request_republish`): copies of the last records, as many as asked (requests add up),
   no more than the channel holds nor than `publish_batch`, written with the producer's incarnation, their
   I/O retried as the channel's, and their publish events with the counts; a request on an empty channel
   writes nothing (there, a producer built without an incarnation: incarnation 0);
6. the store: a third-party store whose count fails reports None, a lost store connection is raised, a
   networked store's failed attempts go to the history; `close` closes the channel and the store and
   swallows the store's error;
7. the device: a producer without its device names itself in the error; the target model and each prompt
   are on the producer's device (torch's meta device standing in for an accelerator);
8. the process main: `--help` (usage, description, no `--resume`), a device it cannot have (a usage error
   naming the producer), a run with `--incarnation 1` (its start event, its history, its records' incarnation)
   and then one with incarnation 0, and a run failing cleanly on I/O errors (exit code, stderr, the sentinel).
"""

from __future__ import annotations

import errno
import json
import os

import pytest

from reference_impl import failpoints
from reference_impl.channel import CHANNEL, CLOSED, FAILED, ChannelReader, sentinel, write_consumed

PROGRESS, IDLE, DONE = "progress", "idle", "done"


def sid(i):
    return f"s{i:06d}"


def ids(*indices):
    return [sid(i) for i in indices]


class _History:
    """Records the events a producer emits (a HistoryWriter without the file)."""

    def __init__(self):
        self.events = []

    def emit(self, ev, **fields):
        self.events.append(dict(fields, ev=ev))


def _cfg(workdir, **kw):
    from reference_impl.config import RunConfig

    base = dict(workdir=str(workdir), num_samples=5, publish_batch=2, train_batch=1, accumulation=1,
                high_watermark=64, low_watermark=32, io_retries=2, io_retry_delay_s=0.25)
    base.update(kw)
    return RunConfig(**base).validate()


def _producer(cfg, store, inc=0):
    """A producer with a recording history and sleep; `inc` None leaves the incarnation to its default."""
    from reference_impl.producer import Producer

    h, sleeps = _History(), []
    kw = {} if inc is None else {"incarnation": inc}
    p = Producer(cfg, history=h, store=store, sleep=sleeps.append, **kw)
    return p, h.events, sleeps


class _Syncs:
    """Counts a feature store's directory fsyncs; the first `fail` of them raise EIO."""

    def __init__(self, p, fail=0):
        self.real, self.calls, self.fail = p.features.sync, 0, fail
        p.features.sync = self

    def __call__(self):
        self.calls += 1
        if self.calls <= self.fail:
            raise OSError(errno.EIO, "injected EIO on the features dir fsync")
        self.real()


def _steps(p, n=None):
    """Step `n` times, or until a status other than progress; the statuses."""
    out = []
    while n is None or len(out) < n:
        out.append(p.step())
        if n is None and out[-1] != PROGRESS:
            break
    return out


def _store():
    from reference_impl.stores.memory import InMemoryMetadataStore

    return InMemoryMetadataStore()


def _records(workdir):
    return [rec for _, rec in ChannelReader(str(workdir)).poll()]


def _batch(indices, first, consumed=0, fresh=True, written=True):
    """The events of one publish batch: features, commit, publish."""
    n = ids(*indices)
    return [{"ev": "features", "ids": n if written else []},
            {"ev": "commit", "ids": n, "fresh": [fresh] * len(n)},
            {"ev": "publish", "ids": n, "first_pos": first, "published": first + len(n), "consumed": consumed,
             "in_flight_before": first - consumed}]


def _copies(copied, first, consumed):
    return {"ev": "publish", "ids": copied, "first_pos": first, "published": first + len(copied),
            "consumed": consumed, "in_flight_before": first - consumed, "duplicate": True}


@pytest.fixture
def armed():
    """Failpoint rules armed for one item, disarmed after it (whatever it left)."""
    yield lambda rules: failpoints.configure(rules)
    failpoints.configure(None)


def test_a_fault_free_run_does_exactly_its_protocol(tmp_path):
    import torch

    from reference_impl.feature_store import FeatureStore
    from reference_impl.model import TargetModel, prompt_tokens

    cfg = _cfg(tmp_path, producer_delay_s=0.5, seed=3, run_id="r7")
    store = _store()
    p, events, sleeps = _producer(cfg, store, inc=2)
    syncs = _Syncs(p)
    assert (p.published, p.done) == (0, False)
    failpoints.take_reached()
    statuses = _steps(p)
    reached = {k: v for k, v in failpoints.take_reached().items() if k.startswith("producer.")}
    assert statuses == [PROGRESS] * 12 + [DONE]
    # its failpoints, by name (the process engine arms them by name): one per batch, one inside each batch of 2
    assert reached == {"producer.after_features_before_commit": 3, "producer.after_commit_before_publish": 3,
                       "producer.mid_publish_batch": 2}
    assert syncs.calls == 3  # the blobs' renames made durable once per batch, before its commit
    assert events == ([{"ev": "recover", "published": 0, "committed": 0, "torn_bytes_repaired": 0}]
                      + _batch([0, 1], 0) + _batch([2, 3], 2) + _batch([4], 4)
                      + [{"ev": "close", "published": 5}])
    assert sleeps == [0.5, 0.5, 0.5]
    assert (p.step(), len(events), p.published, p.done) == (DONE, 11, 5, True)  # stays done, closes once
    assert sentinel(str(tmp_path), CLOSED) == {"records": 5}
    # the channel: each sample's full ref, once, in order, with the producer's incarnation
    recs = _records(tmp_path)
    assert [r["inc"] for r in recs] == [2] * 5
    fs = FeatureStore(cfg.path("features"))
    target = TargetModel(cfg.vocab, cfg.hidden, cfg.seed)
    for i, rec in enumerate(recs):
        blob = fs.get(sid(i))
        feats = target.features(prompt_tokens(cfg.seed, i, cfg.seq_len, cfg.vocab))
        assert sorted(blob) == sorted(feats) == ["hidden_states", "input_ids", "target"]
        assert all(torch.equal(blob[k], feats[k]) for k in feats)
        specs = {k: {"name": k, "shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", ""),
                     "device_hint": "cpu", "required": True, "target_repr": None, "target_meta": {}}
                 for k, v in feats.items()}
        assert rec["ref"] == {
            "sample_id": sid(i), "run_id": "r7", "source_task_id": f"prompt-{i}",
            "feature_store_uri": f"file://{os.path.abspath(cfg.path('features'))}/{sid(i)}",
            "feature_keys": {k: f"{sid(i)}/{k}" for k in feats}, "feature_specs": specs, "strategy": "eagle3",
            "schema_version": 1, "target_model_version": "tiny-target-seed3", "draft_weight_version": None,
            "tokenizer_version": None, "num_tokens": cfg.seq_len,
            "estimated_bytes": sum(v.numel() * v.element_size() for v in feats.values()),
            "metadata": {"index": i}}, i
    # the store: each sample committed once, with the ref the channel carries
    from reference_impl.contracts import ref_to_dict

    assert store.all_committed_ids() == ids(0, 1, 2, 3, 4)
    assert [ref_to_dict(store.get_committed(sid(i))) for i in range(5)] == [r["ref"] for r in recs]
    assert sorted(os.listdir(cfg.path("features"))) == [f"{sid(i)}.blob" for i in range(5)]
    p.close()


def test_a_restart_publishes_a_committed_batch_again(tmp_path):
    cfg = _cfg(tmp_path)
    store = _store()
    p1, ev1, _ = _producer(cfg, store)
    assert _steps(p1, 7) == [PROGRESS] * 7  # batch [0, 1] published, batch [2, 3] committed, not published
    assert ev1[-2:] == _batch([2, 3], 2)[:2]
    p1.close()
    with open(os.path.join(tmp_path, CHANNEL), "ab") as f:
        f.write(b'{"ref": {"sample_')  # a torn record
    tmp_blob = os.path.join(cfg.path("features"), "s000009.blob.tmp.77")
    with open(tmp_blob, "wb") as f:
        f.write(b"half")
    p2, ev2, _ = _producer(cfg, store, inc=1)
    assert not os.path.exists(tmp_blob)
    assert (p2.published, p2.published_ids, p2.next_index, p2.phase) == (2, set(ids(0, 1)), 0, "wait")
    syncs = _Syncs(p2)
    assert _steps(p2, 2) == [PROGRESS] * 2
    assert syncs.calls == 0  # no blob written for the committed batch: nothing to make durable
    assert _steps(p2) == [PROGRESS] * 6 + [DONE]
    assert syncs.calls == 1
    assert ev2 == ([{"ev": "recover", "published": 2, "committed": 4, "torn_bytes_repaired": 17}]
                   + _batch([2, 3], 2, fresh=False, written=False) + _batch([4], 4)
                   + [{"ev": "close", "published": 5}])
    assert [(r["ref"]["sample_id"], r["inc"]) for r in _records(tmp_path)] == list(zip(ids(0, 1, 2, 3, 4),
                                                                                       [0, 0, 1, 1, 1]))
    p2.close()


def test_a_restart_after_a_crash_mid_publish_publishes_the_rest(tmp_path, armed):
    # the channel holds an odd number of records (3): the restart publishes from the first one it lacks
    cfg = _cfg(tmp_path, num_samples=4)
    store = _store()
    p1, _, _ = _producer(cfg, store)
    armed([{"point": "producer.mid_publish_batch", "action": "raise", "hit": 2}])
    assert _steps(p1, 7) == [PROGRESS] * 7
    with pytest.raises(failpoints.FailpointCrash):
        p1.step()  # s000002 appended, s000003 not
    p1.close()
    failpoints.configure(None)
    p2, ev2, _ = _producer(cfg, store, inc=1)
    syncs = _Syncs(p2)
    assert _steps(p2) == [PROGRESS] * 4 + [DONE]
    assert ev2 == ([{"ev": "recover", "published": 3, "committed": 4, "torn_bytes_repaired": 0}]
                   + _batch([3], 3, fresh=False, written=False) + [{"ev": "close", "published": 4}])
    assert syncs.calls == 0
    assert [(r["ref"]["sample_id"], r["inc"]) for r in _records(tmp_path)] == list(zip(ids(0, 1, 2, 3),
                                                                                       [0, 0, 0, 1]))
    p2.close()


def test_backpressure_pauses_at_high_and_resumes_at_low(tmp_path):
    cfg = _cfg(tmp_path, num_samples=6, high_watermark=3, low_watermark=1)
    p, events, _ = _producer(cfg, _store())
    assert _steps(p) == [PROGRESS] * 8 + [IDLE]
    assert events[-1] == {"ev": "pause", "published": 4, "consumed": 0, "in_flight": 4, "high": 3}
    assert _steps(p, 1) == [IDLE]
    write_consumed(str(tmp_path), 2)  # in flight 2: above low, still paused
    assert _steps(p, 1) == [IDLE]
    write_consumed(str(tmp_path), 3)
    assert _steps(p) == [PROGRESS] * 4 + [DONE]
    assert events == ([{"ev": "recover", "published": 0, "committed": 0, "torn_bytes_repaired": 0}]
                      + _batch([0, 1], 0) + _batch([2, 3], 2)
                      + [{"ev": "pause", "published": 4, "consumed": 0, "in_flight": 4, "high": 3},
                         {"ev": "resume", "published": 4, "consumed": 3, "in_flight": 1, "low": 1}]
                      + _batch([4, 5], 4, consumed=3) + [{"ev": "close", "published": 6}])
    assert p.consumed_seen == 3
    p.close()


def _io_error(where, code, attempt, fatal, point):
    name = errno.errorcode[code]
    return {"ev": "io_error", "where": where, "errno": name, "attempt": attempt, "fatal": fatal,
            "message": f"[Errno {code}] injected {name} at failpoint {point}"}


def test_io_errors_are_retried_then_fail_cleanly(tmp_path, armed):
    from reference_impl.producer import ProducerFailed

    cfg = _cfg(tmp_path)
    p, events, sleeps = _producer(cfg, _store())
    # the first publish's second append fails once, its fsync twice (io_retries 2: the third try passes), the
    # third blob three times
    armed([{"point": "channel.mid_append", "action": "eio", "hit": 2},
           {"point": "channel.before_fsync", "action": "eio", "hit": 1, "times": 2},
           {"point": "features.before_rename", "action": "enospc", "hit": 3, "times": 3}])
    syncs = _Syncs(p, fail=1)  # and the first fsync of the features dir once
    assert _steps(p, 5) == [PROGRESS] * 5
    with pytest.raises(ProducerFailed) as e:
        p.step()
    append, fsync, rename = "channel.mid_append", "channel.before_fsync", "features.before_rename"
    assert str(e.value) == ("features: [Errno 28] injected ENOSPC at failpoint features.before_rename "
                            "(after 3 attempts)")
    assert isinstance(e.value.__cause__, OSError) and e.value.__cause__.errno == errno.ENOSPC
    b = _batch([0, 1], 0)
    dir_error = {"ev": "io_error", "where": "features", "errno": "EIO", "attempt": 1, "fatal": False,
                 "message": "[Errno 5] injected EIO on the features dir fsync"}
    assert events[1:] == ([dir_error] + b[:2] + [_io_error("channel", errno.EIO, 1, False, append),
                                                 _io_error("channel", errno.EIO, 1, False, fsync),
                                                 _io_error("channel", errno.EIO, 2, False, fsync)] + b[2:]
                          + [_io_error("features", errno.ENOSPC, n, n == 3, rename) for n in (1, 2, 3)])
    assert sleeps == [0.25, 0.25, 0.25, 0.5, 0.25, 0.5]
    assert [r["ref"]["sample_id"] for r in _records(tmp_path)] == ids(0, 1)  # the failed append left no trace
    assert syncs.calls == 2
    p.close()


def test_another_os_error_is_raised_at_once(tmp_path):
    cfg = _cfg(tmp_path)
    p, events, sleeps = _producer(cfg, _store())

    def denied():
        raise PermissionError(errno.EACCES, "denied")

    p.channel.sync = denied
    with pytest.raises(PermissionError):
        _steps(p, 4)
    assert ([e["ev"] for e in events], sleeps) == (["recover", "features", "commit"], [])
    p.close()


def test_the_duplicate_fault_writes_copies_of_the_last_records(tmp_path, armed):
    cfg = _cfg(tmp_path, num_samples=6)
    store = _store()
    p1, _, _ = _producer(cfg, store)
    failpoints.act("duplicate", 1)  # nothing in the channel yet: no copy
    assert _steps(p1, 5) == [PROGRESS] * 5
    p1.close()
    cfg = _cfg(tmp_path, num_samples=6, publish_batch=3)
    p, events, sleeps = _producer(cfg, store, inc=4)
    write_consumed(str(tmp_path), 1)
    # the copies' first append and their fsync each fail once, and are retried as the channel's
    armed([{"point": "channel.mid_append", "action": "eio"}, {"point": "channel.before_fsync", "action": "eio"}])
    failpoints.act("duplicate", 3)  # 3 asked, 2 in the channel
    assert _steps(p, 1) == [PROGRESS]
    p.request_republish(1)
    p.request_republish(1)  # requests add up
    assert _steps(p, 1) == [PROGRESS]
    p.request_republish(5)  # no more than publish_batch (3)
    assert _steps(p) == [PROGRESS] * 9 + [DONE]
    assert events == ([{"ev": "recover", "published": 2, "committed": 2, "torn_bytes_repaired": 0},
                       _io_error("channel", errno.EIO, 1, False, "channel.mid_append"),
                       _io_error("channel", errno.EIO, 1, False, "channel.before_fsync"),
                       _copies(ids(0, 1), 2, 1), _copies(ids(0, 1), 4, 1), _copies(ids(1, 0, 1), 6, 1)]
                      + _batch([2, 3, 4], 9, consumed=1) + _batch([5], 12, consumed=1)
                      + [{"ev": "close", "published": 13}])
    assert sleeps == [0.25, 0.25]
    recs = _records(tmp_path)
    assert [(r["ref"]["sample_id"], r["inc"]) for r in recs] == list(zip(ids(0, 1, 0, 1, 0, 1, 1, 0, 1, 2, 3, 4, 5),
                                                                         [0, 0] + [4] * 11))
    assert [r["ref"] for r in recs[2:4]] == [r["ref"] for r in recs[:2]]
    p.close()


def test_a_request_on_an_empty_channel_writes_nothing(tmp_path):
    # (and a producer built without an incarnation is incarnation 0)
    p, events, _ = _producer(_cfg(tmp_path, num_samples=2), _store(), inc=None)
    p.request_republish(2)
    assert _steps(p) == [PROGRESS] * 5 + [DONE]
    assert events == ([{"ev": "recover", "published": 0, "committed": 0, "torn_bytes_repaired": 0},
                       _copies([], 0, 0)] + _batch([0, 1], 0) + [{"ev": "close", "published": 2}])
    assert [r["inc"] for r in _records(tmp_path)] == [0, 0]
    p.close()


def test_the_store_count_close_and_a_lost_store(tmp_path):
    from reference_impl.stores import StoreUnavailable
    from reference_impl.stores.memory import InMemoryMetadataStore

    class Odd(InMemoryMetadataStore):
        closed = False

        def committed_count(self):
            raise RuntimeError("no count here")

        def close(self):
            Odd.closed = True
            raise RuntimeError("close failed")

    class Lost(InMemoryMetadataStore):
        def committed_count(self):
            raise StoreUnavailable("gone")

    class Networked(InMemoryMetadataStore):
        on_network_event = None  # a networked store reports its failed attempts here

    cfg = _cfg(tmp_path)
    p, events, _ = _producer(cfg, Odd())
    assert events == [{"ev": "recover", "published": 0, "committed": None, "torn_bytes_repaired": 0}]
    p.close()
    net = Networked()
    p, events, _ = _producer(cfg, net)
    net.on_network_event(call="commit_samples", attempt=1)
    assert events[1:] == [{"ev": "store_call", "call": "commit_samples", "attempt": 1}]
    p.close()
    assert (p.channel._fd, Odd.closed) == (None, True)
    with pytest.raises(StoreUnavailable):
        _producer(cfg, Lost())


def test_a_producer_without_its_device_names_itself(tmp_path, monkeypatch):
    import torch

    from reference_impl.devices import DeviceError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="^producer: device 'cuda' was demanded"):
        _producer(_cfg(tmp_path, producer_device="cuda"), _store())


def test_the_target_model_and_its_prompts_are_on_the_producers_device(tmp_path, monkeypatch):
    # an accelerator stands in as torch's meta device: the model's parameters and each prompt go there
    import torch

    import reference_impl.model as model
    import reference_impl.producer as producer

    meta = torch.device("meta")
    assert {t.device for t in model.frozen_target(64, 16, 0, "meta").parameters()} == {meta}
    assert {t.device for t in model.sample_features(0, 0, 8, 64, 16, "meta").values()} == {meta}
    monkeypatch.setattr(producer, "pick_device", lambda request, who: meta)
    real, seen = model.sample_features, []

    def on_device(seed, index, seq_len, vocab, hidden, device):  # meta tensors hold no data: the CPU's
        seen.append(device)
        return real(seed, index, seq_len, vocab, hidden, "cpu")

    monkeypatch.setattr(model, "sample_features", on_device)
    p, events, _ = _producer(_cfg(tmp_path), _store())
    assert _steps(p, 2) == [PROGRESS] * 2
    assert seen == ["meta"] * len(p.batch) and seen
    assert {s.device_hint for r in p.batch for s in r.feature_specs.values()} == {"meta"}
    p.close()


# -- the process main, in this process -------------------------------------------------------------------------------

def _config_file(tmp_path, **kw):
    from reference_impl.config import write_config

    cfg = _cfg(tmp_path, num_samples=3, io_retry_delay_s=0, **kw)
    return write_config(cfg)


def test_main_help_names_the_producer(capsys):
    from reference_impl.producer import main

    with pytest.raises(SystemExit) as e:
        main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    assert out.startswith("usage: python -m reference_impl.producer ")
    assert "\nReference producer: commit and publish sample refs.\n" in out
    assert "--incarnation" in out and "--resume" not in out


def test_main_without_its_device_is_a_usage_error(tmp_path, capsys, monkeypatch):
    import torch

    from reference_impl.config import EXIT_USAGE
    from reference_impl.producer import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    path = _config_file(tmp_path, producer_device="cuda")
    assert main(["--config", path]) == EXIT_USAGE
    assert capsys.readouterr().err.startswith("producer: error: producer: device 'cuda' was demanded")
    assert not os.path.exists(os.path.join(tmp_path, "history"))


def test_main_runs_an_incarnation(tmp_path, monkeypatch):
    from reference_impl.producer import main

    monkeypatch.delenv("DFH_INCARNATION", raising=False)
    monkeypatch.delenv(failpoints.ENV_VAR, raising=False)
    path = _config_file(tmp_path)
    assert main(["--config", path, "--incarnation", "1"]) == 0
    assert main(["--config", path]) == 0
    with open(os.path.join(tmp_path, "history", "producer.jsonl")) as f:
        events = [json.loads(line) for line in f]
    starts = [(e["inc"], {k: e.get(k) for k in ("pid", "resume", "backend")}) for e in events if e["ev"] == "start"]
    assert starts == [(1, {"pid": os.getpid(), "resume": True, "backend": "sqlite"}),
                      (0, {"pid": os.getpid(), "resume": False, "backend": "sqlite"})]
    assert [(e["inc"], e["ev"]) for e in events if e["ev"] != "features"] == (
        [(1, "start"), (1, "recover"), (1, "commit"), (1, "publish"), (1, "commit"), (1, "publish"),
         (1, "close"), (1, "exit"), (0, "start"), (0, "recover"), (0, "exit")])
    assert [(r["ref"]["sample_id"], r["inc"]) for r in _records(tmp_path)] == [(s, 1) for s in ids(0, 1, 2)]


def test_main_fails_cleanly_on_io_errors(tmp_path, capsys, monkeypatch):
    from reference_impl.config import EXIT_FAILED
    from reference_impl.producer import main

    monkeypatch.delenv("DFH_INCARNATION", raising=False)
    monkeypatch.setenv(failpoints.ENV_VAR, json.dumps([{"point": "channel.before_fsync", "action": "eio",
                                                        "times": 9}]))
    path = _config_file(tmp_path)
    try:
        assert main(["--config", path]) == EXIT_FAILED
    finally:
        failpoints.configure(None)
    reason = "channel: [Errno 5] injected EIO at failpoint channel.before_fsync (after 3 attempts)"
    assert capsys.readouterr().err == f"producer: failed cleanly: {reason}\n"
    assert sentinel(str(tmp_path), FAILED) == {"proc": "producer", "reason": reason}
