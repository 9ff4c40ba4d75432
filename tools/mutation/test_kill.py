"""The killing test of the mutation score (tools/mutation/run.py): a mutant of the
protocol core is killed when the simulation or a short crash campaign sees it.

1. every schedule of one fault on the simulation's small workload (a crash or
   a pause at each failpoint hit of each process), under the deterministic
   drain: any violation, error or wrong outcome kills the mutant;
2. the fault-free schedule with a low watermark of 0 (a producer must
   resume at in_flight <= low, not below it);
3. the same as 1 with the impolite channel (a duplicate or a replay at each hit),
   two optimizer steps per checkpoint;
4. a short crash campaign in the process engine (two scenarios, one seed each)
   for what only real processes show.

Ordered cheapest first; the runner stops a mutant at its first failing test.
"""

from __future__ import annotations

import pytest

from harness.simulate.exhaustive import explore


def _first_failure(**kw):
    r = explore(stop_at_first=True, **kw)
    return r["failures"][:1]


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
