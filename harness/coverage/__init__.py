"""Coverage: what one run explored, summed over many.

`coverage_of(events, final, schedule)` is a pure function of a run's merged
history, its final state and its fault schedule, like the checkers. It
reports:

1. every failpoint of the reference (`reference_impl.failpoints.POINTS`) with
   how often it was reached (every process counts its hits and its history
   carries them: the `reached` field of its events) and how often a fault
   fired there (`failpoint` events);
2. every fault that landed, by kind and by the protocol phase it hit
   (`phases.fault_phases`);
3. the sometimes-conditions seen, with their counts (`sometimes.CONDITIONS`);
4. the faults the schedule planned, by kind.

Reached counts are exact for a process that ended by itself or at a
failpoint; a process killed between two events loses the hits since its last
event (a lower bound, never an overcount).

`merge` adds coverages up (a campaign, a simulation search); `gaps` says what
a scenario asked for and a coverage lacks: a declared sometimes-condition
never seen, or a failpoint the scenario aims at never reached. A run or a
campaign with gaps is inconclusive, not failed: it tested less than asked.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence

from reference_impl.failpoints import POINTS

from .phases import PHASES, fault_phases
from .sometimes import CONDITIONS, sometimes_counts

__all__ = ["CONDITIONS", "PHASES", "POINTS", "coverage_of", "empty", "gaps", "merge", "scenario_points"]


def empty() -> Dict[str, Any]:
    return {"runs": 0, "failpoints": {p: {"reached": 0, "fired": 0} for p in POINTS}, "faults": {},
            "sometimes": {c: 0 for c in CONDITIONS}, "planned": {}}


def coverage_of(events: Iterable[Dict[str, Any]], final: Optional[Dict[str, Any]] = None,
                schedule: Optional[Sequence[Dict[str, Any]]] = None) -> Dict[str, Any]:
    """The coverage of one run (see the module docstring)."""
    events = list(events)
    cov = empty()
    cov["runs"] = 1
    fps = cov["failpoints"]
    for e in events:
        reached = e.get("reached")
        if reached:
            for p, n in reached.items():
                fps.setdefault(p, {"reached": 0, "fired": 0})["reached"] += int(n)
        if e.get("ev") == "failpoint" and e.get("proc") != "supervisor":
            fps.setdefault(str(e.get("point")), {"reached": 0, "fired": 0})["fired"] += 1
    for kind, phase, _e in fault_phases(events):
        by = cov["faults"].setdefault(kind, {})
        by[phase] = by.get(phase, 0) + 1
    cov["sometimes"] = sometimes_counts(events, final or {})
    for f in schedule or ():  # typed faults (harness.faults) or their dict form
        k = str(f.get("kind") if isinstance(f, dict) else getattr(f, "kind", "?"))
        cov["planned"][k] = cov["planned"].get(k, 0) + 1
    return cov


def merge(covs: Iterable[Optional[Dict[str, Any]]]) -> Dict[str, Any]:
    """The sum of coverages (None entries, e.g. runs that never finished, are skipped)."""
    out = empty()
    for c in covs:
        if not c:
            continue
        out["runs"] += int(c.get("runs", 1))
        for p, d in (c.get("failpoints") or {}).items():
            o = out["failpoints"].setdefault(p, {"reached": 0, "fired": 0})
            o["reached"] += int(d.get("reached", 0))
            o["fired"] += int(d.get("fired", 0))
        for kind, by in (c.get("faults") or {}).items():
            o = out["faults"].setdefault(kind, {})
            for ph, n in by.items():
                o[ph] = o.get(ph, 0) + int(n)
        for name, n in (c.get("sometimes") or {}).items():
            out["sometimes"][name] = out["sometimes"].get(name, 0) + int(n)
        for k, n in (c.get("planned") or {}).items():
            out["planned"][k] = out["planned"].get(k, 0) + int(n)
    return out


def scenario_points(scenario) -> List[str]:
    """The failpoints a scenario aims faults at, that its processes can reach.

    Explicit failpoint faults and the random faults' point patterns; rank
    points only with a data-parallel consumer; `store.` points not with the
    in-memory backend (its store code runs in the store server, which keeps
    no history).
    """
    from ..faults import points_matching

    pts: List[str] = [f.point for f in scenario.explicit_faults if f.kind == "failpoint"]
    rnd = scenario.random_faults
    if rnd.get("count") and "failpoint" in rnd.get("kinds", ()):
        pts += points_matching(rnd.get("points") or [])
    ranks = int(scenario.topology.get("consumer_ranks", 1))
    out = []
    for p in dict.fromkeys(pts):
        if ranks == 1 and p.startswith(("rank.", "rank0.")):
            continue
        if scenario.backend == "inmemory" and p.startswith("store."):
            continue
        out.append(p)
    return out


def gaps(cov: Dict[str, Any], sometimes: Sequence[str] = (), points: Sequence[str] = ()) -> List[str]:
    """What `cov` lacks: each declared condition never seen, each aimed-at failpoint never reached."""
    out = []
    for name in sometimes:
        if not (cov.get("sometimes") or {}).get(name):
            out.append(f"sometimes-condition {name} never occurred ({CONDITIONS.get(name, '?')})")
    for p in points:
        if not ((cov.get("failpoints") or {}).get(p) or {}).get("reached"):
            out.append(f"failpoint {p} never reached")
    return out
