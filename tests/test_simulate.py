"""The simulation engine: it finds every bug-zoo member with the right property,
finds nothing on the correct reference, and its counterexamples replay in the
process engine.

The zoo tests are parametrized per member so pytest-xdist spreads them; each
searches at most ZOO_EXAMPLES schedules and must find the member's property
within ZOO_BUDGET_S seconds.
"""

from __future__ import annotations

import json
import os

import pytest

from harness.checkers import p3_backpressure as p3
from harness.checkers import p4_exactly_one_fresh as p4
from harness.faults import Failpoint
from harness.faults.simulated import to_scenario
from harness.scenario import load_scenario
from harness.simulate.cli import main as simulate_main
from harness.simulate.engine import (
    DEFAULT_WORKLOAD,
    EventLog,
    Invariants,
    Simulation,
    config_for,
    normalize,
    points_for,
)
from harness.simulate.search import SimSpec, _prepare_process, search
from reference_impl.variant import apply_variant
from tests.pipeline_zoo import ZOO

ZOO_EXAMPLES = 400
ZOO_BUDGET_S = 30.0
REFERENCE_EXAMPLES = 120


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    _prepare_process()


def sim_workload(member) -> dict:
    """The member's workload knobs that shape the protocol (not its process-engine size or pacing)."""
    w = {k: v for k, v in (member.workload or {}).items()
         if k in ("checkpoint_every", "high_watermark", "low_watermark", "publish_batch", "train_batch",
                  "accumulation")}
    full = dict(DEFAULT_WORKLOAD, **w)
    need = full["train_batch"] * full["accumulation"] * full["checkpoint_every"]
    if full["high_watermark"] < need:
        w["high_watermark"], w["low_watermark"] = need, need // 2
    return w


@pytest.fixture
def variant():
    undo = []

    def apply(spec):
        undo.append(apply_variant(spec))

    yield apply
    for u in reversed(undo):
        u()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ZOO))
def test_finds_zoo_member_with_its_property(name, variant):
    member = ZOO[name]
    variant(member.variant)
    spec = SimSpec(workload=sim_workload(member), expect=[member.violates], shrink=True, shrink_budget_s=5.0)
    out = search(spec, ZOO_EXAMPLES, seed=0)
    assert out.failure is not None, f"{name}: no schedule of {out.schedules} violated {member.violates}"
    assert member.violates in out.first_failure.violated
    assert member.violates in out.failure.violated
    # CPU seconds: wall time on a shared machine measures the neighbours too
    assert out.cpu_to_find_s < ZOO_BUDGET_S, f"{name}: found after {out.cpu_to_find_s:.1f} CPU s"
    assert len(out.failure.ops) <= len(out.first_failure.ops)
    # A schedule is a pure function of its ops: rerunning the shrunk one (steps merged) fails the same way.
    again = Simulation(spec.workload).run(normalize(out.failure.ops))
    assert member.violates in again.violated
    assert [f.kind for f in again.faults] == [f.kind for f in out.failure.faults]


@pytest.mark.slow
def test_reference_sqlite_finds_nothing():
    spec = SimSpec()
    out = search(spec, REFERENCE_EXAMPLES, seed=1)
    assert out.failure is None, out.failure.summary()
    assert out.schedules >= REFERENCE_EXAMPLES // 2  # distinct schedules really ran
    # the schedules really crashed things, at failpoints and between steps, and paused them
    assert out.faults_fired.get("failpoint", 0) > 20, out.faults_fired
    assert out.faults_fired.get("kill", 0) > 20, out.faults_fired
    assert out.faults_fired.get("pause", 0) > 5, out.faults_fired


@pytest.mark.slow
def test_reference_inmemory_checkpoint_k4_with_server_kills_finds_nothing():
    spec = SimSpec(workload={"checkpoint_every": 4, "high_watermark": 16, "low_watermark": 8}, backend="inmemory",
                   targets=("producer", "consumer", "store_server"))
    out = search(spec, REFERENCE_EXAMPLES // 2, seed=2)
    assert out.failure is None, out.failure.summary()
    assert out.faults_fired.get("failpoint", 0) > 10, out.faults_fired
    assert "store.mid_ack_txn" not in points_for("consumer", "inmemory")  # runs in the store server


def test_crash_inside_the_ack_transaction_is_rolled_back():
    sim = Simulation()
    r = sim.run([("step", "producer", 5), ("fail", "consumer", "store.mid_ack_txn")])
    assert r.faults == [Failpoint(target="consumer", point="store.mid_ack_txn", action="crash", hit=1, incarnation=0)]
    assert r.outcome == "completed" and r.violations == [], r.summary()
    assert r.properties["P5"]["valid"] is True and r.properties["P2"]["valid"] is True
    # the restarted consumer found no part of the interrupted ack: it re-trained or rolled forward
    assert r.properties["P1"]["counts"]["witness_checked"] is True


def test_kill_maps_to_a_progress_trigger_and_failpoint_to_its_hit():
    sim = Simulation()
    point = "producer.after_commit_before_publish"
    r = sim.run([("fail", "producer", point), ("fail", "producer", point), ("step", "producer", 8),
                 ("step", "consumer", 12), ("kill", "consumer")])
    assert [f.kind for f in r.faults] == ["failpoint", "failpoint", "kill"], r.faults
    # each restart is a new incarnation whose hit count starts again
    assert [(f.incarnation, f.hit) for f in r.faults[:2]] == [(0, 1), (1, 1)]
    kill = r.faults[2]
    assert kill.target == "consumer" and set(kill.to_dict()) == {"kind", "target", "at_consumed"}
    assert 0 < kill.at_consumed < DEFAULT_WORKLOAD["samples"]
    assert r.outcome == "completed" and not r.violations, r.summary()


def test_kill_right_after_a_step_ending_at_a_failpoint_is_that_failpoint(variant):
    """A crash between the checkpoint step and the ack step is the after_checkpoint_before_ack crash."""
    variant(ZOO["no_roll_forward"].variant)
    r = Simulation().run([("step", "producer", 5), ("step", "consumer", 4), ("kill", "consumer")])
    assert r.faults == [Failpoint(target="consumer", point="consumer.after_checkpoint_before_ack", action="crash",
                                  hit=1, incarnation=0)], r.trace
    assert "P1" in r.violated


def test_store_server_kill_loses_the_ledger_and_the_run_fails_closed():
    sim = Simulation(backend="inmemory")
    r = sim.run([("step", "producer", 6), ("step", "consumer", 8), ("kill", "store_server"),
                 ("step", "producer", 4), ("step", "consumer", 4)])
    assert [f.target for f in r.faults] == ["store_server"]
    assert r.outcome == "fail_closed" and not r.failed(), r.summary()
    assert r.properties["P1"]["valid"] is True  # never trained twice
    assert r.properties["P2"]["valid"] is None  # not applicable: the run stopped fail-closed
    assert r.properties["P4"]["counts"]["ledger_epochs"] == 2


def test_same_schedule_same_history():
    ops = [("step", "producer", 6), ("kill", "producer"), ("pause", "consumer", 10),
           ("fail", "consumer", "consumer.after_checkpoint_before_ack"), ("step", "consumer", 3)]

    def trace(res_sim):
        return [{k: v for k, v in e.items() if k not in ("t",)} for e in res_sim.st.log.events]

    a, b = Simulation(), Simulation()
    ra, rb = a.run(ops), b.run(ops)
    assert ra.summary() == rb.summary()
    assert trace(a) == trace(b)


def test_invariants_see_a_torn_marker_and_a_second_fresh(tmp_path):
    class Marker:
        acked = set()

        def durable_marker(self):
            return {"acked": set(self.acked), "global_step": 1, "optimizer_durable": True}

    cfg = config_for(str(tmp_path), {}, "sqlite")
    store = Marker()
    inv = Invariants(cfg, store)
    log = EventLog(inv.on_event)
    c = log.writer("consumer", 0)
    p = log.writer("producer", 0)
    p.emit("commit", ids=["a", "b"], fresh=[True, True])
    c.emit("checkpoint", step=1, unacked=["a", "b"])
    store.acked = {"a"}  # half of the interrupted ack transaction
    inv.after_step(len(log.events))
    assert [(v.prop, v.kind) for v in inv.violations] == [("P5", "torn_ack")]
    # What the history alone shows is judged once, at the end, by the checkers (not again here).
    p.emit("commit", ids=["b"], fresh=[True])
    p.emit("publish", ids=["c"], first_pos=20, published=21, consumed=0, in_flight_before=20)
    assert [(v.prop, v.kind) for v in inv.violations] == [("P5", "torn_ack")]
    final = {"durable_store": True, "watermarks": {"high": cfg.high_watermark, "low": cfg.low_watermark,
                                                   "publish_batch": cfg.publish_batch}}
    assert any(a.kind == "fresh_twice" for a in p4.check(log.events, final).anomalies)
    assert any(a.kind == "published_over_watermark" for a in p3.check(log.events, final).anomalies)


def test_counterexample_as_scenario_round_trips(tmp_path, variant):
    member = ZOO["no_roll_forward"]
    variant(member.variant)
    r = Simulation().run([("step", "producer", 5), ("fail", "consumer", "consumer.after_checkpoint_before_ack")])
    assert "P1" in r.violated
    sc = to_scenario(r, name="sim-test", workload={}, backend="sqlite", variant=member.variant, expect=["P1"])
    path = tmp_path / "sim-test.toml"
    path.write_text(sc.to_toml())
    back = load_scenario(str(path))
    assert back.explicit_faults == r.faults
    assert back.topology["variant"] == member.variant and back.expect["violates"] == ["P1"]
    assert back.workload["samples"] == DEFAULT_WORKLOAD["samples"]


def test_cli_prints_rate_and_writes_json(tmp_path, capsys):
    out = tmp_path / "sim.json"
    assert simulate_main(["--examples", "6", "--jobs", "1", "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    assert d["failures"] == 0 and d["schedules_per_min"] > 0 and d["schedules"] >= 1
    assert "schedules/min" in capsys.readouterr().out


def test_cli_bad_input_exits_2(capsys):
    assert simulate_main(["no-such-scenario"]) == 2
    assert simulate_main(["--backend", "bogus"]) == 2
    assert simulate_main(["--expect-violation", "P9"]) == 2
    assert simulate_main(["--examples", "0"]) == 2
    assert simulate_main(["--variant", "nosuchmod:x"]) == 2
    assert "module 'nosuchmod' not found" in capsys.readouterr().err


def test_cli_scenario_gives_workload_backend_and_expectation(tmp_path):
    # private-layout: known bad (P1/P2), private in-memory store per process
    out = tmp_path / "private.toml"
    rc = simulate_main(["private-layout", "--examples", "150", "--jobs", "1", "--samples", "16",
                        "--shrink-budget", "3", "--out", str(out), "--quiet"])
    assert rc == 0
    sc = load_scenario(str(out))
    assert sc.backend == "private" and set(sc.expect["violates"]) == {"P1", "P2"}


@pytest.mark.slow
def test_cli_counterexample_replays_in_the_process_engine(tmp_path):
    """publish_only_fresh: found, shrunk to one failpoint crash, written, replayed with real processes."""
    from harness.process_engine.runner import run_scenario

    out = tmp_path / "pof.toml"
    rc = simulate_main(["--variant", "tests.pipeline_zoo:publish_only_fresh", "--expect-violation", "P2",
                        "--examples", "300", "--jobs", "1", "--shrink-budget", "10", "--out", str(out), "--quiet"])
    assert rc == 0
    sc = load_scenario(str(out))
    assert [f.kind for f in sc.explicit_faults] == ["failpoint"]
    assert sc.explicit_faults[0].point == "producer.after_commit_before_publish"
    r = run_scenario(sc, 0, reports_dir=str(tmp_path / "reports"), render=False)
    assert r.as_expected and "P2" in r.verdict["violated"], r.verdict
    assert os.path.isdir(r.report_dir)
