"""A scenario file's `[faults]` table, validated: the power-cut mode, the explicit faults, the random spec.

    [faults]             powercut_mode = "clean" | "torn" (how a power cut rebuilds the work dir)
    [[faults.explicit]]  one fault each (`harness.faults.kinds`: kind, target, trigger, ...)
    [faults.random]      what the planner draws (`harness.faults.plan`): count, kinds, targets,
                         points, actions, pause_s, max_hit, progress, network_s

Every error names the source, the key and what is allowed (a `FaultError`, exit 2).
"""

from __future__ import annotations

import copy
import math
from typing import Any, Dict, List, Tuple

from reference_impl.failpoints import ACTIONS, POINTS

from .kinds import Fault, FaultError, fault_from_dict
from .plan import DRAWN_KINDS
from .vocabulary import POWERCUT_MODES, RANK_TARGET, TARGETS

RANDOM_KEYS = {"count": 0, "kinds": ["kill"], "targets": ["producer", "consumer"], "points": [],
               "actions": ["crash"], "pause_s": [0.05, 0.5], "max_hit": 6, "progress": [0.05, 0.9],
               "network_s": [0.5, 2.0]}  # how long a random partition or latency window lasts


def _err(source: str, key: str, value: Any, allowed: str) -> FaultError:
    return FaultError(f"{source}: key {key!r} has value {value!r}; allowed: {allowed}")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def faults_table(faults: Any, source: str) -> Tuple[str, List[Fault], Dict[str, Any]]:
    """(powercut_mode, explicit faults, random spec with defaults) of a scenario's `[faults]` table."""
    if not isinstance(faults, dict) or set(faults) - {"explicit", "random", "powercut_mode"}:
        raise _err(source, "faults", faults, "a table with 'explicit' (array of tables), 'random' (a table) "
                                             "and/or 'powercut_mode'")
    powercut_mode = faults.get("powercut_mode", "clean")
    if powercut_mode not in POWERCUT_MODES:
        raise _err(source, "faults.powercut_mode", powercut_mode, " | ".join(POWERCUT_MODES))
    explicit = faults.get("explicit", [])
    if not isinstance(explicit, list):
        raise _err(source, "faults.explicit", explicit, "an array of tables [[faults.explicit]]")
    explicit = [fault_from_dict(f, f"{source}: faults.explicit[{i}]") for i, f in enumerate(explicit)]
    return powercut_mode, explicit, random_spec(faults.get("random", {}), source)


def random_spec(raw: Any, source: str) -> Dict[str, Any]:
    """`[faults.random]` with its defaults, validated."""
    if not isinstance(raw, dict):
        raise _err(source, "faults.random", raw, "a table")
    rnd = {**copy.deepcopy(RANDOM_KEYS)}
    for k, v in raw.items():
        if k not in RANDOM_KEYS:
            raise _err(source, f"faults.random.{k}", v, "one of " + ", ".join(RANDOM_KEYS))
        rnd[k] = v
    if not isinstance(rnd["count"], int) or rnd["count"] < 0:
        raise _err(source, "faults.random.count", rnd["count"], "an integer >= 0")
    for k, allowed in (("kinds", DRAWN_KINDS), ("targets", TARGETS), ("actions", ACTIONS)):
        ok = (lambda x: x in TARGETS or RANK_TARGET.match(str(x))) if k == "targets" else (lambda x, a=allowed: x in a)
        if not isinstance(rnd[k], list) or not all(ok(x) for x in rnd[k]):
            raise _err(source, f"faults.random.{k}", rnd[k], "a list drawn from " + ", ".join(allowed) +
                       (" (or consumer.rank<N>)" if k == "targets" else ""))
    for p in rnd["points"]:
        if p not in POINTS and not p.endswith("*"):
            raise _err(source, "faults.random.points", p,
                       "failpoint names (or prefixes ending in *): " + ", ".join(POINTS))
    if "failpoint" in rnd["kinds"] and not rnd["points"]:
        raise _err(source, "faults.random.points", rnd["points"], "a non-empty list when kinds has 'failpoint'")
    _check_ranges(rnd, source)
    return rnd


def _check_ranges(rnd: Dict[str, Any], source: str) -> None:
    for k in ("pause_s", "progress", "network_s"):
        v = rnd[k]
        if not (isinstance(v, list) and len(v) == 2 and all(_finite(x) for x in v) and v[0] <= v[1]):
            raise _err(source, f"faults.random.{k}", v, "[low, high] finite numbers with low <= high")
    if not 0.0 <= rnd["progress"][0] <= rnd["progress"][1] <= 1.0:
        raise _err(source, "faults.random.progress", rnd["progress"],
                   "[low, high] fractions of the workload with 0 <= low <= high <= 1")
    if not 0.0 < rnd["pause_s"][0] <= rnd["pause_s"][1]:
        raise _err(source, "faults.random.pause_s", rnd["pause_s"], "[low, high] seconds with 0 < low <= high")
    if not isinstance(rnd["max_hit"], int) or isinstance(rnd["max_hit"], bool) or rnd["max_hit"] < 1:
        raise _err(source, "faults.random.max_hit", rnd["max_hit"], "an integer >= 1")
