"""Shrink a failing run: the fewest faults that still give the unexpected verdict.

Delta debugging over the run's schedule (`harness.minimize.ddmin`): remove
halves, then smaller chunks, then single faults; keep a removal when a rerun
with the smaller schedule is still unexpected (a real-process run is not
perfectly repeatable, so a candidate counts as failing if any of `tries`
reruns fails). The result is written as a
scenario file with explicit faults only, which `python -m harness run FILE
--seed N` replays.
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Callable, Dict, List, Optional, Union

from .faults import Fault, Schedule
from .minimize import ddmin
from .run_dir import RunDir, load_run_dir
from .scenario import load_scenario


def _still_fails(sc, seed, faults, reports_dir, tries, say) -> bool:
    from .process_engine.runner import run_scenario

    schedule = Schedule(sc.name, seed, faults)
    for _ in range(tries):
        r = run_scenario(sc, seed, reports_dir=reports_dir, schedule=schedule, quiet=True, render=False)
        shutil.rmtree(r.report_dir, ignore_errors=True)
        if not r.as_expected and not getattr(r, "inconclusive", False):  # a rerun whose faults missed proves nothing
            say(f"  {len(faults)} faults: still unexpected ({', '.join(r.verdict['violated']) or r.outcome})")
            return True
    say(f"  {len(faults)} faults: passes")
    return False


def shrink_report(run: Union[str, RunDir], *, tries: int = 2, out: Optional[str] = None,
                  say: Callable[[str], None] = print) -> Dict[str, Any]:
    """Shrink the run of report dir `run` (its path, or the `RunDir` read from it: result.json,
    scenario.toml and schedule.json validated, exit 2 naming the file and the field)."""
    rd = run if isinstance(run, RunDir) else load_run_dir(run)
    report_dir, schedule, sc, seed = rd.path, rd.schedule, rd.scenario, rd.seed
    scratch = os.path.join(report_dir, "shrink-runs")
    os.makedirs(scratch, exist_ok=True)
    faults: List[Fault] = list(schedule.faults)
    say(f"shrinking {sc.name} seed {seed}: {len(faults)} faults")
    if not _still_fails(sc, seed, faults, scratch, tries, say):
        shutil.rmtree(scratch, ignore_errors=True)
        raise RuntimeError("the run does not fail again with its full schedule; nothing to shrink "
                           f"(tried {tries} times)")
    faults, _ = ddmin(faults, lambda cand: _still_fails(sc, seed, cand, scratch, tries, say))
    shutil.rmtree(scratch, ignore_errors=True)
    shrunk = load_scenario(os.path.join(report_dir, "scenario.toml"))
    shrunk.name = f"{sc.name}-shrunk-{seed}"
    shrunk.description = (f"Shrunk from {report_dir}: {len(faults)} of {len(schedule.faults)} faults "
                          f"still give an unexpected verdict. {sc.description}")
    shrunk.explicit_faults = [f.replace(id=None, origin=None) for f in faults]
    shrunk.random_faults = dict(shrunk.random_faults, count=0)
    out = out or os.path.join(report_dir, f"{shrunk.name}.toml")
    with open(out, "w") as f:
        f.write(shrunk.to_toml())
    say(f"shrunk to {len(faults)} fault(s): {out}\nreplay: python -m harness run {out} --seed {seed}")
    return {"path": out, "faults": [f.to_dict() for f in faults], "original": len(schedule.faults), "seed": seed}
