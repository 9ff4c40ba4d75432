"""The CI lane: fixed (scenario, seed) pairs through the same code path as
`python -m harness run`, so pytest provides JUnit XML and -n auto.

Every run asserts its expected verdict; failpoint runs also assert that the
fault really fired (a fault that never fires proves nothing).
"""

import json
import os

import pytest

from harness.faults import make_schedule, owner
from harness.faults.points import is_rank_point
from harness.history import load_merged
from harness.process_engine.runner import run_scenario
from harness.scenario import load_scenario, scenario_from_dict
from reference_impl.failpoints import POINTS
from tests.pipeline_zoo import ZOO, scenario_for

CI_PAIRS = [
    ("baseline", 0),
    ("kill-random", 1),
    ("kill-random", 2),
    ("failpoints-consumer", 3),
    ("kill-before-first-checkpoint", 4),
    ("crash-loop", 5),
    ("checkpoint-k4", 6),
    ("inmemory-kill-random", 7),
    ("inmemory-server-killed", 8),
    ("pause-in-store-txn", 9),
    ("io-errors-channel", 10),
    ("private-layout", 11),
]


def _events(result):
    return load_merged(os.path.join(result.report_dir, "history.jsonl"))


@pytest.mark.slow
@pytest.mark.parametrize("scenario,seed", CI_PAIRS, ids=[f"{s}-{n}" for s, n in CI_PAIRS])
def test_scenario_gets_its_expected_verdict(scenario, seed, tmp_path):
    r = run_scenario(scenario, seed, reports_dir=str(tmp_path))
    assert r.as_expected, f"{scenario} seed {seed}: {r.verdict['reasons']} (report {r.report_dir})"
    with open(os.path.join(r.report_dir, "result.json")) as f:
        result = json.load(f)
    assert result["replay_command"].startswith("python -m harness replay ")
    for name in ("report.md", "report.html", "timeline.png", "schedule.json", "history.jsonl", "scenario.toml"):
        assert os.path.exists(os.path.join(r.report_dir, name)), name
    sc = load_scenario(scenario)
    if sc.expect["violates"]:
        assert set(r.verdict["violated"]) & set(sc.expect["violates"])
    elif "fail_closed" in sc.expect["outcome"]:
        assert r.outcome == "fail_closed"
        assert r.properties["P1"]["valid"] is not False  # never duplicate training
    else:
        assert r.valid


SINGLE_RANK_POINTS = sorted(p for p in POINTS if not is_rank_point(p))  # rank points need a DP group


@pytest.mark.slow
@pytest.mark.parametrize("point", SINGLE_RANK_POINTS)
def test_crash_at_every_failpoint_is_recovered(point, tmp_path):
    target = owner(point)
    sc = scenario_from_dict({
        "name": f"fp-{point.replace('.', '-')}",
        "workload": {"samples": 96},
        "faults": {"explicit": [{"kind": "failpoint", "target": target, "point": point, "action": "crash",
                                 "hit": 3}]},
    })
    r = run_scenario(sc, 0, reports_dir=str(tmp_path))
    fired = [e for e in _events(r) if e.get("ev") == "failpoint" and e.get("point") == point]
    assert fired, f"failpoint {point} never fired"
    restarts = [e for e in _events(r) if e.get("ev") == "spawn" and e["target"] == target and e["target_inc"] == 1]
    assert restarts, f"{target} was not restarted after the crash at {point}"
    assert r.as_expected and r.outcome == "completed", r.verdict["reasons"]
    with open(os.path.join(r.report_dir, "result.json")) as f:
        assert json.load(f)["witness_summary"] == {"1": 96}  # every sample trained exactly once


@pytest.mark.parametrize("name", sorted(ZOO))
def test_process_engine_catches_bug_zoo_member(name, tmp_path):
    member = ZOO[name]
    r = run_scenario(scenario_for(member), 1, reports_dir=str(tmp_path), render=False)
    assert member.violates in r.verdict["violated"], (
        f"{name}: expected {member.violates}, violated {r.verdict['violated']}, outcome {r.outcome}")


def test_same_seed_same_schedule():
    sc = load_scenario("failpoints-all")
    assert make_schedule(sc, 42) == make_schedule(sc, 42)
    assert make_schedule(sc, 42) != make_schedule(sc, 43)
