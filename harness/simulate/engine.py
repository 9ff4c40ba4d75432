"""The simulation engine: one crash schedule of the reference pipeline, in one process.

The producer and the consumer are the reference's steppable objects
(`reference_impl.producer.Producer`, `reference_impl.consumer.Consumer`). A
deterministic scheduler steps them over a temporary run directory that holds
the real SQLite file (or one shared `InMemoryMetadataStore`, the store server),
the real channel, feature blobs and checkpoint. A schedule is a list of
operations:

    ("step",  target, n)      step the target n times (a process that is down is
                              restarted first: new object, next incarnation)
    ("kill",  target)         crash between two steps: the object is dropped, its
                              memory is gone, its files and store rows stay (SIGKILL)
    ("fail",  target, point)  crash inside an operation: arm `point` in the target
                              and step it until the point is reached (the operation
                              stops right there); while the target idles, waiting
                              for input or for backpressure, the other side steps
    ("pause", target, n)      the target is frozen (or, if down, stays down) while the
                              other side takes n steps

`target` is "producer" or "consumer"; with the in-memory backend a schedule
may also kill "store_server" (`("kill", "store_server")`): the volatile ledger
is lost, the connections of every live process die (StoreUnavailable on their
next call) and an empty server takes over; the run must then stop fail-closed
(or complete), never train twice. After the schedule the run is drained:
whatever is down is restarted and both sides are stepped without faults until
both are done, so the end-of-run properties (P2 above all) apply to every
schedule. Invariants are checked at every step (P3's bounds and watermarks,
P4 fresh-once, P5 whole marker); the end of the run reads the final state
(`harness.final_state.read_final_state`, the checkpoint's witness included)
and runs the same checkers as the process engine (`harness.checkers.check_all`).

A crash in the simulation is what SIGKILL leaves: the crashed object's SQLite
connection is closed without a commit (a transaction that a `FailpointCrash`
interrupted inside `store.mid_ack_txn` is rolled back, as the OS would on
process death), its channel descriptor is closed, nothing else of it runs. One
difference from SIGKILL: cleanup code written as `except BaseException` in the
reference runs on the way out (the feature store unlinks its temp file), which
a killed process would leave for its successor to remove.

Every effective fault is also written as a process-engine fault
(`Simulation.faults`, scenario syntax): a failpoint crash as the point, the
target, its hit count within that incarnation and the incarnation; a crash
between steps as a kill at the progress it happened (`at_published` for the
producer, `at_consumed` for the consumer), except when the process's last
step ended right at a failpoint (nothing recorded after it): then as that
failpoint crash, which replays exactly; a pause as a pause there.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from reference_impl import failpoints
from reference_impl.channel import CHANNEL, CONSUMED
from reference_impl.config import RunConfig
from reference_impl.failpoints import POINTS, FailpointCrash
from reference_impl.process_loop import Exit, ProcessLoop

TARGETS = ("producer", "consumer")
OP_KINDS = ("step", "kill", "fail", "pause")

#: Virtual seconds per step call (the consumer's clock: starvation checkpoints).
STEP_DT = 0.05
#: How many steps a `fail` operation may take to reach its point.
ARM_STEPS = 64

#: The simulation's default workload (scenario `[workload]` keys): small, so
#: that a schedule takes tens of milliseconds, with watermarks low enough that
#: backpressure engages in most schedules.
DEFAULT_WORKLOAD: Dict[str, Any] = {
    "samples": 24, "publish_batch": 4, "train_batch": 2, "accumulation": 2, "checkpoint_every": 1,
    "high_watermark": 8, "low_watermark": 4, "producer_delay_s": 0.0, "consumer_step_delay_s": 0.0,
    "starve_checkpoint_s": 0.5, "io_retries": 3,
}

Op = Tuple[Any, ...]


def points_for(target: str, backend: str) -> List[str]:
    """The failpoints a simulated `target` process reaches.

    With the in-memory backend the store code (and `store.mid_ack_txn`) runs
    in the store server, not in the consumer, so it is not a consumer point.
    """
    if target == "producer":
        return [p for p in POINTS if p.startswith(("producer.", "channel.", "features."))]
    pts = [p for p in POINTS if p.startswith("consumer.")]
    if backend != "inmemory":
        pts += [p for p in POINTS if p.startswith("store.")]
    return pts


def config_for(workdir: str, workload: Dict[str, Any], backend: str, seed: int = 0) -> RunConfig:
    """The run config for a simulated run (the process engine's mapping of a workload)."""
    w = dict(DEFAULT_WORKLOAD)
    w.update(workload or {})
    return RunConfig(
        workdir=workdir, run_id=f"sim-{seed}", seed=int(seed), backend=backend,
        num_samples=w["samples"], publish_batch=w["publish_batch"], train_batch=w["train_batch"],
        accumulation=w["accumulation"], checkpoint_every=w["checkpoint_every"],
        high_watermark=w["high_watermark"], low_watermark=w["low_watermark"], world_size=1,
        producer_delay_s=0.0, consumer_step_delay_s=0.0, poll_interval_s=0.0,
        starve_checkpoint_s=w["starve_checkpoint_s"], io_retries=w["io_retries"],
    ).validate("simulation workload")


def format_op(op: Op) -> str:
    kind = op[0]
    if kind == "step":
        return f"step {op[1]} x{op[2]}"
    if kind == "kill":
        return f"kill {op[1]}"
    if kind == "fail":
        return f"crash {op[1]} at {op[2]}"
    if kind == "pause":
        return f"pause {op[1]} while the other takes {op[2]} steps"
    return repr(op)


def normalize(ops: Sequence[Op]) -> List[Op]:
    """The same schedule with consecutive steps of one target merged (same behaviour)."""
    out: List[Op] = []
    for op in ops:
        op = tuple(op)
        if op[0] == "step" and out and out[-1][0] == "step" and out[-1][1] == op[1]:
            out[-1] = ("step", op[1], out[-1][2] + op[2])
        else:
            out.append(op)
    return out


def check_ops(ops: Sequence[Op], backend: str = "sqlite") -> List[Op]:
    """Validate a schedule (as read back from JSON); returns it as tuples."""
    out = []
    for i, op in enumerate(ops):
        op = tuple(op)
        bad = ValueError(f"schedule op {i}: {op!r} is not one of ('step', T, n), ('kill', T), "
                         f"('fail', T, point), ('pause', T, n) with T in {TARGETS}")
        if op[:2] == ("kill", "store_server") and len(op) == 2:
            if backend != "inmemory":
                raise ValueError(f"schedule op {i}: {op!r}: only the in-memory backend has a store server")
            out.append(op)
            continue
        if not op or op[0] not in OP_KINDS or len(op) < 2 or op[1] not in TARGETS:
            raise bad
        if op[0] in ("step", "pause") and (len(op) != 3 or not isinstance(op[2], int) or op[2] < 1):
            raise bad
        if op[0] == "kill" and len(op) != 2:
            raise bad
        if op[0] == "fail" and (len(op) != 3 or op[2] not in points_for(op[1], backend)):
            raise ValueError(f"schedule op {i}: {op!r}: point not reached by {op[1]} "
                             f"(allowed: {', '.join(points_for(op[1], backend))})")
        out.append(op)
    return out


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
    """Same `emit` as `reference_impl.history.HistoryWriter`, into an EventLog."""

    __slots__ = ("log", "proc", "incarnation", "seq")

    def __init__(self, log: EventLog, proc: str, inc: int) -> None:
        self.log = log
        self.proc = proc
        self.incarnation = int(inc)
        self.seq = 0

    def emit(self, ev: str, **fields: Any) -> None:
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
    """What must hold after every step: P3's bounds and watermarks, P4, P5.

    Event-driven parts run on each emitted event; state parts (the consumed
    sidecar against the channel, the store's marker) after each step.
    """

    def __init__(self, cfg: RunConfig, observer_store) -> None:
        self.cfg = cfg
        self.store = observer_store
        self.violations: List[Violation] = []
        self.op_index: Optional[int] = None
        self.high, self.low, self.batch = cfg.high_watermark, cfg.low_watermark, cfg.publish_batch
        self.fresh: Dict[str, int] = {}  # sid -> line of its fresh commit
        self.prod_seen: Optional[Tuple[int, int]] = None  # (consumed reading, line)
        self.cons_seen: Optional[Tuple[int, int]] = None  # (sidecar value in an event, line)
        self.sidecar_max = 0
        self.acks: List[Tuple[frozenset, Dict[str, Any]]] = []  # returned ack transactions
        self.acked_ids: set = set()
        self.open_txns: Dict[Tuple[str, int, int], Tuple[frozenset, Dict[str, Any]]] = {}
        self.marker_dirty = False
        self.reported: set = set()
        # channel record count, read incrementally
        self._chan = cfg.path(CHANNEL)
        self._consumed_path = cfg.path(CONSUMED)
        self._offset = 0
        self.published = 0
        self._consumed_key = None
        self._consumed = 0

    def ledger_lost(self, store) -> None:
        """A volatile ledger was lost (store server killed): a new ledger starts empty."""
        self.store = store
        self.fresh.clear()
        self.acks.clear()
        self.acked_ids.clear()
        self.open_txns.clear()

    def add(self, prop: str, kind: str, message: str, line: Optional[int] = None) -> None:
        key = (prop, kind, message)
        if key in self.reported:
            return
        self.reported.add(key)
        self.violations.append(Violation(prop, kind, message, line, self.op_index))

    # event hooks
    def on_event(self, e: Dict[str, Any]) -> None:
        ev = e["ev"]
        if ev == "commit":
            self._commit(e)
        elif ev in ("publish", "pause", "resume") and e["proc"] == "producer":
            self._producer_reading(e)
        elif ev in ("consumed", "done") or (ev == "reconcile" and "consumed_before" in e):
            v = e.get("consumed_before") if ev == "reconcile" else e.get("consumed")
            if v is not None:
                self._consumer_value(int(v), e)
            if ev == "reconcile":
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

    def _commit(self, e: Dict[str, Any]) -> None:
        ids, fresh = e.get("ids") or [], e.get("fresh") or []
        if len(ids) != len(fresh):
            self.add("P4", "malformed_commit", f"commit at line {e['line']} has {len(ids)} ids and fresh={fresh}",
                     e["line"])
        for sid, f in zip(ids, fresh):
            if not f:
                continue
            prev = self.fresh.get(sid)
            if prev is not None:
                self.add("P4", "fresh_twice", f"sample {sid} reported fresh twice: commit lines {prev} and "
                         f"{e['line']} ({e['proc']}#{e['inc']})", e["line"])
            else:
                self.fresh[sid] = e["line"]

    def _producer_reading(self, e: Dict[str, Any]) -> None:
        ev, line = e["ev"], e["line"]
        pub, con = e.get("published"), e.get("consumed")
        where = f"{ev} by producer#{e['inc']} at line {line}"
        if con is not None and pub is not None and not 0 <= con <= pub:
            self.add("P3", "consumed_exceeds_published", f"{where} observed consumed={con} published={pub}", line)
        if con is not None:
            if self.prod_seen is not None and con < self.prod_seen[0]:
                self.add("P3", "consumed_backwards", f"producer reading went backwards: consumed={self.prod_seen[0]} "
                         f"(line {self.prod_seen[1]}) then {con} ({where})", line)
            if self.prod_seen is None or con >= self.prod_seen[0]:
                self.prod_seen = (con, line)
        if ev == "publish":
            ifb = e.get("in_flight_before")
            if pub is not None and con is not None and con + self.high + self.batch < pub:
                self.add("P3", "published_over_watermark", f"{where} brought published to {pub} with consumed "
                         f"{con}: in_flight {pub - con} > high {self.high} + publish_batch {self.batch}", line)
            elif ifb is not None and ifb >= self.high:
                self.add("P3", "published_over_watermark",
                         f"{where} published while in_flight_before={ifb} >= high {self.high}", line)
        elif ev == "pause":
            if e.get("in_flight") is not None and e["in_flight"] < self.high:
                self.add("P3", "pause_without_watermark",
                         f"{where} paused at in_flight={e['in_flight']} below high {self.high}", line)
        elif e.get("in_flight") is not None and e["in_flight"] > self.low:
            self.add("P3", "resume_above_low", f"{where} resumed at in_flight={e['in_flight']} above low {self.low}",
                     line)

    def _consumer_value(self, v: int, e: Dict[str, Any]) -> None:
        line = e["line"]
        where = f"{e['ev']} by {e['proc']}#{e['inc']} at line {line}"
        if self.cons_seen is not None and v < self.cons_seen[0]:
            self.add("P3", "consumed_backwards", f"consumer sidecar went backwards: consumed={self.cons_seen[0]} "
                     f"(line {self.cons_seen[1]}) then consumed={v} ({where})", line)
        if self.cons_seen is None or v >= self.cons_seen[0]:
            self.cons_seen = (v, line)

    # state checks (files are stat'ed first and read only when they changed)
    def update_published(self) -> int:
        try:
            size = os.stat(self._chan).st_size
        except FileNotFoundError:
            return self.published
        if size == self._offset:
            return self.published
        with open(self._chan, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        if size < self._offset:  # cut back below a complete record: never done by a correct writer
            self.add("P3", "channel_truncated", f"channel shrank to {size} bytes below {self._offset} bytes "
                     f"of complete records")
            return self.published
        end = data.rfind(b"\n") + 1
        if end:
            self.published += data.count(b"\n", 0, end)
            self._offset += end
        return self.published

    def read_consumed(self) -> int:
        try:
            st = os.stat(self._consumed_path)
        except FileNotFoundError:
            self._consumed_key = None
            self._consumed = 0
            return 0
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if key == self._consumed_key:
            return self._consumed
        try:
            with open(self._consumed_path) as f:
                text = f.read()
        except FileNotFoundError:
            return 0
        try:
            v = int(json.loads(text)["consumed"])
        except (ValueError, KeyError, TypeError):
            self.add("P3", "sidecar_unreadable", f"consumed sidecar is not valid: {text[:80]!r}")
            return self.sidecar_max
        self._consumed_key, self._consumed = key, v
        return v

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


class ServerStore:
    """The in-memory store as the store server serves it to one client connection.

    Every client of one server incarnation shares one InMemoryMetadataStore.
    When the simulation kills the server, the connections die: every later call
    on them raises StoreUnavailable (the reference's RemoteMetadataStore does
    the same on a lost connection), and a new server starts with an empty
    ledger (a new ledger_id).
    """

    _METHODS = ("commit_sample", "commit_samples", "is_committed", "get_committed", "committed_count",
                "all_committed_ids", "record_train_ack", "durable_marker", "ledger_id")

    def __init__(self, store) -> None:
        self._store = store
        self.dead = False

    def __getattr__(self, name):
        if name not in self._METHODS:
            raise AttributeError(name)
        fn = getattr(self._store, name)

        def call(*args, **kwargs):
            if self.dead:
                from reference_impl.stores import StoreUnavailable

                raise StoreUnavailable(f"store server connection lost during {name}: server killed")
            return fn(*args, **kwargs)

        return call

    def close(self) -> None:
        pass


# -- one simulated process -------------------------------------------------------

class _Proc:
    def __init__(self, name: str) -> None:
        self.name = name
        self.inc = -1
        self.loop: Optional[ProcessLoop] = None  # the process loop around the steppable object
        self.store = None
        self.h: Optional[SimHistory] = None
        self.status = "down"  # down | running | done | fail_closed | failed | peer_failed | error
        self.counts: Dict[str, int] = {}
        self.last_hit: Optional[Tuple[str, int, int]] = None  # (point, hit, events so far) in the current step
        self.tail_hit: Optional[Tuple[str, int]] = None  # the last step ended right at this failpoint hit

    @property
    def obj(self):
        """The steppable object (Producer or Consumer) while the process lives."""
        return self.loop.obj if self.loop is not None else None

    @property
    def terminal(self) -> bool:
        return self.status not in ("down", "running")


@dataclass
class SimResult:
    ops: List[Op]
    outcome: str
    violations: List[Violation]
    faults: List[Dict[str, Any]]  # process-engine faults (scenario syntax)
    trace: List[str]  # what each effective fault did
    steps: int
    events: int
    error: Optional[str] = None
    properties: Dict[str, Dict[str, Any]] = field(default_factory=dict)

    @property
    def violated(self) -> List[str]:
        return sorted({v.prop for v in self.violations})

    @property
    def ledger_lost(self) -> bool:
        return any(f["kind"] == "kill" and f["target"] == "store_server" for f in self.faults)

    @property
    def acceptable_outcomes(self) -> List[str]:
        """Completion; after a lost volatile ledger, also the declared fail-closed stop."""
        return ["completed", "fail_closed"] if self.ledger_lost else ["completed"]

    def failed(self, expect: Optional[Sequence[str]] = None, outcomes: Sequence[str] = ("completed",)) -> bool:
        """A failure: with `expect` (properties), one of them violated; else any violation, an
        error, or an outcome this schedule does not allow (see `acceptable_outcomes`)."""
        if expect:
            if isinstance(expect, str):
                expect = [expect]
            return bool(set(expect) & set(self.violated))
        return bool(self.violations) or self.outcome not in self.acceptable_outcomes or self.error is not None

    def summary(self) -> Dict[str, Any]:
        return {"ops": [list(o) for o in self.ops], "schedule": [format_op(o) for o in self.ops],
                "outcome": self.outcome, "violated": self.violated,
                "violations": [v.to_dict() for v in self.violations[:20]], "faults": self.faults,
                "trace": self.trace, "steps": self.steps, "events": self.events, "error": self.error}


def default_workdir_root() -> str:
    """A tmpfs when there is one (fsync is free there), else the temp directory."""
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK):
        return shm
    return tempfile.gettempdir()


class Simulation:
    """Runs schedules of one workload on one backend; `run(ops)` -> SimResult.

    Not reentrant; one schedule at a time. A protocol variant, if any, must be
    applied by the caller (`reference_impl.variant.apply_variant`).
    """

    def __init__(self, workload: Optional[Dict[str, Any]] = None, backend: str = "sqlite", *,
                 workdir_root: Optional[str] = None, keep_workdir: bool = False, seed: int = 0,
                 check_end: bool = True) -> None:
        self.workload = dict(DEFAULT_WORKLOAD)
        self.workload.update(workload or {})
        self.backend = backend
        self.root = workdir_root or default_workdir_root()
        self.keep = keep_workdir
        self.seed = seed
        self.check_end = check_end
        config_for(os.path.join(self.root, "x"), self.workload, backend, seed)  # validate now
        self.drain_budget = 40 * int(self.workload["samples"]) + 400
        self.last_workdir: Optional[str] = None

    # -- public -------------------------------------------------------------
    def run(self, ops: Sequence[Op]) -> SimResult:
        ops = [tuple(o) for o in ops]
        workdir = tempfile.mkdtemp(prefix="sim-", dir=self.root)
        self.last_workdir = workdir
        saved_hit = failpoints.hit
        failpoints.hit = self._hit
        try:
            return self._run(ops, workdir)
        finally:
            failpoints.hit = saved_hit
            self._close_all()
            if not self.keep:
                shutil.rmtree(workdir, ignore_errors=True)

    # -- setup ----------------------------------------------------------------
    def _run(self, ops: List[Op], workdir: str) -> SimResult:
        os.makedirs(os.path.join(workdir, "history"))
        cfg = self.cfg = config_for(workdir, self.workload, self.backend, self.seed)
        self.shared_store = None
        self.server_inc = 0
        if self.backend == "inmemory":
            from reference_impl.stores import InMemoryMetadataStore

            self.shared_store = ServerStore(InMemoryMetadataStore())
        self.observer = self._observer_store()
        self.inv = Invariants(cfg, self.observer)
        self.log = EventLog(self.inv.on_event)
        self.sup = self.log.writer("supervisor", 0)
        self.procs = {t: _Proc(t) for t in TARGETS}
        self.current: Optional[_Proc] = None
        self.armed: Optional[Tuple[str, str]] = None
        self.fired: Optional[Dict[str, Any]] = None
        self.vtime = 0.0
        self.steps = 0
        self.faults: List[Dict[str, Any]] = []
        self.trace: List[str] = []
        self.error: Optional[str] = None
        outcome = "completed"
        try:
            for i, op in enumerate(ops):
                self.inv.op_index = i
                self._apply(op)
                if self.error:
                    break
            self.inv.op_index = None
            if not self.error:
                outcome = self._drain()
        except Exception:  # a bug in the engine itself: never a silent pass
            self.error = traceback.format_exc()
        if self.error:
            outcome = "error"
        properties: Dict[str, Dict[str, Any]] = {}
        violations = list(self.inv.violations)
        if self.check_end and outcome != "error":
            properties, end_violations = self._check_end(outcome)
            violations += end_violations
        if outcome == "error":
            violations.append(Violation("error", "exception", (self.error or "").strip().splitlines()[-1]
                                        if self.error else "error"))
        return SimResult(ops, outcome, violations, self.faults, self.trace, self.steps, len(self.log.events),
                         self.error, properties)

    def _observer_store(self):
        if self.backend == "inmemory":
            return self.shared_store
        if self.backend in ("private", "noop"):
            return None
        from reference_impl.stores import open_store

        return open_store(self.backend, self.cfg.workdir)

    def _open_store(self):
        if self.shared_store is not None:
            return self.shared_store
        from reference_impl.stores import open_store

        return open_store(self.backend, self.cfg.workdir)

    @property
    def durable_store(self) -> bool:
        b = self.backend
        return b == "sqlite" or ":" in b or (b == "inmemory" and self.server_inc == 0)

    # -- failpoints ---------------------------------------------------------
    def _hit(self, name: str) -> None:
        """Installed as `reference_impl.failpoints.hit` while a schedule runs."""
        p = self.current
        if p is None:
            return
        n = p.counts[name] = p.counts.get(name, 0) + 1
        p.last_hit = (name, n, len(self.log.events))
        if self.armed is not None and self.armed[0] == p.name and self.armed[1] == name:
            self.armed = None
            self.fired = {"kind": "failpoint", "target": p.name, "point": name, "action": "crash", "hit": n,
                          "incarnation": p.inc}
            if p.h is not None:
                p.h.emit("failpoint", point=name, action="crash")
            raise FailpointCrash(name)

    # -- process lifecycle ----------------------------------------------------
    def _spawn(self, p: _Proc) -> None:
        """Start `p` (next incarnation) under the process loop the real mains use."""
        from reference_impl.consumer import Consumer
        from reference_impl.producer import Producer

        p.inc += 1
        p.counts = {}
        p.loop = None
        p.tail_hit = None
        self.sup.emit("spawn", target=p.name, target_inc=p.inc, pid=0, failpoints=[])
        h = p.h = self.log.writer(p.name, p.inc)
        if p.name == "producer":
            h.emit("start", pid=0, resume=p.inc > 0, backend=self.backend)
        else:
            h.emit("start", pid=0, resume=p.inc > 0, device="cpu", backend=self.backend)

        def make():
            p.store = self._open_store()
            if p.name == "producer":
                return Producer(self.cfg, incarnation=p.inc, history=h, store=p.store, sleep=_no_sleep)
            return Consumer(self.cfg, incarnation=p.inc, history=h, store=p.store, clock=self._clock)

        self.current = p
        p.loop = ProcessLoop(p.name, self.cfg, h, say=_quiet)
        try:
            ended = p.loop.start(make)
            if ended is not None:
                self._ended(p, ended)
            else:
                p.status = "running"
        except FailpointCrash:
            self._drop(p, killed=True)
        except Exception:
            self._exception(p)
        finally:
            self.current = None
            self.vtime += STEP_DT

    def _clock(self) -> float:
        return self.vtime

    def _step(self, p: _Proc) -> str:
        """One step of `p` (restarting it first if it is down); returns the step's status or p.status."""
        if p.status == "down":
            self._spawn(p)
            if not self.error:
                self.inv.after_step(len(self.log.events))
            return "progress" if p.status == "running" else p.status
        if p.status != "running":
            return p.status
        ended = p.loop.check_peer()
        if ended is not None:
            self._ended(p, ended)
            return p.status
        self.current = p
        self.steps += 1
        p.last_hit = p.tail_hit = None
        r = "crashed"
        try:
            r = p.loop.advance()
            if isinstance(r, Exit):
                self._ended(p, r)
                r = p.status
            elif p.last_hit is not None and p.last_hit[2] == len(self.log.events):
                p.tail_hit = p.last_hit[:2]  # nothing was recorded after the step's last failpoint
        except FailpointCrash:
            self._drop(p, killed=True)
        except Exception:
            self._exception(p)
        finally:
            self.current = None
            self.vtime += STEP_DT
        if not self.error:
            self.inv.after_step(len(self.log.events))
        return r if p.status == "running" or r == "done" else p.status

    def _ended(self, p: _Proc, ended: Exit) -> None:
        """The process loop ended (completed, failed, fail-closed, peer failed): the process exits."""
        self._drop(p, killed=False, status=ended.status, code=int(ended.code))

    def _release(self, p: _Proc) -> None:
        """Drop `p`'s object and close what it held (its channel, its own store connection)."""
        obj, store = p.obj, p.store
        p.loop = None
        p.store = None
        if obj is not None and p.name == "producer":
            try:
                obj.channel.close()
            except Exception:
                pass
        if store is not None and store is not self.shared_store:
            try:
                store.close()  # SQLite: closes without commit; an open transaction is rolled back
            except Exception:
                pass

    def _drop(self, p: _Proc, *, killed: bool, status: str = "down", code: int = -9) -> None:
        """The process ends: its object and memory go; files and store rows stay."""
        self._release(p)
        p.status = status
        self.sup.emit("exited", target=p.name, target_inc=p.inc, code=code)

    def _exception(self, p: _Proc) -> None:
        tb = traceback.format_exc()
        self.error = f"{p.name}#{p.inc} raised:\n{tb}"
        self._drop(p, killed=False, status="error", code=1)

    def _close_all(self) -> None:
        for p in getattr(self, "procs", {}).values():
            if p.obj is not None or p.store is not None:
                self._release(p)
        obs = getattr(self, "observer", None)
        if obs is not None and obs is not getattr(self, "shared_store", None):
            try:
                obs.close()
            except Exception:
                pass
        self.observer = None

    # -- progress (for the process-engine translation) -----------------------
    def _progress(self, target: str) -> Dict[str, int]:
        if target == "producer":
            return {"at_published": self.inv.update_published()}
        return {"at_consumed": self.inv.read_consumed()}

    def _phase(self, p: _Proc) -> str:
        return getattr(p.obj, "phase", "?") if p.obj is not None else "-"

    # -- operations -----------------------------------------------------------
    def _apply(self, op: Op) -> None:
        kind, target = op[0], op[1]
        if target == "store_server":
            if kind == "kill":
                self._kill_server()
            return
        p = self.procs[target]
        if kind == "step":
            for _ in range(op[2]):
                if p.terminal or self.error:
                    break
                self._step(p)
        elif kind == "kill":
            if p.status != "running":
                return
            trig = self._progress(target)
            phase = self._phase(p)
            self.sup.emit("kill", target=target, target_inc=p.inc, signal=9, fault=len(self.faults))
            where = (f"published {self.inv.published}, consumed {self.inv.read_consumed()}")
            if p.tail_hit is not None:
                # The last step ended right at a failpoint (nothing recorded after it): a
                # crash there is this crash, and replays exactly in the process engine.
                point, hit = p.tail_hit
                self.faults.append({"kind": "failpoint", "target": target, "point": point, "action": "crash",
                                    "hit": hit, "incarnation": p.inc})
                self.trace.append(f"kill {target}#{p.inc} between steps, right after {point} (hit {hit}); "
                                  f"next phase {phase}; {where}")
            else:
                self.faults.append({"kind": "kill", "target": target, **trig})
                self.trace.append(f"kill {target}#{p.inc} between steps (next phase {phase}; "
                                  f"{_fmt_trig(trig)}; {where})")
            self._drop(p, killed=True)
        elif kind == "fail":
            if p.terminal and p.status != "down":
                return
            # Run until the target reaches the point: the target steps; while it
            # idles (waiting for the other side) the other side steps too.
            other = self.procs["consumer" if target == "producer" else "producer"]
            self.armed = (target, op[2])
            self.fired = None
            try:
                for _ in range(ARM_STEPS):
                    if self.error:
                        break
                    r = self._step(p)
                    if self.fired is not None or r == "done" or p.terminal:
                        break
                    if r == "idle":
                        if other.terminal:
                            break
                        self._step(other)
            finally:
                self.armed = None
            if self.fired is not None:
                f, self.fired = self.fired, None
                self.faults.append(f)
                self.trace.append(f"crash {target}#{f['incarnation']} at {f['point']} (hit {f['hit']}; "
                                  f"published {self.inv.update_published()}, consumed {self.inv.read_consumed()})")
        elif kind == "pause":
            # The target is frozen (or, when down, not restarted) while the other side steps.
            if p.terminal and p.status != "down":
                return
            running = p.status == "running"
            other = self.procs["consumer" if target == "producer" else "producer"]
            trig = self._progress(target)
            if running:
                self.sup.emit("pause", target=target, target_inc=p.inc, fault=len(self.faults))
            n = 0
            for _ in range(op[2]):
                if other.terminal or self.error:
                    break
                self._step(other)
                n += 1
            if running:
                self.sup.emit("cont", target=target, target_inc=p.inc, fault=len(self.faults))
            if n and running:
                self.faults.append({"kind": "pause", "target": target, **trig,
                                    "duration_s": round(max(0.05, 0.01 * n), 3)})
                self.trace.append(f"pause {target}#{p.inc} for {n} steps of {other.name} ({_fmt_trig(trig)})")
        else:
            raise ValueError(f"unknown op {op!r}")

    def _kill_server(self) -> None:
        """The store server dies (the volatile ledger with it) and restarts empty."""
        if self.shared_store is None or all(p.terminal and p.status != "down" for p in self.procs.values()):
            return
        from reference_impl.stores import InMemoryMetadataStore

        trig = {"at_consumed": self.inv.read_consumed()}
        self.sup.emit("kill", target="store_server", target_inc=self.server_inc, signal=9, fault=len(self.faults))
        self.sup.emit("exited", target="store_server", target_inc=self.server_inc, code=-9)
        self.shared_store.dead = True
        self.server_inc += 1
        self.shared_store = ServerStore(InMemoryMetadataStore())
        self.sup.emit("spawn", target="store_server", target_inc=self.server_inc, pid=0, failpoints=[])
        self.inv.ledger_lost(self.shared_store)
        self.observer = self.shared_store
        self.faults.append({"kind": "kill", "target": "store_server", **trig})
        self.trace.append(f"kill store_server#{self.server_inc - 1}: ledger lost, an empty server restarts "
                          f"({_fmt_trig(trig)}; published {self.inv.published})")

    def _drain(self) -> str:
        """Restart what is down and step both without faults until both end."""
        order = [self.procs["producer"], self.procs["consumer"]]
        budget = self.drain_budget
        while budget > 0 and not self.error:
            live = [p for p in order if not p.terminal]
            if not live:
                break
            for p in live:
                self._step(p)
                budget -= 1
        if self.error:
            return "error"
        st = {p.name: p.status for p in order}
        vals = set(st.values())
        if "error" in vals:
            return "error"
        if "fail_closed" in vals:
            return "fail_closed"
        if "failed" in vals:
            return "failed"
        if vals == {"done"}:
            return "completed"
        state = {"status": st, "published": self.inv.update_published(), "consumed": self.inv.read_consumed()}
        for p in order:
            if p.obj is not None:
                state[p.name + "_phase"] = self._phase(p)
        self.sup.emit("timeout", bound_s=float(self.drain_budget), state=state)
        return "timeout"

    # -- end of run -------------------------------------------------------------
    def _check_end(self, outcome: str):
        from harness.checkers import check_all
        from harness.final_state import read_final_state

        self._close_all()
        final = read_final_state(self.cfg, outcome=outcome, durable_store=self.durable_store, bound_s=60.0)
        final["store_server_restarts"] = self.server_inc
        if self.shared_store is not None:  # the current server incarnation's ledger
            m = self.shared_store.durable_marker()
            final["marker"] = {"acked": sorted(m.get("acked") or ()), "global_step": m.get("global_step"),
                               "optimizer_durable": m.get("optimizer_durable")}
            final["committed_ids"] = list(self.shared_store.all_committed_ids())
        results = check_all(self.log.events, final)
        props = {r.prop: r.to_dict() for r in results}
        out = []
        for r in results:
            if r.valid is False:
                for a in r.anomalies[:5]:
                    out.append(Violation(r.prop, a.kind, a.message, a.lines[0] if a.lines else None, None))
                if not r.anomalies:
                    out.append(Violation(r.prop, "invalid", f"{r.prop} invalid", None, None))
        return props, out


def _fmt_trig(trig: Dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in trig.items())


def _no_sleep(_s: float) -> None:
    return None


def _quiet(_line: str) -> None:
    """The simulated processes' stderr lines (fail closed, failed cleanly) are not printed."""
