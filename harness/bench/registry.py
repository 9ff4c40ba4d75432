"""The bench's sections, by name, and the goals its figures are held to.

A section is a small function `fn(run)` registered with `@section(name, order)`;
it measures, stores its figures in `run.out` and prints them with `run.say`.
`python -m harness bench --only a,b` runs the named ones, by `order`; an
unknown name is a usage error (exit 2) that lists the known ones.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

GOALS = {
    "restart_ms_median": ("<=", 15.0),
    "trials_per_min": (">=", 220.0),
    "sim_schedules_per_cpu_min": (">=", 5000.0),
    "check_1m_events_s": ("<=", 10.0),
    "sqlite_batch1_vs_fsync": (">=", 0.5),
    "tracing_overhead_ratio": ("<=", 1.3),
    "powercut_rebuild_ms": ("<=", 50.0),
    "powercut_trials_per_min": (">=", 40.0),
    "ray_vs_local_ratio": (">=", 0.85),
    "fast_lane_s": ("<=", 120.0),
    "full_suite_s": ("<=", 360.0),
}
DEFAULT_SCENARIO = "kill-random"
MEMORY_SCENARIO = "dp4-rank-kills"  # the 4-rank CPU (gloo) data-parallel scenario


@dataclass
class BenchRun:
    """What a section gets: the command's arguments, the scratch directory, the figures so far."""

    args: argparse.Namespace
    base: str  # scratch directory, removed at the end unless --keep
    out: Dict[str, Any]
    say: Callable[..., None]

    @property
    def quick(self) -> bool:
        return bool(self.args.quick)


_SECTIONS: Dict[str, Tuple[int, Callable[[BenchRun], None]]] = {}


def section(name: str, order: int):
    """Register `fn` as the section `name`; sections run by `order`."""
    def register(fn: Callable[[BenchRun], None]) -> Callable[[BenchRun], None]:
        if name in _SECTIONS:
            raise ValueError(f"bench section {name!r} registered twice")
        _SECTIONS[name] = (order, fn)
        return fn
    return register


def sections() -> Dict[str, Callable[[BenchRun], None]]:
    """name -> section function, in the order they run."""
    return {name: fn for name, (_, fn) in sorted(_SECTIONS.items(), key=lambda kv: kv[1][0])}


def goal_met(key: str, value: Optional[float]) -> Optional[bool]:
    if value is None:
        return None
    op, lim = GOALS[key]
    return value <= lim if op == "<=" else value >= lim


def goal(key: str, value: Optional[float]) -> str:
    """`goal <= 100: met` for a figure, `n/a` without one."""
    met = goal_met(key, value)
    if met is None:
        return "n/a"
    op, lim = GOALS[key]
    return f"goal {op} {lim:g}: {'met' if met else 'NOT MET'}"
