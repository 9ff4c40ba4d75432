"""The nemesis: a scenario's fault schedule as a pure function of (scenario, seed).

`make_schedule(scenario, seed)` returns the explicit faults followed by the
seeded random ones; the same inputs always give the same schedule (a private
`random.Random` seeded from the scenario name and the seed; no global state).

Two kinds of fault:
* timed faults (`kill`, `pause`) fire in the supervisor when their trigger
  holds: `at_published` / `at_consumed` (progress, so they land inside the
  run whatever the machine's speed) or `at_s` (seconds after start);
* failpoint faults (`failpoint`) are armed in one incarnation of one process
  through `DFH_FAILPOINTS` and fire when the code reaches the point;
* power cuts (`powercut`, target `all`) are timed faults that kill every
  process of the run at once; a failpoint with action `powercut` stops its
  process at the point and the runner then cuts power. After a cut every
  process runs its next incarnation.
"""

from __future__ import annotations

import fnmatch
import json
import random
from typing import Any, Dict, List

from reference_impl.failpoints import POINTS

from ..scenario import NETWORK_KINDS, POWERCUT_TARGET, Scenario

# Which process reaches each failpoint ("rank." / "rank0." points: a rank of the
# data-parallel consumer group, which the supervisor knows as "consumer").
POINT_OWNER = {p: ("consumer" if p.startswith(("consumer.", "store.", "rank.", "rank0.")) else "producer")
               for p in POINTS}
RANK_POINT_PREFIXES = ("rank.", "rank0.")


def points_matching(patterns: List[str]) -> List[str]:
    out = []
    for pat in patterns:
        out += [p for p in POINTS if fnmatch.fnmatchcase(p, pat) and p not in out]
    return out


def make_schedule(scenario: Scenario, seed: int) -> Dict[str, Any]:
    rng = random.Random(f"{scenario.name}:{int(seed)}")
    faults: List[Dict[str, Any]] = [dict(f, origin="explicit") for f in scenario.explicit_faults]
    rnd = scenario.random_faults
    samples = scenario.workload["samples"]
    points = points_matching(rnd["points"])
    ranks = int(scenario.topology.get("consumer_ranks", 1))
    if ranks == 1:  # no rank reaches a rank point: keep single-rank schedules as they were
        points = [p for p in points if not p.startswith(RANK_POINT_PREFIXES)] or points
    next_inc = {t: 0 for t in ("producer", "consumer", "store_server")}
    for f in scenario.explicit_faults:
        if f["kind"] == "failpoint":
            # Only a crash starts a next incarnation; after an `eio` or a `pause`
            # the same process runs on, so a random failpoint aimed at its
            # successor would never be reached.
            owner = f["target"]
            next_inc[owner] = max(next_inc[owner], f["incarnation"] + (1 if f["action"] == "crash" else 0))
            if f["action"] == "powercut":  # every process restarts after the cut
                next_inc = {t: max(n, f["incarnation"] + 1) for t, n in next_inc.items()}
    for _ in range(rnd["count"]):
        kind = rng.choice(rnd["kinds"])
        if kind == "failpoint":
            point = rng.choice(points)
            target = POINT_OWNER[point]
            f = {"kind": "failpoint", "target": target, "point": point, "action": rng.choice(rnd["actions"]),
                 "hit": rng.randint(1, rnd["max_hit"]), "times": 1, "incarnation": next_inc[target]}
            if f["action"] == "pause":
                f["duration_s"] = round(rng.uniform(*rnd["pause_s"]), 3)
            if point.startswith("rank.") and ranks > 1:
                f["rank"] = rng.randrange(ranks)  # armed in that rank only
            if f["action"] in ("crash", "pause"):
                next_inc[target] += 1 if f["action"] == "crash" else 0
            elif f["action"] == "powercut":
                next_inc = {t: n + 1 for t, n in next_inc.items()}
        elif kind == "powercut":
            frac = rng.uniform(*rnd["progress"])
            key = rng.choice(("at_published", "at_consumed"))
            f = {"kind": "powercut", "target": POWERCUT_TARGET, key: max(1, int(samples * frac))}
        else:
            target = rng.choice(rnd["targets"])
            frac = rng.uniform(*rnd["progress"])
            key = "at_published" if target == "producer" else "at_consumed"
            f = {"kind": kind, "target": target, key: max(1, int(samples * frac))}
            if kind == "pause":
                f["duration_s"] = round(rng.uniform(*rnd["pause_s"]), 3)
            elif kind in ("partition", "latency"):
                f["duration_s"] = round(rng.uniform(*rnd["network_s"]), 3)
                if kind == "latency":
                    f.update(delay_s=round(rng.uniform(0.01, 0.2), 3), jitter_s=0.05, direction="both")
        f["origin"] = "random"
        faults.append(f)
    for i, f in enumerate(faults):
        f["id"] = i
    return {"scenario": scenario.name, "seed": int(seed), "faults": faults}


def failpoint_rules(schedule: Dict[str, Any], target: str, incarnation: int) -> List[Dict[str, Any]]:
    """The DFH_FAILPOINTS rules for one incarnation of one process."""
    return [
        dict({"point": f["point"], "action": f["action"], "hit": f["hit"], "times": f.get("times", 1)},
             **({"rank": f["rank"]} if f.get("rank") is not None else {}))
        for f in schedule["faults"]
        if f["kind"] == "failpoint" and f["target"] == target and f["incarnation"] == incarnation
    ]


def timed_faults(schedule: Dict[str, Any]) -> List[Dict[str, Any]]:
    return [f for f in schedule["faults"] if f["kind"] in ("kill", "pause", "powercut") + NETWORK_KINDS]


def has_powercut(schedule: Dict[str, Any]) -> bool:
    """Whether the schedule cuts power (a timed power cut or a failpoint with action `powercut`)."""
    return any(f["kind"] == "powercut" or f.get("action") == "powercut" for f in schedule["faults"])


def write_schedule(schedule: Dict[str, Any], path: str) -> None:
    with open(path, "w") as f:
        json.dump(schedule, f, indent=2, sort_keys=True)
