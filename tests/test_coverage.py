"""Coverage (harness.coverage): failpoints reached and fired, faults by protocol phase,
sometimes-conditions, their sum over runs, and the gate that makes a campaign inconclusive."""

from __future__ import annotations

import json

import pytest

from harness.campaign.summary import exit_code, summarize, summary_table
from harness.coverage import coverage_of, gaps, merge, scenario_points
from harness.coverage.phases import fault_phases
from harness.coverage.sometimes import sometimes_counts
from harness.scenario import ScenarioError, load_scenario, scenario_from_dict
from reference_impl import failpoints
from reference_impl.history import HistoryWriter


def ev(proc, inc, name, **kw):
    return dict(proc=proc, inc=inc, ev=name, **kw)


def sup(name, **kw):
    return dict(proc="supervisor", inc=0, ev=name, **kw)


def test_history_writer_carries_reached_counts(tmp_path):
    failpoints.configure(None)
    failpoints.take_reached()
    h = HistoryWriter(str(tmp_path / "h.jsonl"), "consumer", 0)
    h.emit("start")
    failpoints.hit("consumer.after_read_before_train")
    failpoints.hit("consumer.after_read_before_train")
    failpoints.hit("channel.before_fsync")
    h.emit("train", step=1, ids=["a"])
    h.emit("checkpoint", step=1, unacked=["a"])
    h.close()
    events = [json.loads(x) for x in (tmp_path / "h.jsonl").read_text().splitlines()]
    assert "reached" not in events[0] and "reached" not in events[2]
    assert events[1]["reached"] == {"consumer.after_read_before_train": 2, "channel.before_fsync": 1}
    cov = coverage_of(events)
    assert cov["failpoints"]["consumer.after_read_before_train"] == {"reached": 2, "fired": 0}
    assert cov["failpoints"]["store.mid_ack_txn"] == {"reached": 0, "fired": 0}


def test_fault_phases_follow_the_protocol():
    events = [
        ev("producer", 0, "features", ids=["a"]), ev("producer", 0, "commit", ids=["a"], fresh=[True]),
        sup("kill", target="producer", target_inc=0, signal=9, fault=0),
        ev("consumer", 0, "reconcile", requeued=[], released=[]), ev("consumer", 0, "read", pos=0, id="a"),
        ev("consumer", 0, "train", step=1, ids=["a"]),
        ev("consumer", 0, "failpoint", point="consumer.after_train_before_checkpoint", action="crash"),
        # a new incarnation that has not reconciled yet: a kill hits its reconcile
        sup("kill", target="consumer", target_inc=1, signal=9, fault=1),
        ev("consumer", 2, "failpoint", point="store.mid_ack_txn", action="crash"),
        ev("consumer", 3, "reconcile", requeued=["a"], released=[]), ev("consumer", 3, "read", pos=0, id="a"),
        ev("consumer", 3, "train", step=1, ids=["a"]), ev("consumer", 3, "checkpoint", step=1, unacked=["a"]),
        sup("pause", target="consumer", target_inc=3, fault=2),
        ev("consumer", 3, "ack", step=1, ids=["a"], durable=True),
        sup("kill", target="store_server", target_inc=0, signal=9, fault=3),
        ev("consumer", 3, "failpoint", point="channel.before_fsync", action="eio"),
        sup("kill", target="consumer", target_inc=3, signal=15, fault=4),
    ]
    got = [(k, p) for k, p, _ in fault_phases(events)]
    assert got == [("kill", "committed_not_published"), ("failpoint_crash", "trained_not_checkpointed"),
                   ("kill", "during_reconcile"), ("failpoint_crash", "during_reconcile"),
                   ("pause", "checkpointed_not_acked"), ("store_server_kill", "acked_not_released"),
                   ("io_error", "committed_not_published"), ("sigterm", "acked_not_released")]


def test_a_power_cut_counts_once_per_process_it_killed():
    events = [ev("producer", 0, "commit", ids=["a"], fresh=[True]),
              ev("consumer", 0, "reconcile", requeued=[], released=[]), ev("consumer", 0, "train", step=1, ids=["b"]),
              sup("powercut", fault=0, cause="timed", killed=["producer#0", "consumer#0", "store_server#0"],
                  unsynced_writes_dropped=3)]
    cov = coverage_of(events)
    assert cov["faults"] == {"powercut": {"committed_not_published": 1, "trained_not_checkpointed": 1}}
    assert cov["sometimes"]["unsynced_write_dropped"] == 1
    # the simulation's power cut lists each process it killed as a kill with the cut's fault index
    sim = [sup("powercut", fault=0, targets=["consumer"]), sup("kill", target="consumer", target_inc=0, fault=0)]
    assert coverage_of(sim, {"powerloss": [{"unsynced_writes_dropped": 0}]})["faults"] == {
        "powercut": {"during_reconcile": 1}}
    assert coverage_of(sim, {"powerloss": [{"unsynced_writes_dropped": 2}]})["sometimes"]["unsynced_write_dropped"] == 1


def test_sometimes_conditions():
    events = [
        ev("producer", 0, "pause", published=8, consumed=0, in_flight=8, high=8),
        ev("producer", 1, "commit", ids=["a", "b"], fresh=[False, True]),
        ev("consumer", 0, "reconcile", requeued=["a", "b"], released=[], rolled_forward=[], marker_step=None,
           checkpoint_step=None),
        ev("consumer", 0, "read", pos=0, id="a"), ev("consumer", 0, "read", pos=1, id="b"),
        ev("consumer", 0, "skip", pos=2, id="b", reason="duplicate"),
        ev("consumer", 1, "reconcile", requeued=["b"], released=["a"], rolled_forward=["a"], marker_step=0,
           checkpoint_step=1),
        ev("consumer", 1, "skip", pos=0, id="a", reason="released"),  # a re-read, not a duplicate
        ev("consumer", 1, "read", pos=1, id="b"),
        ev("consumer", 1, "skip", pos=0, id="a", reason="released"),  # met again in this incarnation: a duplicate
        ev("consumer", 2, "fail_closed", reason="checkpoint_behind_ledger"),
    ]
    c = sometimes_counts(events, {})
    assert c == {"redelivery_after_crash": 3, "requeue_of_unacked": 1, "producer_blocked_at_high_watermark": 1,
                 "restart_from_checkpoint_ahead_of_ledger": 1, "restart_from_checkpoint_behind_ledger": 1,
                 "unsynced_write_dropped": 0, "duplicate_rejected": 2, "commit_not_fresh": 1}
    assert sometimes_counts([e for e in events if e["proc"] == "producer"], {})["redelivery_after_crash"] == 0


def test_merge_adds_up_and_gaps_name_what_is_missing():
    a = coverage_of([ev("consumer", 0, "read", pos=0, id="a", reached={"consumer.after_read_before_train": 2}),
                     ev("consumer", 0, "failpoint", point="consumer.after_read_before_train", action="crash")])
    b = coverage_of([ev("producer", 0, "pause"), ev("consumer", 0, "done", reached={"store.mid_ack_txn": 1})])
    m = merge([a, None, b])
    assert m["runs"] == 2
    assert m["failpoints"]["consumer.after_read_before_train"] == {"reached": 2, "fired": 1}
    assert m["faults"] == {"failpoint_crash": {"published_not_trained": 1}}
    assert m["sometimes"]["producer_blocked_at_high_watermark"] == 1
    g = gaps(m, ["producer_blocked_at_high_watermark", "requeue_of_unacked"],
             ["store.mid_ack_txn", "channel.mid_append"])
    assert len(g) == 2 and "requeue_of_unacked" in g[0] and "channel.mid_append" in g[1]
    assert gaps(m, ["producer_blocked_at_high_watermark"], ["store.mid_ack_txn"]) == []


def test_scenario_points_and_the_expect_sometimes_key():
    sc = load_scenario("failpoints-all")
    pts = scenario_points(sc)
    assert "store.mid_ack_txn" in pts and not any(p.startswith("rank") for p in pts)
    assert "store.mid_ack_txn" not in scenario_points(sc.with_backend("inmemory"))
    assert "requeue_of_unacked" in sc.expect["sometimes"]
    with pytest.raises(ScenarioError, match="expect.sometimes"):
        scenario_from_dict({"name": "x", "expect": {"sometimes": ["never_heard_of"]}})


def _row(scenario, seed, cov):
    return {"scenario": scenario, "seed": seed, "status": "as_expected", "as_expected": True, "outcome": "completed",
            "violated": [], "wall_s": 1.0, "faults": {"planned": 1, "landed": 1}, "coverage": cov}


def test_campaign_summary_sums_coverage_and_gates_it():
    seen = coverage_of([ev("producer", 0, "pause", reached={"channel.mid_append": 3})])
    rows = [_row("s", 0, seen), _row("s", 1, coverage_of([]))]
    plain = summarize(rows)
    assert plain["coverage"]["runs"] == 2 and exit_code(plain) == 0
    assert "| `channel.mid_append` | 3 | 0 |" in summary_table(plain)
    ok = summarize(rows, {"s": (["producer_blocked_at_high_watermark"], ["channel.mid_append"])})
    assert exit_code(ok) == 0 and ok["coverage_inconclusive"] == []
    bad = summarize(rows, {"s": (["requeue_of_unacked"], ["channel.mid_append"])})
    assert exit_code(bad) == 3 and bad["coverage_inconclusive"] == ["s"]
    assert "INCONCLUSIVE s: sometimes-condition requeue_of_unacked never occurred" in summary_table(bad)


def test_a_simulated_schedule_reports_its_coverage():
    from harness.simulate.engine import Simulation

    res = Simulation().run([("step", "producer", 12), ("fail", "consumer", "consumer.after_checkpoint_before_ack")])
    cov = res.coverage
    assert cov["failpoints"]["consumer.after_checkpoint_before_ack"]["fired"] == 1
    assert cov["failpoints"]["channel.mid_append"]["reached"] >= 24
    assert cov["faults"] == {"failpoint_crash": {"checkpointed_not_acked": 1}}
    assert cov["sometimes"]["restart_from_checkpoint_ahead_of_ledger"] == 1
