"""Hypothesis drives the simulation: schedules are drawn, run, and a failure is shrunk.

`search(spec, examples, seed)` draws up to `examples` schedules (lists of
engine operations) from a Hypothesis strategy, runs each in a
`engine.Simulation`, and stops at the first failing one, which Hypothesis then
shrinks to a minimal schedule: fewer operations, then simpler ones (a fault
shrinks towards a plain step). Results are memoised by schedule, so the
shrinker never reruns a schedule and the final replay of the minimal example
is exact. Shrinking has a time budget: past it, schedules not yet seen count
as passing, which ends the shrink at the smallest failure found so far.

With `SimSpec.impolite` (`simulate --impolite`) the schedules also draw the
impolite channel: a `duplicate` (the producer writes its last records again at
its next publish) or a `replay` (the consumer's read position moves back) at a
failpoint of the target, which runs on; off, the draws are the same as without
the option.

`search_parallel` runs one search per share on an executor (`harness.executors`:
local workers forked, one CPU each, or Ray tasks) with disjoint seeds and adds
up the rate; on local workers the first failure stops the others.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from ..coverage import merge
from ..faults import fired_kind
from ..faults.simulated import IMPOLITE_TARGET, impolite_points
from ..minimize import hypothesis_shrink_limit
from .engine import PIPELINE, SimResult, Simulation, points_for

#: Default schedule length bound (operations before the drain).
MAX_OPS = 24


@dataclass
class SimSpec:
    """Everything a worker needs to build its Simulation (picklable)."""

    workload: Dict[str, Any] = field(default_factory=dict)
    backend: str = "sqlite"
    variant: Optional[str] = None
    expect: Optional[Sequence[str]] = None  # properties whose violation counts as found (None: any failure)
    outcomes: Sequence[str] = ("completed",)
    targets: Sequence[str] = PIPELINE  # fault targets; add "store_server" (in-memory backend) for server kills
    max_ops: int = MAX_OPS
    workdir_root: Optional[str] = None
    shrink: bool = True
    shrink_budget_s: float = 60.0
    powercuts: bool = False  # add the power-cut rule (the process must run with the tracer preloaded)
    impolite: bool = False  # also draw duplicates (producer) and replays (consumer)


@dataclass
class SearchOutcome:
    schedules: int  # schedules run while searching (not shrinking)
    search_s: float  # wall seconds of the search phase
    cpu_s: float  # CPU seconds of the search phase
    failure: Optional[SimResult] = None
    first_failure: Optional[SimResult] = None  # before shrinking
    time_to_find_s: Optional[float] = None
    cpu_to_find_s: Optional[float] = None
    schedules_to_find: Optional[int] = None
    shrink_runs: int = 0
    shrink_s: float = 0.0
    seed: int = 0
    faults_fired: Dict[str, int] = field(default_factory=dict)  # by kind, over the searched schedules
    coverage: Dict[str, Any] = field(default_factory=dict)  # harness.coverage, summed over the searched schedules

    @property
    def per_min(self) -> float:
        return 60.0 * self.schedules / self.search_s if self.search_s > 0 else 0.0

    def to_dict(self) -> Dict[str, Any]:
        return {
            "schedules": self.schedules, "search_s": round(self.search_s, 3), "cpu_s": round(self.cpu_s, 3),
            "schedules_per_min": round(self.per_min, 1), "seed": self.seed,
            "time_to_find_s": None if self.time_to_find_s is None else round(self.time_to_find_s, 3),
            "cpu_to_find_s": None if self.cpu_to_find_s is None else round(self.cpu_to_find_s, 3),
            "schedules_to_find": self.schedules_to_find, "shrink_runs": self.shrink_runs,
            "shrink_s": round(self.shrink_s, 3), "faults_fired": dict(self.faults_fired),
            "failure": self.failure.summary() if self.failure else None,
            "first_failure_ops": len(self.first_failure.ops) if self.first_failure else None,
        }


def schedule_strategy(backend: str = "sqlite", targets: Sequence[str] = PIPELINE, max_ops: int = MAX_OPS,
                      powercuts: bool = False, impolite: bool = False):
    """Hypothesis strategy for a schedule: a list of engine operations.

    Each operation is drawn as four small integers (kind, target, count,
    point), each shrinking towards 0: a fault shrinks into a plain step of the
    producer, a count towards 1, and the list shrinks by dropping operations.
    Kinds by weight: step 4, kill 2, fail 3, pause 1 (of 10); with `powercuts`,
    also powercut 1 (of 11): mode clean or torn and the torn seed from the
    count; between steps (a third) or while a target is at a failpoint (the
    point draw); it shrinks towards an earlier kind, clean, seed 0, between steps.
    With `impolite`, also duplicate 1 (the producer) and replay 1 (the consumer),
    each at a point drawn from the target's own failpoints; they come last, so
    they shrink towards the other kinds, and without `impolite` the kinds, and so
    the draws of a seed, are what they were before them.
    """
    from hypothesis import strategies as st

    fault_targets = [t for t in PIPELINE if t in targets]
    kill_targets = fault_targets + (["store_server"] if "store_server" in targets and backend == "inmemory" else [])
    points = {t: points_for(t, backend) for t in PIPELINE}
    kinds = ["step"] * 4 + ["kill"] * 2 + ["fail"] * 3 + ["pause"]
    if not fault_targets:
        kinds = ["step"] * 4 + (["kill"] if kill_targets else [])
    if powercuts:
        kinds.append("powercut")
    ipoints = {t: impolite_points(t, backend) for t in PIPELINE}
    if impolite:
        kinds += [k for k, t in IMPOLITE_TARGET.items() if t in fault_targets]
    n_points = max(len(p) for p in points.values())

    def decode(raw):
        k, t, n, pt = raw
        kind = kinds[k % len(kinds)]
        if kind == "step":
            return ("step", PIPELINE[t % 2], 1 + n % 8)
        if kind == "kill":
            return ("kill", kill_targets[t % len(kill_targets)])
        if kind == "powercut":
            cut = ("powercut", ("clean", "torn")[n % 2], n // 2)
            if t // 2 == 0 or not fault_targets:
                return cut
            target = fault_targets[t % len(fault_targets)]
            return cut + (target, points[target][pt % len(points[target])])
        if kind in IMPOLITE_TARGET:
            target = IMPOLITE_TARGET[kind]
            return (kind, target, ipoints[target][pt % len(ipoints[target])])
        target = fault_targets[t % len(fault_targets)]
        if kind == "fail":
            pts = points[target]
            return ("fail", target, pts[pt % len(pts)])
        return ("pause", target, 1 + n)

    op = st.tuples(st.integers(0, len(kinds) - 1), st.integers(0, 5), st.integers(0, 31),
                   st.integers(0, n_points - 1)).map(decode)
    return st.lists(op, max_size=max_ops)


class _Found(Exception):
    pass


def search(spec: SimSpec, examples: int, seed: int = 0, *, stop=None, on_progress=None,
           warmup: bool = True) -> SearchOutcome:
    """Draw up to `examples` schedules; stop at the first failure and shrink it."""
    from hypothesis import HealthCheck, Phase, Verbosity, given, settings
    from hypothesis import seed as hseed

    sim = Simulation(spec.workload, spec.backend, workdir_root=spec.workdir_root, powercuts=spec.powercuts)
    if warmup:
        sim.run([])  # lazy imports and torch's first-call costs, outside the measured time
    # What is alive now (modules, torch, Hypothesis) lives as long as the search: out of the
    # collector's sight, each full collection of a schedule's garbage walks 3-4% less CPU.
    gc.collect()
    gc.freeze()
    memo: Dict[tuple, Optional[SimResult]] = {}
    fired: Dict[str, int] = {}
    cov: List[Dict[str, Any]] = []
    st = {"n": 0, "found_t": None, "first": None, "last": None, "shrink_runs": 0, "t_end": None,
          "cpu_end": None}
    t0 = time.monotonic()
    c0 = time.process_time()

    def fails(r: SimResult) -> bool:
        return r.failed(spec.expect, spec.outcomes)

    @settings(max_examples=max(1, examples), database=None, deadline=None, derandomize=False,
              suppress_health_check=list(HealthCheck), report_multiple_bugs=False, verbosity=Verbosity.quiet,
              phases=[Phase.generate, Phase.shrink] if spec.shrink else [Phase.generate])
    @given(schedule_strategy(spec.backend, spec.targets, spec.max_ops, spec.powercuts, spec.impolite))
    def test(ops):
        key = tuple(ops)
        if key in memo:
            r = memo[key]
        else:
            found = st["found_t"] is not None
            if found and time.monotonic() - st["found_t"] > spec.shrink_budget_s:
                return  # shrink budget spent: unseen schedules count as passing
            if not found and stop is not None and stop.is_set():
                return
            r = sim.run(ops)
            if found:
                st["shrink_runs"] += 1
            else:
                st["n"] += 1
                for f in r.faults:
                    k = fired_kind(f)
                    fired[k] = fired.get(k, 0) + 1
                cov.append(r.coverage)
                if len(cov) >= 64:  # keep memory flat over long searches
                    cov[:] = [merge(cov)]
                if on_progress is not None:
                    on_progress(st["n"])
            r = r if fails(r) else None
            memo[key] = r
            if r is not None and not found:
                st["found_t"] = time.monotonic()
                st["t_end"], st["cpu_end"] = st["found_t"], time.process_time()
                st["first"] = r
                if stop is not None:
                    stop.set()
        if r is not None:
            st["last"] = r
            raise _Found()

    test = hseed(seed)(test)
    with hypothesis_shrink_limit(spec.shrink_budget_s + 1.0):
        try:
            test()
        except _Found:
            pass
        finally:
            gc.unfreeze()
    t_end = st["t_end"] or time.monotonic()
    cpu_end = st["cpu_end"] or time.process_time()
    out = SearchOutcome(schedules=st["n"], search_s=t_end - t0, cpu_s=cpu_end - c0, seed=seed, faults_fired=fired,
                        coverage=merge(cov))
    if st["first"] is not None:
        out.first_failure = st["first"]
        out.failure = st["last"] or st["first"]
        out.time_to_find_s = st["found_t"] - t0
        out.cpu_to_find_s = st["cpu_end"] - c0
        out.schedules_to_find = st["n"]
        out.shrink_runs = st["shrink_runs"]
        out.shrink_s = time.monotonic() - st["found_t"]
    return out


# -- several worker processes --------------------------------------------------

def _search_share(spec: SimSpec, examples: int, seed: int, stop=None) -> SearchOutcome:
    """One share of the search in this process: one torch thread, the variant applied
    for the share's duration."""
    _prepare_process()
    undo = None
    if spec.variant:
        from reference_impl.variant import apply_variant

        undo = apply_variant(spec.variant)
    try:
        return search(spec, examples, seed, stop=stop)
    finally:
        if undo:
            undo()


def _prepare_process() -> None:
    import torch

    torch.set_num_threads(1)


def _share(args) -> SearchOutcome:
    """One share of the search as a Ray task (harness.executors.map_trials)."""
    return _search_share(*args)


def _stoppable_share(stop, args) -> SearchOutcome:
    """One share on a local worker: `stop`, inherited by the fork, is set by the first share that fails."""
    return _search_share(*args, stop)


def search_parallel(spec: SimSpec, examples: int, seed: int = 0, jobs: int = 1, executor: str = "local",
                    address: Optional[str] = None) -> Dict[str, Any]:
    """`jobs` searches in parallel (jobs 1: in this process; `executor="ray"`: one Ray task
    per share, the same shares and seeds, so the same schedules); the combined figures."""
    from harness.executors import split_shares

    t0 = time.monotonic()
    outs: List[SearchOutcome] = []
    errors: List[str] = []
    shares, seeds = map(list, zip(*split_shares(examples, jobs, seed)))
    jobs = len(shares)
    if executor == "local" and jobs == 1:
        outs.append(_search_share(spec, examples, seeds[0]))
    else:
        from harness.executors import TrialLost, map_trials

        fn = _share
        if executor == "local":
            import functools
            import multiprocessing as mp

            # Import the pipeline (torch included) once here: forked workers share it.
            import reference_impl.consumer  # noqa: F401
            import reference_impl.producer  # noqa: F401

            fn = functools.partial(_stoppable_share, mp.get_context("fork").Event())
        items = [(spec, shares[i], seeds[i]) for i in range(jobs)]
        for _, res in map_trials(fn, items, executor, jobs=jobs, address=address):
            if isinstance(res, TrialLost):
                errors.append(f"a share of the search was lost on the {executor} executor: {res.reason}")
            else:
                outs.append(res)
    wall = time.monotonic() - t0
    schedules = sum(o.schedules for o in outs)
    search_wall = max((o.search_s for o in outs), default=0.0)
    cpu = sum(o.cpu_s for o in outs)
    failures = [o for o in outs if o.failure is not None]
    failures.sort(key=lambda o: (o.time_to_find_s or 0.0))
    best = failures[0] if failures else None
    fired: Dict[str, int] = {}
    for o in outs:
        for k, v in o.faults_fired.items():
            fired[k] = fired.get(k, 0) + v
    return {
        "jobs": jobs,
        "examples": examples,
        "seed": seed,
        "schedules": schedules,
        "wall_s": round(wall, 3),
        "search_s": round(search_wall, 3),
        "cpu_s": round(cpu, 3),
        "schedules_per_min": round(60.0 * schedules / search_wall, 1) if search_wall > 0 else 0.0,
        "schedules_per_cpu_min": round(60.0 * schedules / cpu, 1) if cpu > 0 else 0.0,
        "ms_per_schedule_cpu": round(1000.0 * cpu / schedules, 2) if schedules else None,
        "faults_fired": fired,
        "coverage": merge(o.coverage for o in outs),
        "failures": len(failures),
        "failure": best.failure if best else None,
        "outcome": best,
        "workers": [o.to_dict() for o in outs],
        "errors": errors,
    }
