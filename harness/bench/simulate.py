"""Simulated schedules per CPU-minute: the simulation's default workload on SQLite, a fixed seed.

The figure is the search's own (`harness.simulate.search.search_parallel`):
schedules drawn and run per CPU-minute of the worker processes, Hypothesis
included, lazy imports and the first schedule's warm-up excluded. CPU time is
the comparable figure on a shared machine; schedules per wall-clock minute
with -j workers is printed beside it. The same seed draws the same schedules,
and the reference must pass all of them (a failure is printed).
"""

from __future__ import annotations

from typing import Any, Dict

from .registry import BenchRun, goal, section

SEED = 0


def simulate_worker(examples: int, jobs: int) -> Dict[str, Any]:
    from ..simulate.search import SimSpec, search_parallel

    res = search_parallel(SimSpec(shrink=False), examples, seed=SEED, jobs=jobs)
    return {k: res[k] for k in ("jobs", "examples", "schedules", "search_s", "cpu_s", "schedules_per_min",
                                "schedules_per_cpu_min", "ms_per_schedule_cpu", "faults_fired", "failures",
                                "errors")}


@section("simulate", order=2)
def simulate_section(run: BenchRun) -> None:
    examples = 100 if run.quick else 400
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    # A fresh interpreter, as for every section; not a multiprocessing.Pool, whose
    # daemonic worker could not start the search's own worker processes.
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as ex:
        r = ex.submit(simulate_worker, examples, run.args.jobs).result()
    run.out["simulate"] = r
    run.out["sim_schedules_per_cpu_min"] = r["schedules_per_cpu_min"]
    run.say(f"simulation (default workload, sqlite, seed {SEED}, {r['examples']} examples, -j {r['jobs']}): "
            f"{r['schedules']} schedules, {r['ms_per_schedule_cpu']} ms CPU each = {r['schedules_per_cpu_min']} per "
            f"CPU-minute ({goal('sim_schedules_per_cpu_min', r['schedules_per_cpu_min'])}); "
            f"{r['schedules_per_min']} per wall-clock minute; failures {r['failures']}"
            + (f"; errors {r['errors'][:2]}" if r["errors"] else ""))
