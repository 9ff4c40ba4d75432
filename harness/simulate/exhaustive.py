"""Exhaustive small schedules: every schedule of up to N faults on a small workload.

Most crash bugs need very few faults (CrashMonkey/B3 enumerate every workload
of up to three operations). Here the unit is a fault at a failpoint hit: with
the simulation's deterministic scheduler (the drain: producer and consumer
step in turn, a crashed process restarts on its next turn), a run is fixed by
the faults it plants, and a fault is fixed by where it lands: the `hit`-th
time incarnation `incarnation` of `target` reaches `point`.

`enumerate_schedules` walks the tree depth first: the fault-free run's hits
are the places of a first fault; the run with a first fault shows the hits
after it, the places of a second; and so on up to `max_faults`. So every
schedule of up to N faults is run exactly once, and a schedule's children are
only places the run really reaches. A fault is a crash (the process dies at
the point: `FailpointCrash`, what SIGKILL leaves) or a pause (at the first
hit of each step: the process is frozen from its next turn on, while the
other side steps, until that side idles or ends: a slow or stopped process
that lets its peer run ahead); with `impolite`, also a
`duplicate` at each producer hit (its last records written again at its next
publish) and a `replay` at each consumer hit (its read position moved back).

With power cuts (`PlantedSimulation(..., powercuts=True)`, the durability
tracer preloaded: `harness.simulate.powercut`), also a `powercut` at each hit
of a sync boundary (`SYNC_BOUNDARIES`): the failpoints that sit right after a
durable step (a commit, an fsync, a rename whose directory fsync comes next)
and the channel's right before its fsync. A cut tests what the step just
promised, or, before the channel's fsync, that nothing relies on the records
not yet synced. A cut keeps only what is durable, and that changes only at a
durable step; a cut at another point (a read, a train step, half a record)
keeps what a cut at a neighbouring boundary keeps, and its process dies where
a crash schedule already kills it. So cutting at boundaries only keeps the
count near one per step (on the default workload 48 cuts, as many as pauses,
against 132 crashes) and loses no durable state a cut can leave.
At `TORN_BOUNDARIES`, where a correct pipeline has writes not yet fsynced, a
`powercut-torn` too (seed `TORN_SEED`: nothing is drawn); elsewhere a torn cut
would rebuild what a clean one does. The process dies at the point (as its
crash there), and at the end of its call the power fails as the engine's
`("powercut", mode, seed, target, point)` does (`PowerCuts.cut`): the other
process is killed, the work dir rebuilt, everything restarts in the drain.
As a process-engine fault the cut is a `Failpoint` with action `powercut`
(its mode the scenario's `faults.powercut_mode`).

A schedule is a tuple of `Planted` faults; `PlantedSimulation.run_plan(plan)`
runs one (the plan, then the drain) and returns its result and the hits it
saw after its last fault. `explore` runs the whole tree in `jobs` forked
workers (the first faults dealt round-robin), stopping at the first failure
when asked to. A forked worker inherits the loaded tracer; each schedule arms
it on its own work dir (`PowerCuts.start`) and switches it off at its end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from reference_impl import failpoints
from reference_impl.failpoints import FailpointCrash

from ..coverage import merge
from ..faults import Failpoint, Fault
from ..faults.simulated import impolite_fault
from .engine import SimResult, Simulation

#: The sync boundaries: the failpoints right after a durable step (a commit, an fsync, a
#: rename) and the channel's, right before its fsync. A power cut is planted at each of their hits.
SYNC_BOUNDARIES: Dict[str, str] = {
    "producer.after_features_before_commit": "blobs fsynced and renamed, their directory fsynced",
    "producer.after_commit_before_publish": "the batch committed",
    "channel.before_fsync": "records appended, their fsync next",
    "consumer.mid_checkpoint_replace": "the checkpoint renamed, its directory's fsync next",
    "consumer.after_checkpoint_before_ack": "the checkpoint durable",
    "consumer.after_ack_before_consumed": "the ack committed",
    "consumer.mid_consumed_replace": "the consumed sidecar renamed, its directory's fsync next",
    "consumer.after_ack_before_release": "the consumed sidecar durable",
}
#: Where a torn cut is planted too: the boundary with writes not yet fsynced (elsewhere a
#: correct pipeline has none pending, and a torn cut leaves what a clean one does).
TORN_BOUNDARIES = ("channel.before_fsync",)
#: Planted actions that cut the power, and the mode of each.
POWERCUT_ACTIONS = {"powercut": "clean", "powercut-torn": "torn"}
#: The seed of a torn cut's torn tails (fixed: the enumeration draws nothing).
TORN_SEED = 0


@dataclass(frozen=True)
class Planted:
    """A fault at the `hit`-th time incarnation `incarnation` of `target` reaches `point`."""

    target: str
    incarnation: int
    point: str
    hit: int
    action: str = "crash"  # crash | pause | duplicate | replay | powercut | powercut-torn

    def describe(self) -> str:
        return f"{self.action} {self.target}#{self.incarnation} at {self.point} hit {self.hit}"

    def fault(self) -> Fault:
        """The process-engine fault that replays it."""
        where = {"target": self.target, "point": self.point, "hit": self.hit, "incarnation": self.incarnation}
        if self.action in ("duplicate", "replay"):
            return impolite_fault(self.action, **where)
        if self.action in POWERCUT_ACTIONS:  # the mode is the scenario's `faults.powercut_mode`
            return Failpoint(action="powercut", **where)
        return Failpoint(action=self.action, **where)


Hit = Tuple[str, int, str, int, int]  # target, incarnation, point, hit, the engine's step count


class PlantedSimulation(Simulation):
    """The simulation engine with faults planted at failpoint hits, run under the drain."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._plan: Sequence[Planted] = ()
        self._next = 0
        self.hits_after: List[Hit] = []  # the hits after the plan's last fault
        self._frozen: Dict[str, int] = {}  # paused process -> turns it may still be held
        self._idle: Dict[str, bool] = {}  # process -> its last step was idle
        self._cut: Optional[Tuple[Planted, Failpoint]] = None  # a power cut due at the end of this step

    def run_plan(self, plan: Sequence[Planted]) -> Tuple[SimResult, List[Hit]]:
        self._plan, self._next, self.hits_after = tuple(plan), 0, []
        self._frozen, self._idle, self._cut = {}, {}, None
        if self.pc is None and any(f.action in POWERCUT_ACTIONS for f in self._plan):
            raise ValueError("a planted power cut needs PlantedSimulation(..., powercuts=True)")
        res = self.run([])
        if self._next < len(self._plan):  # a planted fault never reached: not a schedule of this run
            res.error = res.error or f"planted fault not reached: {self._plan[self._next].describe()}"
        return res, self.hits_after

    def _hit(self, name: str) -> None:
        p = self.st.current
        if p is None:
            return super()._hit(name)
        n = p.counts.get(name, 0) + 1
        if self._next < len(self._plan):
            f = self._plan[self._next]
            if (f.target, f.incarnation, f.point, f.hit) == (p.name, p.inc, name, n):
                self._next += 1
                if f.action == "crash":
                    self.st.armed = (p.name, name, "crash")
                    try:
                        return super()._hit(name)
                    finally:  # the drain, unlike a `fail` operation, does not collect the fault
                        if self.st.fired is not None:
                            self.st.faults.append(self.st.fired)
                            self.st.trace.append(f.describe())
                            self.st.fired = None
                elif f.action == "pause":
                    self._pause(p, f)
                elif f.action in POWERCUT_ACTIONS:
                    self._power_fails(p, f, name)
                else:
                    self._impolite(p, f)
            return super()._hit(name)
        self.hits_after.append((p.name, p.inc, name, n, self.st.steps))
        return super()._hit(name)

    def _pause(self, p, f: Planted) -> None:
        from .engine import ARM_STEPS

        self._frozen[p.name] = ARM_STEPS
        self.st.sup.emit("pause", target=p.name, target_inc=p.inc, fault=len(self.st.faults))
        self.st.faults.append(f.fault())
        self.st.trace.append(f.describe())

    def _power_fails(self, p, f: Planted, name: str) -> None:
        """The power fails while `p` is at this hit: `p` dies here (as a crash there), and the cut
        itself, which kills the rest and rebuilds the work dir, comes as soon as `p`'s call is over."""
        super()._hit(name)  # counted as any hit
        if p.h is not None:
            p.h.emit("failpoint", point=name, action="powercut")
        self._cut = (f, f.fault())
        raise FailpointCrash(name)

    def _step(self, p) -> str:
        r = self._held_or_step(p)
        if self._cut is not None:
            f, at = self._cut
            self._cut = None
            self.pc.cut(self, POWERCUT_ACTIONS[f.action], TORN_SEED, at,
                        cause=f"failpoint in {f.target}#{f.incarnation}")
            self._frozen.clear()  # every process is down now: a pause ends with its process
        return r

    def _held_or_step(self, p) -> str:
        if p.name in self._frozen:
            other = self.st.procs["consumer" if p.name == "producer" else "producer"]
            self._frozen[p.name] -= 1
            if self._frozen[p.name] > 0 and not other.terminal and not self._idle.get(other.name):
                return "idle"
            del self._frozen[p.name]
            self.st.sup.emit("cont", target=p.name, target_inc=p.inc, fault=len(self.st.faults) - 1)
        r = super()._step(p)
        self._idle[p.name] = r == "idle"
        return r

    def _impolite(self, p, f: Planted) -> None:
        records = f.fault().records
        if failpoints.act(f.action, records):
            p.h.emit("failpoint", point=f.point, action=f.action)
            self.st.faults.append(f.fault())
            self.st.trace.append(f"{f.describe()} ({records} records)")


def places(hits: Sequence[Hit], impolite: bool = False, powercuts: bool = False) -> List[Planted]:
    """The faults that can be planted at these hits."""
    out = []
    step = None
    for target, inc, point, hit, at in hits:
        out.append(Planted(target, inc, point, hit))
        if (target, at) != step:  # a pause lands at a step's end: one per step is enough
            out.append(Planted(target, inc, point, hit, "pause"))
        step = (target, at)
        if impolite:
            out.append(Planted(target, inc, point, hit, "duplicate" if target == "producer" else "replay"))
        if powercuts and point in SYNC_BOUNDARIES:
            out.append(Planted(target, inc, point, hit, "powercut"))
            if point in TORN_BOUNDARIES:
                out.append(Planted(target, inc, point, hit, "powercut-torn"))
    return out


def enumerate_schedules(sim: PlantedSimulation, max_faults: int, impolite: bool = False,
                        first: Optional[Sequence[int]] = None) -> Iterator[Tuple[Tuple[Planted, ...], SimResult]]:
    """Every schedule of up to `max_faults` planted faults, depth first, each with its result.

    `first`: only the subtrees of these indexes among the first faults (a worker's share;
    the fault-free schedule belongs to the share that holds index 0). Power cuts are
    planted when `sim` was made with `powercuts=True`."""
    powercuts = sim.pc is not None
    root, hits = sim.run_plan(())
    if first is None or 0 in first:
        yield (), root
    if max_faults < 1:
        return
    stack: List[Tuple[Tuple[Planted, ...], List[Planted]]] = []
    tops = places(hits, impolite, powercuts)
    chosen = [f for i, f in enumerate(tops) if first is None or i in first]
    stack.append(((), chosen))
    while stack:
        prefix, todo = stack.pop()
        if not todo:
            continue
        f = todo.pop(0)
        stack.append((prefix, todo))
        plan = prefix + (f,)
        res, after = sim.run_plan(plan)
        yield plan, res
        if len(plan) < max_faults:
            stack.append((plan, places(after, impolite, powercuts)))


def explore(workload: Optional[Dict[str, Any]] = None, backend: str = "sqlite", max_faults: int = 1, *,
            impolite: bool = False, powercuts: bool = False, jobs: int = 1, expect: Optional[Sequence[str]] = None,
            stop_at_first: bool = False, variant: Optional[str] = None) -> Dict[str, Any]:
    """Run every schedule of up to `max_faults` faults; the figures, the coverage and the failures.

    `powercuts`: also a power cut at each sync-boundary hit; this process must have the durability
    tracer preloaded (`powercut.run_preloaded`), which forked workers inherit."""
    t0 = time.monotonic()
    if jobs <= 1:
        outs = [_explore_share(workload, backend, max_faults, impolite, powercuts, None, expect, stop_at_first,
                               variant)]
    else:
        outs = _explore_parallel(workload, backend, max_faults, impolite, powercuts, jobs, expect, stop_at_first,
                                 variant)
    failures = [f for o in outs for f in o["failures"]]
    return {"schedules": sum(o["schedules"] for o in outs), "wall_s": round(time.monotonic() - t0, 3),
            "cpu_s": round(sum(o["cpu_s"] for o in outs), 3), "max_faults": max_faults, "jobs": max(1, jobs),
            "by_faults": _add(o["by_faults"] for o in outs),
            "by_kind": _add((o.get("by_kind") or {} for o in outs), str),
            "coverage": merge(o["coverage"] for o in outs),
            "failures": failures, "errors": [e for o in outs for e in o.get("errors", [])]}


def _add(dicts, key=int) -> Dict[Any, int]:
    out: Dict[Any, int] = {}
    for d in dicts:
        for k, v in d.items():
            out[key(k)] = out.get(key(k), 0) + v
    return out


def kind_of(plan: Sequence[Planted]) -> str:
    """A schedule's kind: its faults' actions, each once, in a fixed order ("none" without one)."""
    return "+".join(sorted({f.action for f in plan})) or "none"


def _explore_share(workload, backend, max_faults, impolite, powercuts, first, expect, stop_at_first, variant,
                   stop=None) -> Dict[str, Any]:
    from .search import _prepare_process

    _prepare_process()
    undo = None
    if variant:
        from reference_impl.variant import apply_variant

        undo = apply_variant(variant)
    c0 = time.process_time()
    n, by_faults, by_kind, covs, failures = 0, {}, {}, [], []
    try:
        sim = PlantedSimulation(workload, backend, powercuts=powercuts)
        for plan, res in enumerate_schedules(sim, max_faults, impolite, first):
            n += 1
            by_faults[len(plan)] = by_faults.get(len(plan), 0) + 1
            by_kind[kind_of(plan)] = by_kind.get(kind_of(plan), 0) + 1
            covs.append(res.coverage)
            if len(covs) >= 64:
                covs[:] = [merge(covs)]
            if res.failed(expect):
                failures.append({"plan": [f.describe() for f in plan],
                                 "faults": [f.fault().to_dict() for f in plan], "powercut_mode": _mode(plan),
                                 "outcome": res.outcome, "violated": res.violated,
                                 "violations": [v.to_dict() for v in res.violations[:5]], "error": res.error})
                if stop_at_first:
                    if stop is not None:
                        stop.set()
                    break
            if stop is not None and stop.is_set():
                break
    finally:
        if undo:
            undo()
    return {"schedules": n, "cpu_s": time.process_time() - c0, "by_faults": by_faults, "by_kind": by_kind,
            "coverage": merge(covs), "failures": failures}


def _mode(plan: Sequence[Planted]) -> Optional[str]:
    """The process-engine scenario's `faults.powercut_mode` for a plan's cuts (None without one)."""
    modes = {POWERCUT_ACTIONS[f.action] for f in plan if f.action in POWERCUT_ACTIONS}
    return None if not modes else "torn" if "torn" in modes else "clean"


def _explore_parallel(workload, backend, max_faults, impolite, powercuts, jobs, expect, stop_at_first, variant):
    import multiprocessing as mp

    import reference_impl.consumer  # noqa: F401  (imported once, shared by the forked workers)
    import reference_impl.producer  # noqa: F401

    # How many first faults there are: one probe run (cheap) in this process.
    probe = _count_first(workload, backend, impolite, powercuts, variant)
    ctx = mp.get_context("fork")
    stop, queue = ctx.Event(), ctx.Queue()
    shares = [list(range(j, max(probe, 1), jobs)) for j in range(jobs)]
    procs = [ctx.Process(target=_worker, daemon=True,
                         args=(queue, stop, workload, backend, max_faults, impolite, powercuts, s, expect,
                               stop_at_first, variant)) for s in shares if s]
    for p in procs:
        p.start()
    outs, pending = [], len(procs)
    while pending:
        try:
            kind, payload = queue.get(timeout=5.0)
        except Exception:
            if not any(p.is_alive() for p in procs):
                outs.append({"schedules": 0, "cpu_s": 0.0, "by_faults": {}, "coverage": None, "failures": [],
                             "errors": ["a worker died without reporting"]})
                break
            continue
        pending -= 1
        outs.append(payload if kind == "ok" else {"schedules": 0, "cpu_s": 0.0, "by_faults": {}, "coverage": None,
                                                    "failures": [], "errors": [payload]})
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():
            p.kill()
    return outs


def _count_first(workload, backend, impolite, powercuts, variant) -> int:
    undo = None
    if variant:
        from reference_impl.variant import apply_variant

        undo = apply_variant(variant)
    try:
        _, hits = PlantedSimulation(workload, backend, powercuts=powercuts).run_plan(())
    finally:
        if undo:
            undo()
    return len(places(hits, impolite, powercuts))


def _worker(queue, stop, *args) -> None:
    try:
        queue.put(("ok", _explore_share(*args, stop=stop)))
    except BaseException as e:  # report, never hang the parent
        import traceback

        queue.put(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
