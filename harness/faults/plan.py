"""The planner: a scenario's fault schedule as a pure function of (scenario, seed).

`make_schedule(scenario, seed)` returns the scenario's explicit faults
followed by its seeded random ones; the same inputs always give the same
schedule (a private `random.Random` seeded from the scenario name and the
seed; no global state).

Plans that can land. The planner counts the incarnations it creates: each
fault that ends an incarnation (a kill, a failpoint that crashes or cuts
power, a power cut) makes the next one. Failpoint faults are armed in exact
incarnations (a crash at a failpoint moves the next failpoint to the next
incarnation, a power cut every process's); a timed fault fires at a progress
that cannot be matched to a failpoint's, so the planner orders them: every
random kill waits until its process has reached the incarnation after the last
planned failpoint crash (`incarnation`, "that one or a later one"), and a
random power cut until every process has (`after`). So no random kill or cut
ends an incarnation a planned failpoint is still waiting in. And a chain of
failpoint crashes in one process must fit in the work: the planner follows
each process's position (in samples, from each point's pace:
`points.samples_per_hit`) and lowers a drawn hit that the process would not
reach before the end of the workload (the draws stay the same, so a seed keeps
every plan that could land). A planned fault can still miss for a real cause:
its process finished normally first, or a hand-written explicit fault
pre-empted it.
"""

from __future__ import annotations

import random
from typing import Any, Dict, List

from .kinds import (
    KINDS,
    NETWORK_KINDS,
    Failpoint,
    Fault,
    FaultError,
    Kill,
    Latency,
    Partition,
    Pause,
    Powercut,
    fault_from_dict,
)
from .points import is_rank_point, owner, points_matching, samples_per_hit
from .schedule import Schedule
from .vocabulary import PIPELINE, POWERCUT_TARGET, TARGETS, process_of

#: The kinds the planner can draw (`[faults.random] kinds`).
DRAWN_KINDS = (Kill.kind, Pause.kind, Failpoint.kind, Powercut.kind) + NETWORK_KINDS

def make_schedule(scenario, seed: int) -> Schedule:
    """The schedule of `scenario` (a `harness.scenario.Scenario`) with `seed`."""
    rng = random.Random(f"{scenario.name}:{int(seed)}")
    explicit = [fault_from_dict(f, f"{scenario.name}: faults.explicit[{i}]").replace(origin="explicit")
                for i, f in enumerate(scenario.explicit_faults)]
    next_inc = _after_explicit(explicit)
    work = _Work(scenario)
    for f in explicit:
        work.passes(f)
    drawn = [_draw(rng, scenario, next_inc, work) for _ in range(scenario.random_faults.get("count", 0))]
    _order_timed(drawn, next_inc)
    faults = [f.replace(id=i) for i, f in enumerate(explicit + drawn)]
    return Schedule(scenario.name, int(seed), faults)


def _after_explicit(explicit: List[Fault]) -> Dict[str, int]:
    """The next free incarnation of each process after the explicit failpoints."""
    next_inc = {t: 0 for t in TARGETS}
    for f in explicit:
        if isinstance(f, Failpoint):
            # Only an ending action starts a next incarnation; after an `eio` or a
            # `pause` the same process runs on.
            next_inc[f.target] = max(next_inc[f.target], f.incarnation + (1 if f.ends() else 0))
            if f.action == "powercut":  # every process restarts after the cut
                next_inc = {t: max(n, f.incarnation + 1) for t, n in next_inc.items()}
    return next_inc


class _Work:
    """Where each process stands in the workload (samples) after the failpoint crashes planned so far."""

    def __init__(self, sc) -> None:
        self.samples = int(sc.workload["samples"])
        self.workload = sc.workload
        self.ranks = int(sc.topology.get("consumer_ranks", 1))
        self.at: Dict[str, int] = {}

    def reachable_hit(self, f: Failpoint) -> int:
        """`f.hit`, or the last hit its process still reaches before the end of the workload."""
        per = samples_per_hit(f.point, self.workload, self.ranks)
        room = (self.samples - per - self.at.get(f.target, 0)) // per
        return max(1, min(f.hit, room))

    def passes(self, f: Fault) -> None:
        """A failpoint crash (or cut) at hit h moves its process h hits further (a restart resumes there)."""
        if isinstance(f, Failpoint) and f.ends():
            self.at[f.target] = self.at.get(f.target, 0) + f.hit * samples_per_hit(f.point, self.workload, self.ranks)


def _draw(rng: random.Random, sc, next_inc: Dict[str, int], work: _Work) -> Fault:
    """One random fault (the draws in the same order as ever: a seed keeps its plan)."""
    rnd = sc.random_faults
    samples = sc.workload["samples"]
    kind = rng.choice(rnd["kinds"])
    if kind == "failpoint":
        f = _draw_failpoint(rng, sc, next_inc)
        f = f.replace(hit=work.reachable_hit(f))
        work.passes(f)
        return f
    if kind == "powercut":
        frac = rng.uniform(*rnd["progress"])
        key = rng.choice(("at_published", "at_consumed"))
        return Powercut(target=POWERCUT_TARGET, origin="random", **{key: max(1, int(samples * frac))})
    target = rng.choice(rnd["targets"])
    frac = rng.uniform(*rnd["progress"])
    key = "at_published" if target == "producer" else "at_consumed"
    trigger = {key: max(1, int(samples * frac))}
    if kind == "pause":
        return Pause(target=target, origin="random", duration_s=round(rng.uniform(*rnd["pause_s"]), 3), **trigger)
    if kind == "kill":
        return Kill(target=target, origin="random", **trigger)
    if kind in (Partition.kind, Latency.kind):
        extra = {"duration_s": round(rng.uniform(*rnd["network_s"]), 3)}
        if kind == Latency.kind:
            extra.update(delay_s=round(rng.uniform(0.01, 0.2), 3), jitter_s=0.05, direction="both")
        return KINDS[kind](target=target, origin="random", **trigger, **extra)
    if kind in NETWORK_KINDS:
        return KINDS[kind](target=target, origin="random", **trigger)
    raise FaultError(f"{sc.path or sc.name}: key 'faults.random.kinds' has value {kind!r}; allowed: kill, pause, "
                     f"failpoint, powercut (the planner draws no other kind)")


def _draw_failpoint(rng: random.Random, sc, next_inc: Dict[str, int]) -> Failpoint:
    rnd = sc.random_faults
    ranks = int(sc.topology.get("consumer_ranks", 1))
    points = [p for p in points_matching(rnd["points"]) if owner(p, sc.backend) in PIPELINE]
    if ranks == 1:  # no rank reaches a rank point: keep single-rank schedules as they were
        points = [p for p in points if not is_rank_point(p)] or points
    if not points:
        raise FaultError(f"{sc.path or sc.name}: key 'faults.random.points' has value {rnd['points']!r}; allowed: "
                         f"points that the producer or the consumer reaches with backend {sc.backend!r}")
    point = rng.choice(points)
    target = owner(point, sc.backend)
    action = rng.choice(rnd["actions"])
    hit = rng.randint(1, rnd["max_hit"])
    f: Dict[str, Any] = {"target": target, "point": point, "action": action, "hit": hit, "times": 1,
                         "incarnation": next_inc[target], "origin": "random"}
    if action == "pause":
        f["duration_s"] = round(rng.uniform(*rnd["pause_s"]), 3)
    if point.startswith("rank.") and ranks > 1:
        f["rank"] = rng.randrange(ranks)  # armed in that rank only
    if action == "crash":
        next_inc[target] += 1
    elif action == "powercut":
        for t in next_inc:
            next_inc[t] += 1
    return Failpoint(**f)


def _order_timed(drawn: List[Fault], next_inc: Dict[str, int]) -> None:
    """Hold every random kill and power cut back until the planned failpoints of the processes it ends had
    their incarnations (see the module docstring)."""
    for i, f in enumerate(drawn):
        if isinstance(f, Kill) and next_inc[process_of(f.target)] > 0:
            drawn[i] = f.replace(incarnation=next_inc[process_of(f.target)])
        elif isinstance(f, Powercut) and any(next_inc[p] for p in PIPELINE):
            drawn[i] = f.replace(after={p: next_inc[p] for p in PIPELINE if next_inc[p]})
