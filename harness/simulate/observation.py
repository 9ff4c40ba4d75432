"""What the simulation engine observes of a run: the history and the step-time invariants.

`EventLog` is the merged history, in memory, in call order; each simulated
process writes to it through a `SimHistory` (the `emit` of
`reference_impl.history.HistoryWriter`).

`Invariants` checks, after every step, what only the state between steps
shows and the end of the run cannot see any more: the consumed sidecar
against the complete channel records (P3), the sidecar never going
backwards, the channel never cut back, and the store's marker never holding
part of an ack transaction (P5, a torn marker may be repaired before the
end). Whatever the history alone shows (P3's event bounds and watermarks, P4
fresh-once) is judged once, at the end, by `harness.checkers.check_all`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from reference_impl.config import RunConfig

from ..run_plumbing import Progress, SidecarUnreadable

# -- history ------------------------------------------------------------------

class EventLog:
    """The merged history, in memory, in call order.

    Events have the fields of `reference_impl.history.HistoryWriter` (proc, inc,
    seq, t, mono, ev, ...) plus `line`; `mono` is a logical clock (one
    microsecond per event), so sorting by `(mono, proc, inc, seq)` as
    `harness.history.merge` does gives exactly the call order.
    """

    def __init__(self, on_event: Optional[Callable[[Dict[str, Any]], None]] = None) -> None:
        self.events: List[Dict[str, Any]] = []
        self.on_event = on_event

    def writer(self, proc: str, inc: int) -> "SimHistory":
        return SimHistory(self, proc, inc)

    def append(self, w: "SimHistory", ev: str, fields: Dict[str, Any]) -> None:
        n = len(self.events)
        mono = n * 1e-6
        rec = {"proc": w.proc, "inc": w.incarnation, "seq": w.seq, "t": mono, "mono": mono, "ev": ev}
        for k, v in fields.items():
            if isinstance(v, (set, frozenset)):
                v = sorted(v)
            elif isinstance(v, (list, tuple)):
                v = list(v)
            rec[k] = v
        rec["line"] = n + 1
        w.seq += 1
        self.events.append(rec)
        if self.on_event is not None:
            self.on_event(rec)


class SimHistory:
    """Same `emit` as `reference_impl.history.HistoryWriter`, into an EventLog.

    `reached` counts the failpoints this process reached since its last event
    (the engine's failpoint hook adds to it); the next event carries them, as
    the real writer's do."""

    __slots__ = ("log", "proc", "incarnation", "seq", "reached")

    def __init__(self, log: EventLog, proc: str, inc: int) -> None:
        self.log = log
        self.proc = proc
        self.incarnation = int(inc)
        self.seq = 0
        self.reached: Dict[str, int] = {}

    def emit(self, ev: str, **fields: Any) -> None:
        if self.reached:
            fields["reached"], self.reached = self.reached, {}
        self.log.append(self, ev, fields)

    def close(self) -> None:
        pass



# -- invariants checked at every step ---------------------------------------

@dataclass
class Violation:
    prop: str
    kind: str
    message: str
    line: Optional[int] = None  # history line, where known
    op: Optional[int] = None  # index of the schedule op during which it was seen (None: drain or end)

    def to_dict(self) -> Dict[str, Any]:
        return {"prop": self.prop, "kind": self.kind, "message": self.message, "line": self.line, "op": self.op}


class Invariants:
    """What must hold after every step, of the run's state (see the module docstring).

    Event hooks gather what the marker check needs (returned acks, checkpoints
    with an ack still to come, reconciles); the state checks run after each step.
    """

    def __init__(self, cfg: RunConfig, observer_store) -> None:
        self.cfg = cfg
        self.store = observer_store
        self.violations: List[Violation] = []
        self.op_index: Optional[int] = None
        self.sidecar_max = 0
        self.consumer_reported = 0  # the highest count a consumer reported (durable by then)
        self.acks: List[Tuple[frozenset, Dict[str, Any]]] = []  # returned ack transactions
        self.acked_ids: set = set()
        self.open_txns: Dict[Tuple[str, int, int], Tuple[frozenset, Dict[str, Any]]] = {}
        self.marker_dirty = False
        self.reported: set = set()
        self.progress = Progress(cfg.workdir, on_anomaly=lambda kind, msg: self.add("P3", kind, msg))

    @property
    def published(self) -> int:
        return self.progress.published

    def power_lost(self) -> None:
        """A power cut: a sidecar count seen renamed into place but never reported (its directory
        not yet fsynced) may go; a reported one may not (the P3 checker's rule across a cut)."""
        self.sidecar_max = min(self.sidecar_max, self.consumer_reported)

    def ledger_lost(self, store) -> None:
        """A volatile ledger was lost (store server killed): a new ledger starts empty."""
        self.store = store
        self.acks.clear()
        self.acked_ids.clear()
        self.open_txns.clear()

    def add(self, prop: str, kind: str, message: str, line: Optional[int] = None) -> None:
        key = (prop, kind, message)
        if key in self.reported:
            return
        self.reported.add(key)
        self.violations.append(Violation(prop, kind, message, line, self.op_index))

    # event hooks: what the marker check needs
    def on_event(self, e: Dict[str, Any]) -> None:
        ev = e["ev"]
        reported = e.get("consumed_before" if ev == "reconcile" else "consumed")
        if ev in ("consumed", "reconcile", "done") and e.get("proc") == "consumer" and reported is not None:
            self.consumer_reported = max(self.consumer_reported, int(reported))
        if ev == "reconcile" and "consumed_before" in e:
            self.acked_ids.update(e.get("rolled_forward") or ())
            self.marker_dirty = True
        elif ev == "ack":
            ids = frozenset(e.get("ids") or ())
            self.acks.append((ids, e))
            self.acked_ids |= ids
            self.open_txns.pop((e["proc"], e["inc"], int(e.get("step") or 0)), None)
            self.marker_dirty = True
        elif ev == "checkpoint" and e.get("unacked"):
            self.open_txns[(e["proc"], e["inc"], int(e.get("step") or 0))] = (frozenset(e["unacked"]), e)
            self.marker_dirty = True

    # state checks (files are stat'ed first and read only when they changed)
    def update_published(self) -> int:
        return self.progress.update_published()

    def read_consumed(self) -> int:
        try:
            v = self.progress.read_consumed()
        except SidecarUnreadable as e:
            self.add("P3", "sidecar_unreadable", str(e))
            return self.sidecar_max
        return 0 if v is None else v

    def after_step(self, line: int) -> None:
        pub = self.update_published()
        con = self.read_consumed()
        if not 0 <= con <= pub:
            self.add("P3", "consumed_exceeds_published", f"after history line {line}: consumed sidecar {con} "
                     f"with {pub} complete channel records", line)
        if con < self.sidecar_max:
            self.add("P3", "consumed_backwards", f"after history line {line}: consumed sidecar {con} below an "
                     f"earlier value {self.sidecar_max}", line)
        self.sidecar_max = max(self.sidecar_max, con)
        if self.marker_dirty and self.store is not None:
            self.marker_dirty = False
            self._check_marker(line)

    def _check_marker(self, line: int) -> None:
        try:
            m = self.store.durable_marker()
        except Exception as e:  # the observer cannot read: not an atomicity question
            self.add("P5", "marker_unreadable", f"after history line {line}: {type(e).__name__}: {e}", line)
            return
        acked = m.get("acked") or set()
        if not isinstance(acked, (set, frozenset)):
            acked = set(acked)
        for ids, e in self.acks:
            if ids <= acked:
                continue
            present = ids & acked
            if present:
                self.add("P5", "torn_ack", f"after history line {line} the marker holds part of the ack at step "
                         f"{e.get('step')} (line {e['line']}): present {sorted(present)}, missing "
                         f"{sorted(ids - acked)}", e["line"])
        for (proc, inc, step), (ids, e) in self.open_txns.items():
            r = ids - self.acked_ids
            present = r & acked
            if present and present != r:
                self.add("P5", "torn_ack", f"after history line {line} the marker holds part of the interrupted "
                         f"ack at step {step} by {proc}#{inc} (checkpoint line {e['line']}): present "
                         f"{sorted(present)}, missing {sorted(r - acked)}", e["line"])
