import os

import pytest

from harness.process_engine.runner import run_scenario
from harness.scenario import load_scenario, scenario_from_dict
from harness.shrink import shrink_report


@pytest.mark.slow
def test_shrink_keeps_only_the_fault_that_matters(tmp_path):
    # A buggy variant run as if it were correct: the run is unexpected (P1),
    # but only the crash between checkpoint and ack exposes the bug.
    sc = scenario_from_dict({
        "name": "shrink-me",
        "topology": {"variant": "tests.pipeline_zoo:no_roll_forward"},
        "workload": {"samples": 96},
        "faults": {"explicit": [
            {"kind": "kill", "target": "producer", "at_published": 24},
            {"kind": "failpoint", "target": "consumer", "point": "consumer.after_checkpoint_before_ack",
             "action": "crash", "hit": 3},
            {"kind": "pause", "target": "producer", "at_published": 56, "duration_s": 0.2},
        ]},
    })
    r = run_scenario(sc, 0, reports_dir=str(tmp_path), render=False)
    assert not r.as_expected and "P1" in r.verdict["violated"]
    # `replay` reproduces the failing run: same schedule, unexpected again (exit 1).
    from harness.cli import main

    assert main(["replay", r.report_dir, "--reports", str(tmp_path / "replays")]) == 1
    out = shrink_report(r.report_dir, tries=1, say=lambda m: None)
    assert len(out["faults"]) == 1
    assert out["faults"][0]["point"] == "consumer.after_checkpoint_before_ack"
    shrunk = load_scenario(out["path"])
    assert [f.point for f in shrunk.explicit_faults] == ["consumer.after_checkpoint_before_ack"]
    assert shrunk.topology["variant"] == "tests.pipeline_zoo:no_roll_forward"
    again = run_scenario(shrunk, out["seed"], reports_dir=str(tmp_path), render=False)
    assert "P1" in again.verdict["violated"]
    assert not os.path.exists(os.path.join(r.report_dir, "shrink-runs"))


def test_ddmin_finds_a_one_minimal_sublist_and_its_answer():
    from harness.minimize import ddmin

    calls = []

    def test(cand):
        calls.append(len(cand))
        return f"fails with {len(cand)}" if {3, 7} <= set(cand) else None

    assert ddmin(list(range(10)), test) == ([3, 7], "fails with 2")
    assert ddmin([1, 2], lambda c: None) == ([1, 2], None)  # nothing removable: the input, no answer
    assert ddmin(list(range(10)), test, deadline=0.0) == (list(range(10)), None)  # out of time at once
