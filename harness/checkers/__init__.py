"""Checkers: pure functions of (merged history, final state) -> PropertyResult.

Each module `pN_*.py` checks one property of DESIGN.md section 3 and opens with
its model, the operations it reads and the anomaly kinds it reports. The
history is the merged event list of `harness.history.load_history` (every event
has `line`, its 1-based position) and the final state is the dict described in
docs/history.md.

`check_all` shares one `Context` (an index of the events by role and `ev`, and
the consumer's surviving lineage) between the checkers, so the whole suite is a
few linear passes over the history.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional


@dataclass
class Anomaly:
    kind: str
    message: str
    sample_ids: List[str] = field(default_factory=list)
    steps: List[int] = field(default_factory=list)
    incarnations: List[str] = field(default_factory=list)  # "proc#inc"
    lines: List[int] = field(default_factory=list)  # history line numbers

    def to_dict(self) -> Dict[str, Any]:
        return {
            "kind": self.kind,
            "message": self.message,
            "sample_ids": list(self.sample_ids),
            "steps": list(self.steps),
            "incarnations": list(self.incarnations),
            "lines": list(self.lines),
        }


@dataclass
class PropertyResult:
    prop: str
    name: str
    valid: Optional[bool]  # None: not applicable to this run
    counts: Dict[str, Any] = field(default_factory=dict)
    anomalies: List[Anomaly] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "prop": self.prop,
            "name": self.name,
            "valid": self.valid,
            "counts": dict(self.counts),
            "anomalies": [a.to_dict() for a in self.anomalies],
        }

    def kinds(self) -> List[str]:
        """The distinct anomaly kinds, in order of first appearance."""
        return list(dict.fromkeys(a.kind for a in self.anomalies))


def by_line(e: Dict[str, Any]) -> int:
    """Sort key: the event's history line."""
    return e.get("line", 0)


def ledger_losses(ctx, durable: bool) -> List[Dict[str, Any]]:
    """The supervisor events after which a volatile store's ledger is gone: a kill of a
    `store*` target, or a power cut that killed the store server. None for a durable store."""
    if durable:
        return []
    kills = [e for e in ctx.events("supervisor", "kill") if str(e.get("target", "")).startswith("store")]
    cuts = [e for e in ctx.events("supervisor", "powercut")
            if any(str(k).startswith("store") for k in e.get("killed") or ())]
    return sorted(kills + cuts, key=by_line)


def add_durable_acks(acked: set, e: Dict[str, Any]) -> bool:
    """If `e` is a consumer `ack` or `reconcile`, add the ids it shows durably acked (an ack's ids, a
    reconcile's `released`) to `acked` and return True."""
    if e.get("ev") == "ack":
        acked.update(e.get("ids") or ())
    elif e.get("ev") == "reconcile":
        acked.update(e.get("released") or ())
    else:
        return False
    return True


def role(proc: str) -> str:
    """`consumer.rank1` -> `consumer`; `producer` -> `producer`."""
    return proc.split(".", 1)[0]


def incarnation(e: Dict[str, Any]) -> str:
    return f"{e.get('proc')}#{e.get('inc', 0)}"


def fmt_items(items: Iterable[Any], limit: int = 10) -> str:
    items = list(items)
    head = ", ".join(str(x) for x in items[:limit])
    if len(items) > limit:
        head += f", ... ({len(items) - limit} more)"
    return head or "-"


def train_anomaly(kind: str, message: str, sid: Any, refs, lines: List[int]) -> Anomaly:
    """An anomaly about sample `sid`, with the steps and incarnations of its train refs `(proc#inc, step, line)`."""
    return Anomaly(kind, message, sample_ids=[sid], steps=[r[1] for r in refs],
                   incarnations=list(dict.fromkeys(r[0] for r in refs)), lines=lines)


def finish(prop: str, name: str, anomalies: List[Anomaly], counts: Dict[str, Any],
           applicable: bool = True) -> PropertyResult:
    """Build a result: valid None when not applicable, else no anomalies; counts per kind."""
    by_kind: Dict[str, int] = {}
    for a in anomalies:
        by_kind[a.kind] = by_kind.get(a.kind, 0) + 1
    counts = dict(counts)
    counts["anomalies"] = len(anomalies)
    counts["by_kind"] = by_kind
    valid = (not anomalies) if applicable else (False if anomalies else None)
    return PropertyResult(prop, name, valid, counts, anomalies)


class Context:
    """Shared, lazily computed views of one (history, final) pair."""

    def __init__(self, history: List[Dict[str, Any]], final: Dict[str, Any]) -> None:
        self.history = history
        self.final = final or {}
        self._index: Optional[Dict[tuple, List[Dict[str, Any]]]] = None
        self._lineage = None

    @property
    def index(self) -> Dict[tuple, List[Dict[str, Any]]]:
        if self._index is None:
            idx: Dict[tuple, List[Dict[str, Any]]] = {}
            roles: Dict[str, str] = {}
            for e in self.history:
                p = e.get("proc", "")
                r = roles.get(p)
                if r is None:
                    r = roles[p] = role(p)
                k = (r, e.get("ev"))
                lst = idx.get(k)
                if lst is None:
                    idx[k] = [e]
                else:
                    lst.append(e)
            self._index = idx
        return self._index

    def events(self, role_name: str, *evs: str) -> List[Dict[str, Any]]:
        """Events of a role (`producer`, `consumer`, `supervisor`, ...) with one of `evs`, in history order."""
        if len(evs) == 1:
            return self.index.get((role_name, evs[0]), [])
        out = [e for ev in evs for e in self.index.get((role_name, ev), [])]
        out.sort(key=by_line)
        return out

    @property
    def lineage(self):
        if self._lineage is None:
            from .lineage import surviving_lineage
            self._lineage = surviving_lineage(self.history, self.final, ctx=self)
        return self._lineage


def context(history, final, ctx: Optional[Context]) -> Context:
    return ctx if ctx is not None else Context(history, final)


from . import (  # noqa: E402
    p1_no_duplicate_training,
    p2_no_loss,
    p3_backpressure,
    p4_exactly_one_fresh,
    p5_marker_atomicity,
    p6_durability,
    p7_release_after_ack,
    p8_liveness,
)

CHECKER_MODULES = [p1_no_duplicate_training, p2_no_loss, p3_backpressure, p4_exactly_one_fresh, p5_marker_atomicity,
                   p6_durability, p7_release_after_ack, p8_liveness]

#: The checkers in property order; each is `check(history, final, ctx=None) -> PropertyResult`.
ALL_CHECKERS = [m.check for m in CHECKER_MODULES]


def check_all(history: List[Dict[str, Any]], final: Dict[str, Any]) -> List[PropertyResult]:
    """Run every checker on one shared Context, in property order.

    The cyclic garbage collector is paused meanwhile: the checkers allocate
    only acyclic containers, and with a million event dicts alive every
    collection would rescan all of them.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        ctx = Context(history, final)
        return [check(history, final, ctx=ctx) for check in ALL_CHECKERS]
    finally:
        if was_enabled:
            gc.enable()
