"""A run's fault schedule: the planned faults in order, written as `schedule.json`.

    {"scenario": NAME, "seed": N, "faults": [{"kind": ..., "id": 0, "origin": "explicit", ...}, ...]}

`read_schedule(path)` validates a hand-edited or older file: a fault that does
not validate is bad input (exit 2) naming the file and the fault's index.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Union

from .kinds import Failpoint, Fault, FaultError, Powercut, Timed, fault_from_dict


def fired_kind(f: Fault) -> str:
    """The kind a fired fault is counted under: a failpoint whose action cuts power is a power cut."""
    return "powercut" if getattr(f, "action", None) == "powercut" else f.kind


def has_powercut(faults: Iterable[Union[Fault, Dict[str, Any]]], random_spec: Optional[Dict[str, Any]] = None) -> bool:
    """Whether the faults cut power: a timed power cut, or a failpoint with action `powercut` (with
    `random_spec`, a scenario's `[faults.random]`: also whether the planner may draw one)."""
    r = random_spec or {}
    if r.get("count") and ("powercut" in r.get("kinds", ())
                           or ("failpoint" in r.get("kinds", ()) and "powercut" in r.get("actions", ()))):
        return True
    for f in faults:
        kind, action = (f.kind, getattr(f, "action", None)) if isinstance(f, Fault) else (f.get("kind"),
                                                                                          f.get("action"))
        if kind == Powercut.kind or (kind == Failpoint.kind and action == "powercut"):
            return True
    return False


@dataclass
class Schedule:
    scenario: str
    seed: int
    faults: List[Fault] = field(default_factory=list)

    @property
    def has_powercut(self) -> bool:
        return has_powercut(self.faults)

    def timed(self) -> List[Timed]:
        """The faults the engine sends when a trigger holds, in plan order."""
        return sorted((f for f in self.faults if isinstance(f, Timed)), key=lambda f: f.id)

    def failpoints(self) -> List[Failpoint]:
        return [f for f in self.faults if isinstance(f, Failpoint)]

    def failpoint_rules(self, process: str, incarnation: int) -> List[Dict[str, Any]]:
        """The DFH_FAILPOINTS rules for one incarnation of one process."""
        return [f.rule() for f in self.failpoints() if f.target == process and f.incarnation == incarnation]

    def by_id(self) -> Dict[int, Fault]:
        return {f.id: f for f in self.faults}

    def to_dict(self) -> Dict[str, Any]:
        return {"scenario": self.scenario, "seed": self.seed, "faults": [f.to_dict(planned=True) for f in self.faults]}

    def write(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any, source: str = "schedule") -> "Schedule":
        """A schedule from its JSON form, validated; faults without an id get their index."""
        if isinstance(data, Schedule):
            return data
        if not isinstance(data, dict) or not isinstance(data.get("faults"), list):
            raise FaultError(f"{source}: not a schedule (a table with a 'faults' list)")
        faults = []
        for i, d in enumerate(data["faults"]):
            f = fault_from_dict(d, f"{source}: faults[{i}]")
            faults.append(f if f.id is not None else f.replace(id=i))
        ids = [f.id for f in faults]
        if len(set(ids)) != len(ids):
            raise FaultError(f"{source}: key 'id' repeats a value among {ids}; allowed: one id per fault")
        seed = data.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise FaultError(f"{source}: key 'seed' has value {seed!r}; allowed: an integer")
        return cls(str(data.get("scenario", "")), seed, faults)


def read_schedule(path: str) -> Schedule:
    """`schedule.json` of a report, validated (a UsageError, exit 2, names the file and the fault)."""
    from ..paths import read_json_file

    return Schedule.from_dict(read_json_file(path, "schedule"), path)
