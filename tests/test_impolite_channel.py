"""The impolite channel: `duplicate` (records written again) and `replay` (the read position
moved back) in the process engine and in the simulation's search (`simulate --impolite`).
The reference keeps P1 and P2; without its dedup (`tests.pipeline_zoo:consumer_without_dedup`)
a sample is trained twice. The exhaustive enumerator's side is in tests/test_exhaustive.py."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hseed

from harness.faults import FaultError, fault_from_dict
from harness.faults.simulated import IMPOLITE_RECORDS, check_ops, impolite_points, to_scenario
from harness.process_engine.runner import run_scenario
from harness.scenario import load_scenario
from harness.simulate.cli import main as simulate_main
from harness.simulate.engine import Simulation, normalize, points_for
from harness.simulate.search import SimSpec, _prepare_process, schedule_strategy, search
from reference_impl.variant import apply_variant
from tests.pipeline_zoo import CHANNEL_SCENARIOS, CHANNEL_ZOO

#: Two optimizer steps per checkpoint: a trained window waits unacked while the next one fills,
#: so a second copy of one of its samples is trained, not just found without features.
WORKLOAD = {"checkpoint_every": 2}
DEDUP = "tests.pipeline_zoo:consumer_without_dedup"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    _prepare_process()


def test_fault_kinds_validate():
    d = fault_from_dict({"kind": "duplicate", "target": "producer", "point": "producer.after_commit_before_publish",
                         "hit": 2, "records": 3}, "t")
    assert d.rule() == {"point": "producer.after_commit_before_publish", "action": "duplicate", "hit": 2, "times": 1,
                        "records": 3}
    assert not d.ends()
    with pytest.raises(FaultError, match="'target'"):
        fault_from_dict({"kind": "replay", "target": "producer", "point": "consumer.after_read_before_train"}, "t")
    with pytest.raises(FaultError, match="'point'"):
        fault_from_dict({"kind": "replay", "target": "consumer", "point": "channel.mid_append"}, "t")
    with pytest.raises(FaultError, match="'records'"):
        fault_from_dict({"kind": "replay", "target": "consumer", "point": "consumer.after_read_before_train",
                         "records": 0}, "t")


@pytest.mark.parametrize("name", CHANNEL_SCENARIOS)
def test_the_reference_survives_an_impolite_channel(name, tmp_path):
    r = run_scenario(name, 0, reports_dir=str(tmp_path), render=False)
    assert r.as_expected and r.outcome == "completed", r.verdict
    assert r.faults["landed"] == r.faults["planned"] == 3
    kind = name.split("-", 1)[1]
    assert sum(r.coverage["faults"][kind].values()) == 3
    assert r.coverage["sometimes"]["duplicate_rejected"] > 0


@pytest.mark.parametrize("name", CHANNEL_SCENARIOS)
@pytest.mark.parametrize("member", sorted(CHANNEL_ZOO))
def test_an_impolite_channel_catches_a_consumer_without_dedup(member, name, tmp_path):
    sc = load_scenario(name)
    sc.topology["variant"] = f"tests.pipeline_zoo:{member}"
    sc.expect["violates"] = [CHANNEL_ZOO[member]]
    r = run_scenario(sc, 0, reports_dir=str(tmp_path), render=False)
    assert CHANNEL_ZOO[member] in r.verdict["violated"], (r.outcome, r.verdict)


# -- the simulation's search ------------------------------------------------------------------

def _drawn(impolite: bool, n: int = 200, seed: int = 0, **kw) -> list:
    """The first `n` schedules the search's strategy draws with this seed."""
    out = []

    @settings(max_examples=n, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(schedule_strategy(impolite=impolite, **kw))
    def draw(ops):
        out.append(ops)

    hseed(seed)(draw)()
    return out


def _search_with(variant, spec, examples, seed=0):
    undo = apply_variant(variant) if variant else None
    try:
        return search(spec, examples, seed)
    finally:
        if undo:
            undo()


def test_the_search_draws_duplicates_and_replays_only_with_impolite():
    for kw in ({}, {"powercuts": True}):
        polite = _drawn(False, **kw)
        assert polite == _drawn(False, **kw)  # a seed draws the same schedules
        assert {o[0] for ops in polite for o in ops} <= {"step", "kill", "fail", "pause", "powercut"}
    ops = [o for s in _drawn(True) for o in s if o[0] in IMPOLITE_RECORDS]
    assert {o[0] for o in ops} == {"duplicate", "replay"}
    for kind, target, point in ops:
        assert target == ("producer" if kind == "duplicate" else "consumer")
        assert point in impolite_points(target)
    assert {o[2] for o in ops} == set(impolite_points("producer")) | set(impolite_points("consumer"))
    # the points of the target's role: a Replay fault names no store point (harness.faults.kinds.Impolite)
    assert impolite_points("producer") == points_for("producer")
    assert "store.mid_ack_txn" in points_for("consumer") and "store.mid_ack_txn" not in impolite_points("consumer")
    assert check_ops(ops[:4]) == ops[:4]
    for bad in (("duplicate", "consumer", "consumer.after_read_before_train"),
                ("replay", "consumer", "store.mid_ack_txn"), ("replay", "consumer")):
        with pytest.raises(ValueError):
            check_ops([bad])


def test_search_with_impolite_on_the_reference_finds_nothing():
    out = search(SimSpec(workload=WORKLOAD, impolite=True), 80, seed=0)
    assert out.failure is None, out.failure.summary()
    assert out.faults_fired.get("duplicate", 0) > 5 and out.faults_fired.get("replay", 0) > 5, out.faults_fired
    assert out.faults_fired.get("failpoint", 0) > 20, out.faults_fired  # the crashes are still drawn
    assert out.coverage["faults"].get("duplicate") and out.coverage["faults"].get("replay"), out.coverage["faults"]
    assert out.coverage["sometimes"]["duplicate_rejected"] > 0


def test_a_polite_search_misses_consumer_without_dedup():
    out = _search_with(DEDUP, SimSpec(workload=WORKLOAD, expect=["P1"], shrink=False), 60)
    assert out.failure is None, out.failure.summary()


@pytest.mark.parametrize("targets,kind", [(("producer",), "duplicate"), (("consumer",), "replay")])
def test_search_finds_consumer_without_dedup_and_the_process_engine_replays_it(targets, kind, tmp_path):
    spec = SimSpec(workload=WORKLOAD, targets=targets, impolite=True, expect=["P1"], shrink_budget_s=10.0)
    out = _search_with(DEDUP, spec, 300)
    assert out.failure is not None, f"no schedule of {out.schedules} violated P1"
    assert out.schedules_to_find <= 100, out.schedules_to_find
    res = out.failure
    assert "P1" in res.violated and kind in {f.kind for f in res.faults}, res.summary()
    undo = apply_variant(DEDUP)
    try:  # a schedule is a pure function of its ops
        again = Simulation(spec.workload).run(normalize(res.ops))
    finally:
        undo()
    assert "P1" in again.violated and again.faults == res.faults
    sc = to_scenario(res, name=f"sim-dedup-{kind}", workload=spec.workload, backend="sqlite", variant=DEDUP,
                     expect=["P1"])
    assert {f.kind for f in sc.explicit_faults} == {f.kind for f in res.faults}
    r = run_scenario(sc, 0, reports_dir=str(tmp_path), render=False)
    assert r.as_expected and "P1" in r.verdict["violated"], r.verdict
    assert r.faults["landed"] == r.faults["planned"], r.faults


@pytest.mark.parametrize("args", [["--impolite"], ["channel-replay", "--samples", "24"]])
def test_cli_search_with_impolite(args, tmp_path):
    """--impolite, or a scenario with duplicate or replay faults, turns the impolite channel on."""
    out = tmp_path / "sim.json"
    rc = simulate_main([*args, "--examples", "40", "--jobs", "1", "--json", str(out), "--quiet"])
    data = json.loads(out.read_text())
    assert rc == 0, data.get("coverage_gaps")
    assert data["faults_fired"].get("duplicate") and data["faults_fired"].get("replay"), data["faults_fired"]
