"""The simulation engine: one crash schedule of the reference pipeline, in one process.

The producer and the consumer are the reference's steppable objects
(`reference_impl.producer.Producer`, `reference_impl.consumer.Consumer`), each
under the process loop the real processes run (`reference_impl.process_loop`:
peer sentinel, fail-closed, exit codes). A
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
    ("duplicate", "producer", point)  an impolite channel, not a crash: step the target
    ("replay", "consumer", point)     until it reaches `point` (as `fail` does); there
                              the producer is asked to write its last records again at
                              its next publish, the consumer to move its read position
                              back (`reference_impl.failpoints.act`), and it runs on
    ("powercut", mode, seed)  (with `powercuts=True`) every process crashes at once and
                              the work dir reverts to what a disk could hold after a
                              power failure (`harness.simulate.powercut`)

`target` is "producer" or "consumer"; with the in-memory backend a schedule
may also kill "store_server" (`("kill", "store_server")`): the volatile ledger
is lost, the connections of every live process die (StoreUnavailable on their
next call) and an empty server takes over; the run must then stop fail-closed
(or complete), never train twice. After the schedule the run is drained:
whatever is down is restarted and both sides are stepped without faults until
both are done, so the end-of-run properties (P2 above all) apply to every
schedule. What only the state between steps shows is checked at every step
(`observation.Invariants`: the consumed sidecar against the channel, P5's
whole marker); the end of the run reads the final state
(`harness.final_state.read_final_state`, the checkpoint's witness included)
and runs the same checkers as the process engine (`harness.checkers.check_all`),
which judge everything the history shows. The schedule's operations are in
`schedule`, the run's state in `state` (`RunState`), its result in `result`
(`SimResult`), what both engines share in `harness.run_plumbing`.

A crash in the simulation is what SIGKILL leaves: the crashed object's SQLite
connection is closed without a commit (a transaction that a `FailpointCrash`
interrupted inside `store.mid_ack_txn` is rolled back, as the OS would on
process death), its channel descriptor is closed, nothing else of it runs. One
difference from SIGKILL: cleanup code written as `except BaseException` in the
reference runs on the way out (the feature store unlinks its temp file), which
a killed process would leave for its successor to remove.

Every effective fault is also recorded as a typed fault (`Simulation.faults`,
`harness.faults`; how each operation maps to one: `harness.faults.simulated`).
"""


from __future__ import annotations

import os
import shutil
import tempfile
import traceback
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Sequence

from reference_impl import failpoints
from reference_impl.config import RunConfig
from reference_impl.failpoints import FailpointCrash
from reference_impl.process_loop import Exit, ProcessLoop

from ..coverage import coverage_of
from ..faults import PIPELINE, Failpoint, Kill, Pause, points_for
from ..faults.simulated import (
    IMPOLITE_RECORDS,
    IMPOLITE_TARGET,
    OP_KINDS,
    Op,
    check_ops,
    format_op,
    impolite_fault,
    normalize,
)
from ..owned_dirs import owned_dir_prefix
from ..run_plumbing import durable_store, roll_up, simulation_config
from .observation import EventLog, Invariants, SimHistory, Violation
from .result import SimResult
from .state import RunState, ServerStore, SimProc
from .workdirs import WORKDIR_PREFIX, default_workdir_root, sweep_dead_workdirs

__all__ = ["ARM_STEPS", "DEFAULT_WORKLOAD", "OP_KINDS", "PIPELINE", "STEP_DT", "EventLog", "Invariants", "Op",
           "ServerStore", "SimHistory", "SimResult", "Simulation", "Violation", "check_ops", "config_for",
           "default_workdir_root", "format_op", "normalize", "points_for"]

#: Virtual seconds per step call (the consumer's clock: starvation checkpoints).
STEP_DT = 0.05
#: How many steps a `fail` (`duplicate`, `replay`) operation may take to reach its point.
ARM_STEPS = 64

#: The simulation's default workload (scenario `[workload]` keys): small, so
#: that a schedule takes tens of milliseconds, with watermarks low enough that
#: backpressure engages in most schedules.
DEFAULT_WORKLOAD: Dict[str, Any] = {
    "samples": 24, "publish_batch": 4, "train_batch": 2, "accumulation": 2, "checkpoint_every": 1,
    "high_watermark": 8, "low_watermark": 4, "producer_delay_s": 0.0, "consumer_step_delay_s": 0.0,
    "starve_checkpoint_s": 0.5, "io_retries": 3,
}


def config_for(workdir: str, workload: Dict[str, Any], backend: str, seed: int = 0) -> RunConfig:
    """The run config for a simulated run (`run_plumbing.simulation_config`, defaults merged)."""
    w = dict(DEFAULT_WORKLOAD)
    w.update(workload or {})
    return simulation_config(workdir, w, backend, seed)


class Simulation:
    """Runs schedules of one workload on one backend; `run(ops)` -> SimResult.

    Not reentrant; one schedule at a time. A protocol variant, if any, must be
    applied by the caller (`reference_impl.variant.apply_variant`).
    """

    def __init__(self, workload: Optional[Dict[str, Any]] = None, backend: str = "sqlite", *,
                 workdir_root: Optional[str] = None, keep_workdir: bool = False, seed: int = 0,
                 check_end: bool = True, powercuts: bool = False) -> None:
        self.workload = dict(DEFAULT_WORKLOAD)
        self.workload.update(workload or {})
        self.backend = backend
        self.root = workdir_root or default_workdir_root()
        self.keep = keep_workdir
        self.seed = seed
        self.check_end = check_end
        config_for(os.path.join(self.root, "x"), self.workload, backend, seed)  # validate now
        sweep_dead_workdirs(self.root)
        self.drain_budget = 40 * int(self.workload["samples"]) + 400
        self.last_workdir: Optional[str] = None
        self.st: Optional[RunState] = None  # the schedule being run
        self.pc = None
        if powercuts:
            from .powercut import PowerCuts, check_backend

            check_backend(backend)
            self.pc = PowerCuts()  # UsageError without a compiler or without the preloaded tracer

    # -- public -------------------------------------------------------------
    def run(self, ops: Sequence[Op]) -> SimResult:
        ops = [tuple(o) for o in ops]
        # a kept dir is the user's to remove: its name carries no owner, so no sweep takes it
        prefix = "simkept-" if self.keep else owned_dir_prefix(WORKDIR_PREFIX)
        workdir = tempfile.mkdtemp(prefix=prefix, dir=self.root)
        self.last_workdir = workdir
        saved_hit = failpoints.hit
        failpoints.hit = self._hit
        try:
            res = self._run(ops, workdir)
            res.powerloss = list(self.pc.stats) if self.pc is not None else []
            res.coverage = coverage_of(self.st.log.events, {"powerloss": res.powerloss}, res.faults)
            return res
        finally:
            failpoints.hit = saved_hit
            self._close_all()
            if self.pc is not None:
                self.pc.stop()
            if not self.keep:
                shutil.rmtree(workdir, ignore_errors=True)

    # -- setup ----------------------------------------------------------------
    def _run(self, ops: List[Op], workdir: str) -> SimResult:
        os.makedirs(os.path.join(workdir, "history"))
        if self.pc is not None:  # traced from before the first file of the run is made
            self.pc.start(workdir, exclude=[os.path.join(workdir, "history")])
        cfg = config_for(workdir, self.workload, self.backend, self.seed)
        shared_store = None
        if self.backend == "inmemory":
            from reference_impl.stores import InMemoryMetadataStore

            shared_store = ServerStore(InMemoryMetadataStore())
        observer = self._observer_store(cfg, shared_store)
        inv = Invariants(cfg, observer)
        log = EventLog(inv.on_event)
        self.st = RunState(cfg=cfg, shared_store=shared_store, observer=observer, inv=inv, log=log,
                           sup=log.writer("supervisor", 0), procs={t: SimProc(t) for t in PIPELINE})
        outcome = "completed"
        try:
            for i, op in enumerate(ops):
                self.st.inv.op_index = i
                self._apply(op)
                if self.st.error:
                    break
            self.st.inv.op_index = None
            if not self.st.error:
                outcome = self._drain()
        except Exception:  # a bug in the engine itself: never a silent pass
            self.st.error = traceback.format_exc()
        if self.st.error:
            outcome = "error"
        properties: Dict[str, Dict[str, Any]] = {}
        violations = list(self.st.inv.violations)
        if self.check_end and outcome != "error":
            properties, end_violations = self._check_end(outcome)
            violations += end_violations
        if outcome == "error":
            violations.append(Violation("error", "exception", (self.st.error or "").strip().splitlines()[-1]
                                        if self.st.error else "error"))
        st = self.st
        return SimResult(ops=ops, outcome=outcome, violations=violations, faults=st.faults, trace=st.trace,
                         steps=st.steps, events=len(st.log.events), error=st.error, properties=properties,
                         workload=dict(self.workload))

    def _observer_store(self, cfg: RunConfig, shared_store):
        """The engine's own store connection, for the marker checks (None: no shared store)."""
        if self.backend == "inmemory":
            return shared_store
        if self.backend in ("private", "noop"):
            return None
        from reference_impl.stores import open_store

        return open_store(self.backend, cfg.workdir)

    def _open_store(self):
        if self.st.shared_store is not None:
            return self.st.shared_store
        from reference_impl.stores import open_store

        return open_store(self.backend, self.st.cfg.workdir)

    @property
    def durable_store(self) -> bool:
        return durable_store(self.backend, self.st.server_inc)

    # -- failpoints ---------------------------------------------------------
    def _hit(self, name: str) -> None:
        """Installed as `reference_impl.failpoints.hit` while a schedule runs."""
        p = self.st.current
        if p is None:
            return
        n = p.counts[name] = p.counts.get(name, 0) + 1
        p.last_hit = (name, n, len(self.st.log.events))
        if p.h is not None:
            p.h.reached[name] = p.h.reached.get(name, 0) + 1
        armed = self.st.armed
        if armed is not None and armed[0] == p.name and armed[1] == name:
            self.st.armed = None
            action = armed[2]
            if action != "crash":
                # Impolite: the component takes the request and acts at its next safe step; no crash.
                if failpoints.act(action, IMPOLITE_RECORDS[action]):
                    self.st.fired = impolite_fault(action, p.name, name, n, p.inc)
                    if p.h is not None:
                        p.h.emit("failpoint", point=name, action=action)
                return
            self.st.fired = Failpoint(target=p.name, point=name, action="crash", hit=n, incarnation=p.inc)
            if p.h is not None:
                p.h.emit("failpoint", point=name, action="crash")
            raise FailpointCrash(name)

    # -- process lifecycle ----------------------------------------------------
    def _spawn(self, p: SimProc) -> None:
        """Start `p` (next incarnation) under the process loop the real mains use."""
        from reference_impl.consumer import Consumer
        from reference_impl.producer import Producer

        p.inc += 1
        p.counts = {}
        p.loop = None
        p.tail_hit = None
        self.st.sup.emit("spawn", target=p.name, target_inc=p.inc, pid=0, failpoints=[])
        h = p.h = self.st.log.writer(p.name, p.inc)
        if p.name == "producer":
            h.emit("start", pid=0, resume=p.inc > 0, backend=self.backend)
        else:
            h.emit("start", pid=0, resume=p.inc > 0, device="cpu", backend=self.backend)

        def make():
            p.store = self._open_store()
            if p.name == "producer":
                return Producer(self.st.cfg, incarnation=p.inc, history=h, store=p.store, sleep=_no_sleep)
            return Consumer(self.st.cfg, incarnation=p.inc, history=h, store=p.store, clock=self._clock)

        p.loop = ProcessLoop(p.name, self.st.cfg, h, say=_quiet)
        with self._running(p):
            ended = p.loop.start(make)
            if ended is not None:
                self._ended(p, ended)
            else:
                p.status = "running"

    @contextmanager
    def _running(self, p: SimProc) -> Iterator[None]:
        """`p` runs (failpoint hits are its own) for one call, one tick of virtual time: a
        FailpointCrash drops it (a SIGKILL there), any other exception is an error."""
        self.st.current = p
        try:
            yield
        except FailpointCrash:
            self._drop(p, killed=True)
        except Exception:
            self._exception(p)
        finally:
            self.st.current = None
            self.st.vtime += STEP_DT

    def _clock(self) -> float:
        return self.st.vtime

    def _step(self, p: SimProc) -> str:
        """One step of `p` (restarting it first if it is down); returns the step's status or p.status."""
        if p.status == "down":
            self._spawn(p)
            if not self.st.error:
                self.st.inv.after_step(len(self.st.log.events))
            return "progress" if p.status == "running" else p.status
        if p.status != "running":
            return p.status
        ended = p.loop.check_peer()
        if ended is not None:
            self._ended(p, ended)
            return p.status
        self.st.steps += 1
        p.last_hit = p.tail_hit = None
        r = "crashed"
        with self._running(p):
            r = p.loop.advance()
            if isinstance(r, Exit):
                self._ended(p, r)
                r = p.status
            elif p.last_hit is not None and p.last_hit[2] == len(self.st.log.events):
                p.tail_hit = p.last_hit[:2]  # nothing was recorded after the step's last failpoint
        if not self.st.error:
            self.st.inv.after_step(len(self.st.log.events))
        return r if p.status == "running" or r == "done" else p.status

    def _ended(self, p: SimProc, ended: Exit) -> None:
        """The process loop ended (completed, failed, fail-closed, peer failed): the process exits."""
        self._drop(p, killed=False, status=ended.status, code=int(ended.code))

    def _release(self, p: SimProc) -> None:
        """Drop `p`'s object and close what it held (its channel, its own store connection)."""
        obj, store = p.obj, p.store
        p.loop = None
        p.store = None
        if obj is not None and p.name == "producer":
            try:
                obj.channel.close()
            except Exception:
                pass
        if store is not None and store is not self.st.shared_store:
            try:
                store.close()  # SQLite: closes without commit; an open transaction is rolled back
            except Exception:
                pass

    def _drop(self, p: SimProc, *, killed: bool, status: str = "down", code: int = -9) -> None:
        """The process ends: its object and memory go; files and store rows stay."""
        self._release(p)
        p.status = status
        self.st.sup.emit("exited", target=p.name, target_inc=p.inc, code=code)

    def _exception(self, p: SimProc) -> None:
        tb = traceback.format_exc()
        self.st.error = f"{p.name}#{p.inc} raised:\n{tb}"
        self._drop(p, killed=False, status="error", code=1)

    def _close_all(self) -> None:
        st = self.st
        if st is None:
            return
        for p in st.procs.values():
            if p.obj is not None or p.store is not None:
                self._release(p)
        if st.observer is not None and st.observer is not st.shared_store:
            try:
                st.observer.close()
            except Exception:
                pass
        st.observer = None

    # -- progress (for the process-engine translation) -----------------------
    def _progress(self, target: str) -> Dict[str, int]:
        if target == "producer":
            return {"at_published": self.st.inv.update_published()}
        return {"at_consumed": self.st.inv.read_consumed()}

    def _phase(self, p: SimProc) -> str:
        return getattr(p.obj, "phase", "?") if p.obj is not None else "-"

    # -- operations -----------------------------------------------------------
    def _apply(self, op: Op) -> None:
        kind, target = op[0], op[1]
        if kind == "powercut":
            if self.pc is None:
                raise ValueError(f"{op!r}: this Simulation was made without powercuts=True")
            self.pc.apply(self, op)
            return
        if target == "store_server":
            if kind == "kill":
                self._kill_server()
            return
        p = self.st.procs[target]
        if kind == "step":
            for _ in range(op[2]):
                if p.terminal or self.st.error:
                    break
                self._step(p)
        elif kind == "kill":
            self._kill(p)
        elif kind == "fail":
            self._fail(p, op[2])
        elif kind in IMPOLITE_TARGET:
            if target != IMPOLITE_TARGET[kind]:
                raise ValueError(f"{op!r}: a {kind} targets {IMPOLITE_TARGET[kind]}")
            self._fail(p, op[2], kind)
        elif kind == "pause":
            self._pause(p, op[2])
        else:
            raise ValueError(f"unknown op {op!r}")

    def _other(self, p: SimProc) -> SimProc:
        return self.st.procs["consumer" if p.name == "producer" else "producer"]

    def _kill(self, p: SimProc) -> None:
        """A crash between two steps: a `Kill` at the progress it happened (or, right after a
        failpoint with nothing recorded since, that failpoint's crash, which replays exactly)."""
        if p.status != "running":
            return
        target = p.name
        trig = self._progress(target)
        phase = self._phase(p)
        self.st.sup.emit("kill", target=target, target_inc=p.inc, signal=9, fault=len(self.st.faults))
        where = (f"published {self.st.inv.published}, consumed {self.st.inv.read_consumed()}")
        if p.tail_hit is not None:
            point, hit = p.tail_hit
            self.st.faults.append(Failpoint(target=target, point=point, action="crash", hit=hit, incarnation=p.inc))
            self.st.trace.append(f"kill {target}#{p.inc} between steps, right after {point} (hit {hit}); "
                                 f"next phase {phase}; {where}")
        else:
            self.st.faults.append(Kill(target=target, **trig))
            self.st.trace.append(f"kill {target}#{p.inc} between steps (next phase {phase}; "
                                 f"{_fmt_trig(trig)}; {where})")
        self._drop(p, killed=True)

    def _fail(self, p: SimProc, point: str, action: str = "crash") -> None:
        """A crash inside an operation (or, with action `duplicate` or `replay`, an impolite act
        there): run until the target reaches `point` (the target steps; while it idles, waiting
        for the other side, the other side steps too)."""
        if p.terminal and p.status != "down":
            return
        other = self._other(p)
        self.st.armed = (p.name, point, action)
        self.st.fired = None
        try:
            for _ in range(ARM_STEPS):
                if self.st.error:
                    break
                r = self._step(p)
                if self.st.armed is None or r == "done" or p.terminal:  # reached (or never will be)
                    break
                if r == "idle":
                    if other.terminal:
                        break
                    self._step(other)
        finally:
            self.st.armed = None
        if self.st.fired is not None:
            f, self.st.fired = self.st.fired, None
            self.st.faults.append(f)
            inv = self.st.inv
            n = "" if action == "crash" else f"{f.records} records; "
            self.st.trace.append(f"{action} {p.name}#{f.incarnation} at {f.point} ({n}hit {f.hit}; "
                                 f"published {inv.update_published()}, consumed {inv.read_consumed()})")

    def _pause(self, p: SimProc, steps: int) -> None:
        """The target is frozen (or, when down, not restarted) while the other side takes `steps` steps."""
        if p.terminal and p.status != "down":
            return
        running = p.status == "running"
        other = self._other(p)
        trig = self._progress(p.name)
        if running:
            self.st.sup.emit("pause", target=p.name, target_inc=p.inc, fault=len(self.st.faults))
        n = 0
        for _ in range(steps):
            if other.terminal or self.st.error:
                break
            self._step(other)
            n += 1
        if running:
            self.st.sup.emit("cont", target=p.name, target_inc=p.inc, fault=len(self.st.faults))
        if n and running:
            self.st.faults.append(Pause(target=p.name, **trig, duration_s=round(max(0.05, 0.01 * n), 3)))
            self.st.trace.append(f"pause {p.name}#{p.inc} for {n} steps of {other.name} ({_fmt_trig(trig)})")

    def _kill_server(self) -> None:
        """The store server dies (the volatile ledger with it) and restarts empty."""
        if self.st.shared_store is None or all(p.terminal and p.status != "down" for p in self.st.procs.values()):
            return
        from reference_impl.stores import InMemoryMetadataStore

        trig = {"at_consumed": self.st.inv.read_consumed()}
        self.st.sup.emit("kill", target="store_server", target_inc=self.st.server_inc, signal=9,
                         fault=len(self.st.faults))
        self.st.sup.emit("exited", target="store_server", target_inc=self.st.server_inc, code=-9)
        self.st.shared_store.dead = True
        self.st.server_inc += 1
        self.st.shared_store = ServerStore(InMemoryMetadataStore())
        self.st.sup.emit("spawn", target="store_server", target_inc=self.st.server_inc, pid=0, failpoints=[])
        self.st.inv.ledger_lost(self.st.shared_store)
        self.st.observer = self.st.shared_store
        self.st.faults.append(Kill(target="store_server", **trig))
        self.st.trace.append(f"kill store_server#{self.st.server_inc - 1}: ledger lost, an empty server restarts "
                          f"({_fmt_trig(trig)}; published {self.st.inv.published})")

    def _drain(self) -> str:
        """Restart what is down and step both without faults until both end."""
        order = [self.st.procs["producer"], self.st.procs["consumer"]]
        budget = self.drain_budget
        while budget > 0 and not self.st.error:
            live = [p for p in order if not p.terminal]
            if not live:
                break
            for p in live:
                self._step(p)
                budget -= 1
        if self.st.error:
            return "error"
        st = {p.name: p.status for p in order}
        outcome = roll_up(st.values())
        if outcome is not None:
            return outcome
        state = {"status": st, "published": self.st.inv.update_published(), "consumed": self.st.inv.read_consumed()}
        for p in order:
            if p.obj is not None:
                state[p.name + "_phase"] = self._phase(p)
        self.st.sup.emit("timeout", bound_s=float(self.drain_budget), state=state)
        return "timeout"

    # -- end of run -------------------------------------------------------------
    def _check_end(self, outcome: str):
        from harness.checkers import check_all
        from harness.final_state import read_final_state

        self._close_all()
        final = read_final_state(self.st.cfg, outcome=outcome, durable_store=self.durable_store, bound_s=60.0)
        final["store_server_restarts"] = self.st.server_inc
        if self.st.shared_store is not None:  # the current server incarnation's ledger
            m = self.st.shared_store.durable_marker()
            final["marker"] = {"acked": sorted(m.get("acked") or ()), "global_step": m.get("global_step"),
                               "optimizer_durable": m.get("optimizer_durable")}
            final["committed_ids"] = list(self.st.shared_store.all_committed_ids())
        results = check_all(self.st.log.events, final)
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
