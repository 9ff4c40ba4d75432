"""The killing test of the mutation score (tools/mutation/run.py): a mutant of the
protocol core is killed when the simulation or a short crash campaign sees it.

1. a lost ledger (three fixed schedules): the in-memory store server killed
   while the consumer is down, once before its first ack and once after acks,
   and a ledger that forgets (the no-op store); the restarted consumer must
   fail closed with the reason `ledger_lost`, which nothing else compares;
2. two planted replays (the impolite channel's `replay`): one asked for
   while a restarted consumer releases leftover blobs, before it read
   anything, and one while records it has not read yet are in the channel (one optimizer step per
   checkpoint, which the impolite schedules of 6 do not run);
3. a checkpoint behind the ledger: the power-loss zoo's
   `roll_forward_to_a_checkpoint_not_durable` in the simulation, its first
   checkpoint made visible but not durable, rolled forward, then taken away
   by a power cut; the consumer must fail closed as
   `checkpoint_behind_ledger`. It needs the durability tracer preloaded
   (tools/mutation/run.py sets LD_PRELOAD) and is skipped without it;
4. every schedule of one fault on the simulation's small workload (a crash or
   a pause at each failpoint hit of each process), under the deterministic
   drain: any violation, error or wrong outcome kills the mutant;
5. the fault-free schedule with a low watermark of 0 (a producer must
   resume at in_flight <= low, not below it);
6. the same as 4 with the impolite channel (a duplicate or a replay at each hit),
   two optimizer steps per checkpoint;
7. a short crash campaign in the process engine (two scenarios, one seed each)
   for what only real processes show. mutmut runs a test only for the mutants
   of functions it saw that test call in its own process, so this item sees
   no mutant that runs only in the pipeline's child processes;
8. what the consumer's and the producer's history says, on fixed schedules:
   the fault-free one reaches every single-process failpoint and checkpoints
   at the cadence; a planted duplicate writes its copies and records them; a
   restart after a checkpoint rolls it forward and decides every record once;
   the pre-O1.1 layout restarted; and the two process mains run in this
   process, so that mutmut selects a test for them.

Ordered cheapest first; the runner stops a mutant at its first failing test.

The channel and the stores have their own items after these, each a few
seconds at most and all in this process: a fault-free simulation on each
backend reaches every failpoint of the pipeline by its registered name (the
process engine arms failpoints by name); the engine's observer counts as many
published records as the producer published; certification tier 1 (the store
against the pure contract model) on the in-memory and the SQLite store; a
commit retried with the same token (the store server's retry) is answered
fresh again, once; a SQLite store waits for a peer that holds the write lock
and raises any other error at once; a SQLite store serves another thread than
its opener; the peer of a process that failed closed stops with its reason;
a closed channel writer releases its file.
"""

from __future__ import annotations

import os

import pytest

from harness.simulate import Simulation
from harness.simulate.exhaustive import Planted, PlantedSimulation, explore
from reference_impl import failpoints

CKPT_BEFORE_ACK = "consumer.after_checkpoint_before_ack"
LEDGER_LOST = {
    # the checkpoint saw no ack yet (acked_step 0): only the ledger identity tells
    "server-killed-before-first-ack": ("inmemory", [("fail", "consumer", CKPT_BEFORE_ACK), ("kill", "store_server")]),
    "server-killed-after-acks": ("inmemory", [("step", "producer", 8), ("step", "consumer", 8), ("kill", "consumer"),
                                              ("kill", "store_server")]),
    # no ledger identity: the checkpoint of step 2 saw step 1 acked, the marker has no step
    "ledger-forgets": ("noop", [("fail", "consumer", CKPT_BEFORE_ACK), ("fail", "consumer", CKPT_BEFORE_ACK)]),
}


def _first_failure(**kw):
    r = explore(stop_at_first=True, **kw)
    return r["failures"][:1]


@pytest.mark.parametrize("name", list(LEDGER_LOST))
def test_a_lost_ledger_fails_closed_as_ledger_lost(name):
    backend, ops = LEDGER_LOST[name]
    sim = Simulation(backend=backend)
    r = sim.run(ops)
    closed = [(e.get("proc"), e.get("reason")) for e in sim.st.log.events if e.get("ev") == "fail_closed"]
    assert (r.outcome, r.violated, closed) == ("fail_closed", [], [("consumer", "ledger_lost")]), r.summary()


ACK_BEFORE_RELEASE = "consumer.after_ack_before_release"
REPLAYS = {
    "before-the-first-read": [Planted("consumer", 0, ACK_BEFORE_RELEASE, 1),
                              Planted("consumer", 1, ACK_BEFORE_RELEASE, 1, "replay")],
    "with-unread-records": [Planted("consumer", 0, "consumer.after_read_before_train", 2, "replay")],
}


@pytest.mark.parametrize("name", list(REPLAYS))
def test_a_planted_replay_passes(name):
    r, _ = PlantedSimulation().run_plan(REPLAYS[name])
    assert not r.failed() and r.faults[-1].kind == "replay", r.summary()


def test_a_checkpoint_behind_the_ledger_fails_closed():
    from harness.simulate.powercut import tracer_loaded
    from reference_impl.variant import apply_variant

    if not tracer_loaded():  # tools/mutation/run.py preloads it (LD_PRELOAD)
        pytest.skip("power cuts in the simulation need the durability tracer preloaded")
    undo = apply_variant("tests.pipeline_zoo:roll_forward_to_a_checkpoint_not_durable")
    try:
        sim = Simulation(powercuts=True)
        r = sim.run([("fail", "consumer", "consumer.mid_checkpoint_replace"), ("step", "consumer", 3),
                     ("powercut", "clean", 0)])
    finally:
        undo()
    closed = [(e.get("proc"), e.get("reason")) for e in sim.st.log.events if e.get("ev") == "fail_closed"]
    assert (r.outcome, r.violated, closed) == ("fail_closed", [], [("consumer", "checkpoint_behind_ledger")]), \
        r.summary()


def test_every_one_fault_schedule_passes():
    assert _first_failure(max_faults=1) == []


def test_no_fault_with_a_low_watermark_of_zero_completes():
    # a producer that resumes only below the low watermark never resumes when it is 0 (a hang)
    assert _first_failure(workload={"low_watermark": 0}, max_faults=0) == []


def test_every_one_fault_impolite_schedule_passes():
    assert _first_failure(workload={"checkpoint_every": 2}, max_faults=1, impolite=True) == []


@pytest.mark.parametrize("scenario,seed", [("failpoints-consumer", 3), ("kill-random", 1)])
def test_short_crash_campaign(scenario, seed, tmp_path):
    from harness.process_engine.runner import run_scenario

    r = run_scenario(scenario, seed, reports_dir=str(tmp_path), render=False)
    assert r.as_expected, (r.outcome, r.verdict)



# -- consumer and producer: what their history says, cheap fixed schedules --------------------------------

SINGLE_PROCESS_POINTS = sorted(p for p in failpoints.POINTS if not p.startswith("rank"))


def _events(sim, ev, inc=None):
    return [e for e in sim.st.log.events if e.get("ev") == ev and (inc is None or e.get("inc") == inc)]


def test_the_fault_free_schedule_reaches_every_failpoint_and_keeps_the_cadence():
    # every failpoint of the single-process pipeline is reached (a renamed one is a point no schedule
    # can fault); a checkpoint every `checkpoint_every` steps, each ack at its checkpoint's step; the
    # producer's close names the channel's records
    sim = Simulation(workload={"checkpoint_every": 2})
    r = sim.run([])
    reached = set()
    for e in sim.st.log.events:
        reached |= set(e.get("reached") or ())
    checkpoints = [e.get("step") for e in _events(sim, "checkpoint")]
    acks = [e.get("step") for e in _events(sim, "ack")]
    closes = [e.get("published") for e in _events(sim, "close")]
    assert (r.outcome, r.violated) == ("completed", []), r.summary()
    assert sorted(reached) == SINGLE_PROCESS_POINTS
    assert (checkpoints, acks, closes) == ([2, 4, 6], [2, 4, 6], [len(_events(sim, "read"))])


def test_a_planted_duplicate_writes_copies_and_records_them():
    # the duplicate fault appends copies of the last records; each publish event, the copies' too,
    # names the records it wrote from `first_pos` on and the channel's count after them
    sim = PlantedSimulation()
    r, _ = sim.run_plan([Planted("producer", 0, "producer.after_commit_before_publish", 1, "duplicate")])
    pubs = _events(sim, "publish")
    copies = [e.get("ids") for e in pubs if e.get("duplicate")]
    counts = [(e.get("first_pos", 0) + len(e.get("ids") or ()), e.get("published")) for e in pubs]
    assert (r.outcome, r.violated) == ("completed", []), r.summary()
    assert copies == [["s000001", "s000002", "s000003"]]
    assert all(a == b for a, b in counts) and counts[-1][1] == _events(sim, "close")[0].get("published") == 27


def test_a_restart_after_a_checkpoint_rolls_forward_and_decides_every_record():
    # a crash between checkpoint and ack: the restart acks the checkpoint's unacked ids at its step
    # (roll_forward), then decides every record of the channel once, in order, by position
    sim = Simulation()
    r = sim.run([("fail", "consumer", CKPT_BEFORE_ACK)])
    ckpt = _events(sim, "checkpoint", 0)[-1]
    rolled = [(e.get("step"), e.get("ids")) for e in _events(sim, "ack", 1) if e.get("roll_forward")]
    decided = [e.get("pos") for e in sim.st.log.events if e.get("inc") == 1 and e.get("ev") in ("read", "skip")]
    assert (r.outcome, r.violated) == ("completed", []), r.summary()
    assert rolled == [(ckpt.get("step"), ckpt.get("unacked"))]
    assert decided == list(range(24))


def test_the_pre_o11_layout_restarted_after_an_ack():
    # the private stores of the pre-O1.1 layout (no reconcile): a restart after an ack, recorded as
    # layout "private" (P2 does not ask it for a requeued list it cannot have)
    sim = Simulation(backend="private")
    r = sim.run([("step", "producer", 8), ("step", "consumer", 8), ("kill", "consumer")])
    recs = [(e.get("layout"), e.get("checkpoint_step")) for e in _events(sim, "reconcile")]
    assert (r.outcome, r.violated) == ("completed", []), r.summary()
    assert recs == [("private", None), ("private", 1)]


def test_the_process_mains_run_in_process(tmp_path):
    # the producer's and the consumer's `main`, one after the other in this process (the producer
    # never waits: the high watermark is above the samples), each writing its own history
    import json

    from harness.simulate.engine import config_for
    from reference_impl import consumer, producer

    cfg = config_for(str(tmp_path), {"samples": 8, "high_watermark": 16, "low_watermark": 4}, "sqlite")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg.to_dict()))
    codes = (producer.main(["--config", str(path)]), consumer.main(["--config", str(path)]))
    assert codes == (0, 0)
    assert sorted(p.name for p in (tmp_path / "history").iterdir()) == ["consumer.jsonl", "producer.jsonl"]


# -- channel and the stores ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["sqlite", "inmemory"])
def test_every_failpoint_of_the_pipeline_is_reached_by_its_name(backend):
    # the process engine arms failpoints by name (DFH_FAILPOINTS); one that is hit under another name never fires
    from reference_impl.failpoints import POINTS

    r = Simulation(backend=backend).run([])
    reached = {p for p, c in r.coverage["failpoints"].items() if c["reached"]}
    assert reached == {p for p in POINTS if not p.startswith("rank")}, r.summary()


def test_the_observers_published_count_is_the_channels():
    # the engine's observer counts complete channel records incrementally (ChannelReader.skip); P3's
    # consumed <= published check and the process-engine triggers read that count
    sim = Simulation()
    r = sim.run([])
    published = [i for e in sim.st.log.events if e.get("ev") == "publish" for i in e["ids"]]
    assert (r.outcome, sim.st.inv.published) == ("completed", len(published)), r.summary()


@pytest.mark.parametrize("store", ["memory", "sqlite"])
def test_the_store_contract_holds(store, tmp_path):
    # certification tier 1 in this process (the certifier runs it in a child): the store against the pure model;
    # a budget named "quick" leaves out the tensor probe, which starts a child process
    from harness.certify import resolve_target
    from harness.certify.certificate import PASSED, Budget
    from harness.certify.common import Context
    from harness.certify.records import using
    from harness.certify.tier1_contract import run_in_this_process
    from reference_impl.stores.memory import InMemoryMetadataStore
    from reference_impl.stores.sqlite import SQLiteMetadataStore

    factory, profile = {"memory": (InMemoryMetadataStore, "volatile"),
                        "sqlite": (SQLiteMetadataStore, "durable")}[store]
    budget = Budget("quick", t1_examples=15, t1_steps=15, t2_scale=0.5, t3_crashes=1, t4_seeds=1, t1_shrink_s=1)
    target = resolve_target(factory)
    with using(target.records):
        r = run_in_this_process(Context(target=target, profile=profile, budget=budget, seed=1, workroot=str(tmp_path)))
    assert r.status == PASSED, [c.message for c in r.counterexamples]


def _refs(*ids):
    from reference_impl.contracts import SampleRef

    return [SampleRef(sample_id=i, run_id="r", source_task_id=None, feature_store_uri=f"file:///f/{i}",
                      feature_keys={}, feature_specs={}, strategy="s") for i in ids]


def test_a_retried_commit_is_fresh_again_once():
    # the store server's retry of one call whose reply was lost (same token) gets the first answer again
    from reference_impl.stores.memory import InMemoryMetadataStore

    s = InMemoryMetadataStore()
    assert s.commit_samples_once("t1", _refs("a", "b")) == [True, True]
    assert s.commit_samples_once("t1", _refs("a", "a", "c")) == [True, False, True]
    assert s.commit_samples_once("t2", _refs("a", "c", "d")) == [False, False, True]
    assert s.commit_samples(_refs("b", "e")) == [False, True]
    assert s.all_committed_ids() == ["a", "b", "c", "d", "e"]


def test_a_locked_sqlite_store_is_waited_for_and_another_error_is_not(tmp_path):
    # a peer holding the write lock (one paused inside a transaction) delays a call; it does not fail it
    import sqlite3
    import threading

    from reference_impl.stores.sqlite import SQLiteMetadataStore

    path = str(tmp_path / "store.db")
    s = SQLiteMetadataStore(path, lock_wait_s=30)
    s._conn.execute("PRAGMA busy_timeout=0")  # SQLite's own wait off: the store's retry loop does the waiting
    peer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    peer.execute("BEGIN IMMEDIATE")
    t = threading.Timer(0.1, peer.execute, ["ROLLBACK"])
    t.start()
    try:
        assert s.commit_samples(_refs("a")) == [True]
    finally:
        t.join()
    s2 = SQLiteMetadataStore(path, lock_wait_s=1)
    peer.execute("DROP TABLE samples")  # an error that waiting does not cure propagates at once
    peer.close()
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        s2.committed_count()
    s.close()
    s2.close()


def test_the_sqlite_store_serves_other_threads(tmp_path):
    import threading

    from reference_impl.stores.sqlite import SQLiteMetadataStore

    s = SQLiteMetadataStore(str(tmp_path / "store.db"))
    got = []
    t = threading.Thread(target=lambda: got.append(s.commit_samples(_refs("a"))))
    t.start()
    t.join()
    assert (got, s.committed_count()) == ([[True]], 1)
    s.close()


def test_the_peer_of_a_fail_closed_process_stops_with_its_reason():
    # the `channel.failed` sentinel carries the reason to the peer's exit and to the run's final state
    backend, ops = LEDGER_LOST["ledger-forgets"]
    sim = Simulation(backend=backend)
    sim.run(ops)
    exits = [(e.get("outcome"), (e.get("reason") or "").split(":")[0]) for e in sim.st.log.events
             if e.get("ev") == "exit" and e.get("proc") == "producer"]
    assert exits == [("peer_failed", "ledger_lost")]


def test_a_closed_channel_writer_releases_its_file(tmp_path):
    # the producer closes its channel writer on its way out (ProcessLoop.run's finally)
    from reference_impl.channel import ChannelWriter

    before = len(os.listdir("/proc/self/fd"))
    w = ChannelWriter(str(tmp_path))
    w.append_one({"sample_id": "a"}, 0)
    w.close()
    w.close()
    assert len(os.listdir("/proc/self/fd")) == before
