"""Killing-test items aimed at the survivors of `reference_impl.channel` and
`reference_impl.stores.sqlite` (tools/mutation/run.py runs them with
test_kill.py; item 12 is for one gap of `reference_impl.ref_queue`; each runs
in this process, so mutmut selects it for what it calls):

1. the channel writer: it creates the file rw-r--r--; `append` (the
   project's own tests build channels with it) and `append_one` return
   positions, write each record with its incarnation and keep the writer's
   count, ids and size; `count_records` counts them; a writer opened over
   a torn record cuts it off and says how many bytes it cut;
2. an I/O error in the middle of an append (failpoint `channel.mid_append`,
   action `eio`) propagates as OSError with the partial record cut off, and
   the next append writes a whole record;
3. a new channel file survives a power cut: its creation is made durable
   (needs the durability tracer preloaded, as test_kill.py's item 3);
4. a reader counts each undecodable complete line (blank lines are passed
   over) and keeps that count across a rewind;
5. the observer's `skip` counts complete records (none before the channel
   exists, none when nothing new came) and, when the channel is cut below
   what it passed, raises ChannelShrank saying by how much;
6. failing closed through the process loop: the `fail_closed` event with its
   reason and detail, the `channel.failed` sentinel as a whole, the line the
   process says; the peer then stops fail-closed (exit 3) with the reason;
7. `channel.fail_closed` without `say`: its one line goes to stderr, flushed;
8. a producer that starts alone (no consumed sidecar yet) reads consumed 0
   and pauses exactly at the high watermark; the consumer's first reconcile
   reports consumed 0 too;
9. the SQLite ledger's identity: a non-empty id, the same when the file is
   reopened, another for another file;
10. an I/O error inside the SQLite ack transaction (failpoint
    `store.mid_ack_txn`, action `eio`) rolls the transaction back: nothing of
    the ack is recorded and the store serves the next call;
11. a SQLite store whose write lock a peer holds past `lock_wait_s` gives
    up with a TimeoutError that names the store and the wait;
12. (for `reference_impl.ref_queue`) two impolite faults: a producer that
    writes its first batch's records again, and a replay after a step whose
    sample is not acked yet; the replay re-meets that record (a duplicate of
    the incarnation's own unacked sample), then copies of acked samples (skips
    as released): `consumed` must not pass the unacked record before its ack;
13. (for `reference_impl.stores.memory`) a new store's durable marker is the
    same on both backends, value and type: no acks, no step, and the flag
    `False` (a bool: certification tier 2 compares it with `!=`).
"""

from __future__ import annotations

import json
import os
import sys
from types import SimpleNamespace

import pytest

from harness.simulate import Simulation
from reference_impl import failpoints


def _refs(*ids):
    from reference_impl.contracts import SampleRef

    return [SampleRef(sample_id=i, run_id="r", source_task_id=None, feature_store_uri=f"file:///f/{i}",
                      feature_keys={}, feature_specs={}, strategy="s") for i in ids]


class _History:
    """A history writer that keeps what is emitted."""

    def __init__(self):
        self.events = []

    def emit(self, ev, **kw):
        self.events.append((ev, kw))


def _events(sim, ev, proc=None):
    return [e for e in sim.st.log.events if e.get("ev") == ev and (proc is None or e.get("proc") == proc)]


# -- 1, 2: the channel's helpers ------------------------------------------------------------------------------

def test_the_channel_writer_and_its_batch_helpers(tmp_path):
    from reference_impl.channel import CHANNEL, ChannelReader, ChannelWriter, count_records

    d = str(tmp_path)
    umask = os.umask(0o022)
    try:
        w = ChannelWriter(d)
    finally:
        os.umask(umask)
    mode = os.stat(tmp_path / CHANNEL).st_mode & 0o777  # rw-r--r--: data, not a program
    try:
        fresh = w.torn_bytes_repaired
        firsts = (w.append([{"sample_id": "a"}, {"sample_id": "b"}], 3), w.append([{"sample_id": "c"}], 4))
        pos = w.append_one({"sample_id": "d"}, 5)
        state = (w.records, w.ids, w.size)
    finally:
        w.close()
    recs = [(p, r["ref"]["sample_id"], r["inc"]) for p, r in ChannelReader(d).poll()]
    size = os.path.getsize(tmp_path / CHANNEL)
    assert (mode, fresh, firsts, pos) == (0o644, 0, (0, 2), 3)
    assert recs == [(0, "a", 3), (1, "b", 3), (2, "c", 4), (3, "d", 5)]
    assert state == (4, ["a", "b", "c", "d"], size) and count_records(d) == 4
    # a record torn by a crash (no newline): the next writer cuts it off and says how many bytes it cut
    with open(tmp_path / CHANNEL, "ab") as f:
        f.write(b'{"inc": 6, "ref": {"sam')
    w = ChannelWriter(d)
    try:
        torn = (w.torn_bytes_repaired, w.records, w.ids, w.size, os.path.getsize(tmp_path / CHANNEL))
    finally:
        w.close()
    assert torn == (23, 4, ["a", "b", "c", "d"], size, size)


def test_an_io_error_mid_append_cuts_the_partial_record_off(tmp_path):
    # the producer retries an OSError of append_one (_with_io_retry); the file must end on a record boundary
    from reference_impl.channel import CHANNEL, ChannelWriter, channel_ids

    d = str(tmp_path)
    w = ChannelWriter(d)
    try:
        w.append_one({"sample_id": "a"}, 0)
        before = os.path.getsize(tmp_path / CHANNEL)
        failpoints.configure([{"point": "channel.mid_append", "action": "eio"}])
        try:
            with pytest.raises(OSError):
                w.append_one({"sample_id": "b"}, 0)
        finally:
            failpoints.configure(None)
        after_error = (os.path.getsize(tmp_path / CHANNEL), w.records)
        w.append_one({"sample_id": "b"}, 0)
    finally:
        w.close()
    assert after_error == (before, 1) and channel_ids(d) == ["a", "b"]


def test_a_new_channel_survives_a_power_cut(tmp_path):
    # the writer that creates channel.jsonl fsyncs the work dir, so the records an fsync covered are still there
    # after a power cut, whatever else wrote into the work dir (with a Redis store nothing else fsyncs it)
    from harness.powerloss import arm, powercut
    from harness.powerloss.build import ENV_EXCLUDE, ENV_JOURNAL, ENV_ROOT, reconfigure_in_process
    from harness.simulate.powercut import tracer_loaded
    from reference_impl.channel import ChannelWriter, channel_ids

    if not tracer_loaded():  # tools/mutation/run.py preloads it (LD_PRELOAD)
        pytest.skip("power cuts need the durability tracer preloaded")
    d = str(tmp_path / "run")
    os.makedirs(d)
    journal = str(tmp_path / "journal")
    saved = {k: os.environ.get(k) for k in (ENV_ROOT, ENV_JOURNAL, ENV_EXCLUDE)}
    os.environ.update(arm(d, journal))
    try:
        assert reconfigure_in_process()
        w = ChannelWriter(d)
        w.append_one({"sample_id": "a"}, 0)
        w.sync()
        w.close()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        reconfigure_in_process()
    powercut(d, journal)
    assert channel_ids(d) == ["a"]


def test_a_reader_counts_corrupt_lines_and_keeps_the_count_across_a_rewind(tmp_path):
    from reference_impl.channel import CHANNEL, ChannelReader

    good = [json.dumps({"ref": {"sample_id": s}, "inc": 0}) for s in ("a", "b", "c")]
    lines = [good[0], "", "{torn", good[1], "not json", good[2]]
    (tmp_path / CHANNEL).write_text("".join(line + "\n" for line in lines))
    r = ChannelReader(str(tmp_path))
    first = [p for p, _ in r.poll()]
    counted = r.corrupt_lines
    again = [(p, rec["ref"]["sample_id"]) for p, rec in r.rewind_to(1)]
    assert (first, counted) == ([0, 1, 2], 2)
    assert (again, r.corrupt_lines) == ([(1, "b"), (2, "c")], 2)


def test_the_observers_skip_says_how_far_the_channel_shrank(tmp_path):
    # ChannelReader.skip (the engine's observer) counts complete records; a channel cut below what it passed
    # raises ChannelShrank, whose message goes into the run's channel_truncated anomaly
    from reference_impl.channel import CHANNEL, ChannelReader, ChannelShrank

    path = tmp_path / CHANNEL
    r = ChannelReader(str(tmp_path))
    none_yet = r.skip()  # the observer starts before the producer has made the channel
    path.write_bytes(b'{"a": 1}\n{"b": 2}\n')
    counts = [r.skip(), r.skip()]  # the second call: nothing new (size == offset)
    with open(path, "ab") as f:
        f.write(b'{"c"')
    counts += [r.skip(), r.offset, r.position]
    path.write_bytes(b'{"a": 1}\n')
    with pytest.raises(ChannelShrank, match="^channel shrank to 9 bytes below 18 bytes of complete records$"):
        r.skip()
    assert (none_yet, counts) == (0, [2, 0, 0, 18, 2])


# -- 6, 7: failing closed -------------------------------------------------------------------------------------

def test_failing_closed_through_the_process_loop(tmp_path):
    from reference_impl.channel import FAILED, sentinel
    from reference_impl.process_loop import Exit, ExitCode, ProcessLoop

    cfg = SimpleNamespace(workdir=str(tmp_path))
    h, said = _History(), []
    ended = ProcessLoop("consumer", cfg, h, say=said.append).fail_closed("ledger_lost", "a new ledger")
    assert h.events == [("fail_closed", {"reason": "ledger_lost", "detail": "a new ledger"})]
    assert sentinel(str(tmp_path), FAILED) == {"proc": "consumer", "reason": "ledger_lost: a new ledger",
                                               "fail_closed": True}
    assert said == ["consumer: fail closed (ledger_lost): a new ledger"]
    assert ended == Exit(ExitCode.FAIL_CLOSED, "fail_closed", "ledger_lost: a new ledger")
    peer_h = _History()
    peer = ProcessLoop("producer", cfg, peer_h, say=said.append).check_peer()
    assert peer == Exit(ExitCode.FAIL_CLOSED, "peer_failed", "ledger_lost: a new ledger")
    assert peer_h.events == [("exit", {"code": 3, "outcome": "peer_failed", "reason": "ledger_lost: a new ledger"})]


class _Stream:
    """A text stream that records its writes and flushes."""

    def __init__(self):
        self.log = []

    def write(self, s):
        self.log.append(("write", s))
        return len(s)

    def flush(self):
        self.log.append(("flush",))


def test_fail_closed_without_say_writes_one_flushed_line_on_stderr(tmp_path, monkeypatch):
    from reference_impl.channel import fail_closed

    err, out = _Stream(), _Stream()
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setattr(sys, "stdout", out)
    fail_closed(str(tmp_path), _History(), "producer", "store_unavailable", "no server")
    monkeypatch.undo()
    text = "".join(x[1] for x in err.log if x[0] == "write")
    assert (text, out.log) == ("producer: fail closed (store_unavailable): no server\n", [])
    assert err.log[-1] == ("flush",)


# -- 8: the consumed sidecar -------------------------------------------------------------------------------

def test_a_producer_alone_reads_nothing_consumed_and_pauses_at_the_high_watermark():
    # no consumer has written the sidecar yet: consumed is 0, so the producer pauses at published == high
    sim = Simulation(workload={"samples": 12})
    r = sim.run([("step", "producer", 8)])
    pause = [(e.get("published"), e.get("consumed"), e.get("in_flight")) for e in _events(sim, "pause")]
    before = [e.get("consumed_before") for e in _events(sim, "reconcile", "consumer")]
    assert (r.outcome, r.violated) == ("completed", []), r.summary()
    assert (pause[:1], before[:1]) == ([(8, 0, 8)], [0])


# -- 9 to 11: the SQLite store -----------------------------------------------------------------------------------

def test_the_sqlite_ledger_has_an_identity(tmp_path):
    from reference_impl.stores.sqlite import SQLiteMetadataStore

    a = SQLiteMetadataStore(str(tmp_path / "a.db"))
    b = SQLiteMetadataStore(str(tmp_path / "b.db"))
    ids = (a.ledger_id(), b.ledger_id())
    a.close()
    b.close()
    a2 = SQLiteMetadataStore(str(tmp_path / "a.db"))
    again = a2.ledger_id()
    a2.close()
    assert all(isinstance(i, str) and i for i in ids) and ids[0] != ids[1] and again == ids[0]


def test_an_error_inside_the_sqlite_ack_is_rolled_back(tmp_path):
    from reference_impl.stores.sqlite import SQLiteMetadataStore

    s = SQLiteMetadataStore(str(tmp_path / "store.db"), lock_wait_s=1)
    failpoints.configure([{"point": "store.mid_ack_txn", "action": "eio"}])
    try:
        with pytest.raises(OSError):
            s.record_train_ack(["a"], global_step=1, optimizer_durable=True)
    finally:
        failpoints.configure(None)
    try:
        marker = s.durable_marker()
        s.record_train_ack(["b"], global_step=2, optimizer_durable=True)
        after = s.durable_marker()
    finally:
        s.close()
    assert marker == {"acked": set(), "global_step": None, "optimizer_durable": False}
    assert after == {"acked": {"b"}, "global_step": 2, "optimizer_durable": True}



def test_a_sqlite_store_locked_past_its_wait_says_so(tmp_path):
    # a peer holds the write lock longer than lock_wait_s: the call gives up with a TimeoutError that names the
    # store and the wait (what the process prints when it stops)
    import re
    import sqlite3

    from reference_impl.stores.sqlite import SQLiteMetadataStore

    path = str(tmp_path / "store.db")
    s = SQLiteMetadataStore(path, lock_wait_s=0.1)
    s._conn.execute("PRAGMA busy_timeout=0")  # SQLite's own wait off: the store's retry loop does the waiting
    peer = sqlite3.connect(path, isolation_level=None)
    peer.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(TimeoutError, match=f"^SQLite store {re.escape(path)} stayed locked for 0s$"):
            s.commit_samples(_refs("a"))
    finally:
        peer.execute("ROLLBACK")
        peer.close()
    assert s.commit_samples(_refs("a")) == [True]
    s.close()

# -- 12: ref_queue, a replay that re-meets the incarnation's own unacked record, then acked copies --------------

def test_a_replay_over_an_unacked_record_then_acked_copies_keeps_consumed_behind_the_ack():
    # one sample per optimizer step, an ack every third step; the producer writes its first batch's last three
    # records again (s1, s2, s3 at positions 4 to 6); after step 4 (s3 trained, not acked) a replay re-meets
    # records 0 to 3: s3 is a duplicate of the incarnation's own unacked sample, and the copies of s1 and s2
    # that follow it are skipped as released. consumed must stay at 3 until s3's ack (P3 consumed_before_ack)
    from harness.simulate.exhaustive import Planted, PlantedSimulation

    sim = PlantedSimulation({"samples": 12, "train_batch": 1, "accumulation": 1, "checkpoint_every": 3})
    r, _ = sim.run_plan([Planted("producer", 0, "producer.after_commit_before_publish", 1, "duplicate"),
                         Planted("consumer", 0, "consumer.after_train_before_checkpoint", 4, "replay")])
    skips = [(e.get("pos"), e.get("reason")) for e in _events(sim, "skip", "consumer")]
    assert (r.outcome, r.violated, len(r.faults)) == ("completed", [], 2), r.summary()
    assert skips[:7] == [(0, "released"), (1, "released"), (2, "released"), (3, "duplicate"), (4, "released"),
                         (5, "released"), (6, "duplicate")]


def test_a_new_stores_marker_is_the_same_on_both_backends(tmp_path):
    from reference_impl.stores.memory import InMemoryMetadataStore
    from reference_impl.stores.sqlite import SQLiteMetadataStore

    expected = {"acked": set(), "global_step": None, "optimizer_durable": False}
    sq = SQLiteMetadataStore(str(tmp_path / "m.db"))
    try:
        markers = [InMemoryMetadataStore().durable_marker(), sq.durable_marker()]
    finally:
        sq.close()
    for m in markers:
        assert m == expected and m["optimizer_durable"] is False, m
