"""The killing test of the mutation score (tools/mutation/run.py): a mutant of the
protocol core is killed when the simulation or a short crash campaign sees it.

1. every schedule of one fault on the simulation's small workload (a crash at
   each failpoint of each process, a kill between steps, a pause, and the
   impolite channel's duplicate and replay), on SQLite and on the in-memory
   store (with its server killed), each run to completion: any violation,
   error or wrong outcome kills the mutant;
2. a short crash campaign in the process engine (two scenarios, one seed
   each), for what only real processes show.
"""

from __future__ import annotations

import pytest

from harness.simulate.exhaustive import enumerate_schedules
from harness.simulate.engine import Simulation


def _failures(backend: str, max_faults: int, **kw) -> list:
    sim = Simulation(backend=backend)
    bad = []
    for ops in enumerate_schedules(sim, max_faults, **kw):
        r = sim.run(ops)
        if r.failed():
            bad.append((ops, r.outcome, r.violated, (r.error or "").strip().splitlines()[-1:]))
            break
    return bad


@pytest.mark.parametrize("backend", ["sqlite", "inmemory"])
def test_every_one_fault_schedule_passes(backend):
    assert _failures(backend, 1, impolite=True, store_kills=backend == "inmemory") == []


@pytest.mark.parametrize("scenario,seed", [("failpoints-consumer", 3), ("kill-random", 1)])
def test_short_crash_campaign(scenario, seed, tmp_path):
    from harness.process_engine.runner import run_scenario

    r = run_scenario(scenario, seed, reports_dir=str(tmp_path), render=False)
    assert r.as_expected, (r.outcome, r.verdict)
