"""The fault kinds: one dataclass each, read from and written to plain dicts.

A fault is data: its kind, its target, when it fires and what it does. The
same objects are a scenario's `[[faults.explicit]]` tables, a run's
`schedule.json` entries, what the ledger confirms and what the simulation
reports having done.

* timed faults (`Kill`, `Pause`, `Powercut`) fire when their trigger holds:
  `at_published` / `at_consumed` (progress) or `at_s` (seconds after start).
  `incarnation`, when set, holds a timed fault back until that incarnation of
  its process (or a later one) is alive: the planner sets it so that a kill
  never ends an incarnation that a planned failpoint is still waiting in;
  `after` does the same for a power cut, one incarnation per process;
* `Failpoint` faults are armed in one incarnation of one process and fire
  when its code reaches the point for the `hit`-th time.

`fault_from_dict(d, where)` validates (every error names `where` and the key:
a `UsageError`, exit 2); `Fault.to_dict()` writes the scenario form,
`to_dict(planned=True)` adds the plan's `id` and `origin`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Dict, Optional, Type

from reference_impl.failpoints import ACTIONS, POINTS

from ..exit_codes import UsageError
from .points import POINT_ROLE
from .vocabulary import ENDING_ACTIONS, POWERCUT_TARGET, RANK_TARGET, TARGETS, TRIGGERS, process_of, rank_of

#: kind name -> its dataclass; filled by `@fault_kind`.
KINDS: Dict[str, Type["Fault"]] = {}
#: Keys only a plan carries (not a scenario's explicit fault).
PLAN_KEYS = ("id", "origin")


class FaultError(UsageError):
    """A fault that does not validate; the message names where it came from and the key."""


def fault_kind(cls: Type["Fault"]) -> Type["Fault"]:
    """Register a fault dataclass under its `kind`."""
    KINDS[cls.kind] = cls
    return cls


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(v: Any, low: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _err(where: str, key: str, value: Any, allowed: str) -> FaultError:
    return FaultError(f"{where}: key {key!r} has value {value!r}; allowed: {allowed}")


def _check(key: str, ok: Callable[[Any], bool], allowed: str):
    return dataclasses.field(default=None, metadata={"ok": ok, "allowed": allowed, "key": key})


@dataclass
class Fault:
    """What every fault has: its kind (per class), target, and its place in a plan."""

    kind: ClassVar[str] = ""
    #: Whether it ends the incarnation it hits (the process restarts as the next one).
    ends_incarnation: ClassVar[bool] = False

    target: str = ""
    id: Optional[int] = None
    origin: Optional[str] = None  # "explicit" (the scenario's) or "random" (the planner's)

    # -- what a kind may override -------------------------------------------------
    def validate(self, where: str) -> None:
        """Cross-field checks (each field's own check ran already)."""

    def ends(self) -> bool:
        return self.ends_incarnation

    def describe(self) -> str:
        return f"{self.kind} {self.target}"

    # -- common ---------------------------------------------------------------------
    @property
    def process(self) -> str:
        """The supervised process it acts on (a rank's group for `consumer.rank<N>`)."""
        return process_of(self.target)

    @property
    def rank_target(self) -> Optional[int]:
        return rank_of(self.target)

    def to_dict(self, planned: bool = False) -> Dict[str, Any]:
        out: Dict[str, Any] = {"kind": self.kind}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is None or (f.name in PLAN_KEYS and not planned):
                continue
            out[f.name] = v
        return out

    def replace(self, **changes: Any) -> "Fault":
        return dataclasses.replace(self, **changes)


def fault_from_dict(d: Any, where: str) -> Fault:
    """A fault from its dict form (a scenario table, a schedule.json entry), validated."""
    if isinstance(d, Fault):
        return d
    if not isinstance(d, dict):
        raise _err(where, "(fault)", d, "a table with a 'kind'")
    cls = KINDS.get(d.get("kind"))
    if cls is None:
        raise _err(where, "kind", d.get("kind"), " | ".join(KINDS))
    names = {f.name: f for f in dataclasses.fields(cls)}
    for k, v in d.items():
        if k != "kind" and k not in names:
            raise _err(where, k, v, f"one of the keys of a {cls.kind} fault: kind, " + ", ".join(names))
    for k in ("id",):
        if d.get(k) is not None and not _int(d[k], 0):
            raise _err(where, k, d[k], "an integer >= 0")
    if d.get("origin") is not None and d["origin"] not in ("explicit", "random"):
        raise _err(where, "origin", d["origin"], "explicit | random")
    for k, f in names.items():
        ok = f.metadata.get("ok")
        if ok is not None and d.get(k) is not None and not ok(d[k]):
            raise _err(where, k, d[k], f.metadata["allowed"])
    fault = cls(**{k: v for k, v in d.items() if k != "kind"})
    fault.validate(where)
    return fault


@dataclass
class Timed(Fault):
    """A fault the engine sends when its trigger holds (exactly one of `TRIGGERS`)."""

    at_published: Optional[int] = _check("at_published", lambda v: _int(v, 0), "an integer >= 0 (a count of samples)")
    at_consumed: Optional[int] = _check("at_consumed", lambda v: _int(v, 0), "an integer >= 0 (a count of samples)")
    at_s: Optional[float] = _check("at_s", lambda v: _finite(v) and v >= 0, "a finite number >= 0")
    incarnation: Optional[int] = _check("incarnation", lambda v: _int(v, 0),
                                        "an integer >= 0 (sent to that incarnation or a later one)")

    @property
    def trigger(self) -> str:
        return next(k for k in TRIGGERS if getattr(self, k) is not None)

    @property
    def at(self) -> float:
        return getattr(self, self.trigger)

    def holds(self, published: int, consumed: int, elapsed_s: float) -> bool:
        """Whether the trigger holds at this progress."""
        return {"at_published": published, "at_consumed": consumed, "at_s": elapsed_s}[self.trigger] >= self.at

    def validate(self, where: str) -> None:
        given = [k for k in TRIGGERS if getattr(self, k) is not None]
        if len(given) != 1:
            raise _err(where, "trigger", given, "exactly one of " + ", ".join(TRIGGERS))
        self.check_target(where)

    def check_target(self, where: str) -> None:
        if not (self.target in TARGETS or RANK_TARGET.match(str(self.target))):
            raise _err(where, "target", self.target, " | ".join(TARGETS) + " | consumer.rank<N>")

    def describe(self) -> str:
        return f"{self.kind} {self.target} at {self.trigger}={self.at}"


@fault_kind
@dataclass
class Kill(Timed):
    """SIGKILL (or `signal`) to the target's process group, or to one rank's pid."""

    kind: ClassVar[str] = "kill"
    ends_incarnation: ClassVar[bool] = True
    signal: Optional[int] = _check("signal", lambda v: _int(v, 1), "a signal number >= 1")


@fault_kind
@dataclass
class Pause(Timed):
    """SIGSTOP, then SIGCONT after `duration_s`."""

    kind: ClassVar[str] = "pause"
    duration_s: Optional[float] = _check("duration_s", lambda v: _finite(v) and v > 0, "a finite number > 0")

    def __post_init__(self) -> None:
        if self.duration_s is None:
            self.duration_s = 0.3


@fault_kind
@dataclass
class Powercut(Timed):
    """Every process of the run dies at once; the work dir reverts to what was synced.

    `after` (set by the planner): the incarnation each process must have
    reached first, so that the cut never pre-empts a planned fault."""

    kind: ClassVar[str] = "powercut"
    ends_incarnation: ClassVar[bool] = True
    after: Optional[Dict[str, int]] = _check(
        "after", lambda v: isinstance(v, dict) and all(k in TARGETS and _int(n, 0) for k, n in v.items()),
        "a table process -> incarnation (>= 0)")

    def __post_init__(self) -> None:
        if self.target in ("", None):
            self.target = POWERCUT_TARGET

    def check_target(self, where: str) -> None:
        if self.target != POWERCUT_TARGET:
            raise _err(where, "target", self.target, f"none (or {POWERCUT_TARGET!r}): a power cut hits every process")
        if self.incarnation is not None:
            raise _err(where, "incarnation", self.incarnation, "none on a power cut (it hits every process; "
                                                               "the plan sets 'after')")

    def describe(self) -> str:
        return f"power cut at {self.trigger}={self.at}"


@fault_kind
@dataclass
class Failpoint(Fault):
    """`action` at the `hit`-th time incarnation `incarnation` of `target` reaches `point` (in `rank` only,
    when set); a `pause` action lasts `duration_s`."""

    kind: ClassVar[str] = "failpoint"
    point: str = _check("point", lambda v: v in POINTS, ", ".join(POINTS))
    action: str = _check("action", lambda v: v in ACTIONS, ", ".join(ACTIONS))
    hit: int = _check("hit", lambda v: _int(v, 1), "an integer >= 1")
    times: int = _check("times", lambda v: _int(v, 1), "an integer >= 1")
    incarnation: int = _check("incarnation", lambda v: _int(v, 0), "an integer >= 0")
    duration_s: Optional[float] = _check("duration_s", lambda v: _finite(v) and v > 0, "a finite number > 0")
    rank: Optional[int] = _check("rank", lambda v: _int(v, 0), "an integer >= 0 (a rank of the consumer group)")

    def __post_init__(self) -> None:
        defaults = {"action": "crash", "hit": 1, "times": 1, "incarnation": 0}
        for k, v in defaults.items():
            if getattr(self, k) is None:
                setattr(self, k, v)
        if self.action == "pause" and self.duration_s is None:
            self.duration_s = 0.3

    def ends(self) -> bool:
        return self.action in ENDING_ACTIONS

    def validate(self, where: str) -> None:
        if self.point is None:
            raise _err(where, "point", None, ", ".join(POINTS))
        if self.target not in TARGETS:
            raise _err(where, "target", self.target, " | ".join(TARGETS) + " (consumer.rank<N> is for kill and "
                                                                          "pause; a failpoint names 'rank')")
        if self.duration_s is not None and self.action != "pause":
            raise _err(where, "duration_s", self.duration_s, "only with action 'pause'")

    def rule(self) -> Dict[str, Any]:
        """Its `DFH_FAILPOINTS` rule (`reference_impl.failpoints`)."""
        r = {"point": self.point, "action": self.action, "hit": self.hit, "times": self.times}
        return dict(r, rank=self.rank) if self.rank is not None else r

    def describe(self) -> str:
        where = f" rank {self.rank}" if self.rank is not None else ""
        return f"failpoint {self.point} ({self.action}, hit {self.hit}) in {self.target}#{self.incarnation}{where}"


# -- the impolite channel: at-least-once delivery, not a crash ----------------------------------

@dataclass
class Impolite(Failpoint):
    """At the `hit`-th time incarnation `incarnation` of `target` reaches `point`, the
    component is asked for its impolite act (`reference_impl.failpoints` action `kind`,
    `records` records); it acts at its next safe step and records it in its history."""

    process_kind: ClassVar[str] = ""
    records: Optional[int] = _check("records", lambda v: _int(v, 1), "an integer >= 1")

    def __post_init__(self) -> None:
        if self.action is None:
            self.action = self.kind
        if self.records is None:
            self.records = 1
        super().__post_init__()

    def validate(self, where: str) -> None:
        super().validate(where)
        if self.action != self.kind:
            raise _err(where, "action", self.action, f"{self.kind!r} (or none) on a {self.kind} fault")
        if self.target != self.process_kind or POINT_ROLE.get(self.point) != self.process_kind:
            raise _err(where, "point" if self.target == self.process_kind else "target",
                       self.point if self.target == self.process_kind else self.target,
                       f"a {self.process_kind} point, target {self.process_kind!r}: " +
                       ", ".join(p for p, r in POINT_ROLE.items() if r == self.process_kind))

    def rule(self) -> Dict[str, Any]:
        return dict(super().rule(), records=self.records)

    def describe(self) -> str:
        return (f"{self.kind} of {self.records} record(s) at {self.point} hit {self.hit} "
                f"in {self.target}#{self.incarnation}")


@fault_kind
@dataclass
class Duplicate(Impolite):
    """The producer writes its last `records` channel records again at its next publish, as a
    producer that re-publishes after a crash would."""

    kind: ClassVar[str] = "duplicate"
    process_kind: ClassVar[str] = "producer"


@fault_kind
@dataclass
class Replay(Impolite):
    """The consumer's read position moves `records` back before its next read, so it meets
    records it has trained or acked already."""

    kind: ClassVar[str] = "replay"
    process_kind: ClassVar[str] = "consumer"


# -- network faults: between one client node and the store server (networked backends) ----------

LATENCY_DIRECTIONS = ("request", "reply", "both")


@dataclass
class Network(Timed):
    """A fault on the network of one client node (`producer`, `consumer`, `consumer.rank<N>`): the
    harness's TCP proxy between that node and the store server delivers it."""

    network: ClassVar[bool] = True

    def check_target(self, where: str) -> None:
        if self.target not in ("producer", "consumer") and not RANK_TARGET.match(str(self.target)):
            raise _err(where, "target", self.target, "producer | consumer | consumer.rank<N> (a client node)")


@fault_kind
@dataclass
class Partition(Network):
    """The node's connections hang, then fail, for `duration_s`."""

    kind: ClassVar[str] = "partition"
    duration_s: Optional[float] = _check("duration_s", lambda v: _finite(v) and v > 0, "a finite number > 0")

    def __post_init__(self) -> None:
        if self.duration_s is None:
            self.duration_s = 1.0


@fault_kind
@dataclass
class Latency(Network):
    """Every message in `direction` is delayed by `delay_s` (+ up to `jitter_s`) for `duration_s`."""

    kind: ClassVar[str] = "latency"
    duration_s: Optional[float] = _check("duration_s", lambda v: _finite(v) and v > 0, "a finite number > 0")
    delay_s: Optional[float] = _check("delay_s", lambda v: _finite(v) and 0 <= v <= 60,
                                      "a finite number of seconds, 0..60")
    jitter_s: Optional[float] = _check("jitter_s", lambda v: _finite(v) and 0 <= v <= 60,
                                       "a finite number of seconds, 0..60")
    direction: Optional[str] = _check("direction", lambda v: v in LATENCY_DIRECTIONS, " | ".join(LATENCY_DIRECTIONS))

    def __post_init__(self) -> None:
        for k, v in (("duration_s", 1.0), ("delay_s", 0.1), ("jitter_s", 0.0), ("direction", "both")):
            if getattr(self, k) is None:
                setattr(self, k, v)


@fault_kind
@dataclass
class Reset(Network):
    """The node's open connections are reset (RST)."""

    kind: ClassVar[str] = "reset"


@fault_kind
@dataclass
class LostReply(Network):
    """The node's next request reaches the server; its reply is dropped (an indeterminate call)."""

    kind: ClassVar[str] = "lost_reply"


#: The network kinds (delivered by the proxies of a networked backend).
NETWORK_KINDS = tuple(k for k, cls in KINDS.items() if getattr(cls, "network", False))
