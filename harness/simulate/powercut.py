"""Power cuts in the simulation engine: the same journal, the same rebuild.

The simulated processes are objects in ONE process, so that process is the one
traced: the durability tracer (`harness.powerloss`, an LD_PRELOAD library) must
be loaded when it starts. `python -m harness simulate --powercuts` checks that
and, if not, runs itself again as a child with the library preloaded
(`run_preloaded`). Inside, tracing is switched per schedule: the work dir (the
traced root) changes with every schedule, so `PowerCuts.start` arms it
(`harness.powerloss.arm`: baseline + empty journal next to the work dir), puts
the tracer's variables in `os.environ` and makes the loaded tracer re-read them
(`reconfigure_in_process`).

The schedule operation `("powercut", mode, seed)` (mode "clean" or "torn"), or
`("powercut", mode, seed, target, point)`: the power fails while `target` is
inside an operation, at failpoint `point` (reached as a `fail` operation
reaches it; if it is not reached, nothing happens):

1. every live process crashes at once: its object is dropped (as a kill does),
   its store connection and channel descriptor are closed;
2. the engine's own observer connection is closed too; no SQLite connection
   checkpoints on the way out, as after a SIGKILL: the observer (holding the
   shared lock every WAL connection holds) is the last of the pipeline's
   connections to go, and before it goes a read-only connection pins the
   database, so the observer is not the last either; a read-only connection
   never checkpoints (so the WAL is neither copied into the database, fsynced,
   nor deleted);
3. tracing is switched off, the work dir is rebuilt by `powercut(...)` (clean:
   what was fsynced; torn: plus a seeded prefix of the unsynced writes, cut at a
   sector), tracing is armed again on the rebuilt dir;
4. the observer reopens; the observed channel is compared with what the
   observation had already counted, and the count restarts from what is there.
   Complete records that no fsync covered (a producer crashed between its
   append and its fsync) may vanish: their publish never returned, and what
   depends on them is judged by the other checks (the sidecar against the
   channel at the next step, P2 at the end). Records that an fsync had covered
   and that vanish anyway (the channel's directory entry was not durable) are a
   durability violation: P6 `channel_records_lost`;
5. the processes stay down: the next `step` (or the drain) restarts them.

Between steps a correct pipeline has fsynced everything the protocol relies on,
so whatever the rebuild takes away and a checker then misses is a durability
bug (P2, P3, P5, P6 or a fail-closed outcome the run did not allow).

As a process-engine fault (`Simulation.faults`): a `Powercut` with the
trigger a kill uses (the consumer's `at_consumed` while it runs, else the
producer's `at_published`), or at a failpoint a `Failpoint` with action
`powercut` (`target`, `point`, `hit`, `incarnation`); the mode becomes the
scenario's `faults.powercut_mode` (`harness.faults.simulated`).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from typing import Any, Dict, List, Optional, Sequence

from harness.exit_codes import HarnessError, UsageError
from harness.faults import POWERCUT_MODES, Powercut

MODES = POWERCUT_MODES
#: Set in the child that `run_preloaded` starts: it must find the tracer loaded.
ENV_PRELOADED = "DFH_SIM_PRELOADED"
BACKENDS = ("sqlite",)


def tracer_loaded() -> bool:
    """Whether the tracer library is loaded in this process (it exports dfh_tracer_reconfigure)."""
    import ctypes

    try:
        ctypes.CDLL(None).dfh_tracer_reconfigure  # noqa: B018 - a lookup that raises if absent
    except AttributeError:
        return False
    return True


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise UsageError(f"--powercuts: the simulation rebuilds the work dir of a file-backed store; backend "
                         f"{backend!r} is not one of {', '.join(BACKENDS)} (the in-memory store loses its ledger "
                         f"on any server kill: use --store-kills for that)")


def run_preloaded(argv: Sequence[str]) -> Optional[int]:
    """None if this process is already traced (go on); else run `python -m harness simulate argv`
    as a child with the tracer preloaded and return its exit code. UsageError without a compiler."""
    if tracer_loaded():
        return None
    from harness.powerloss import preload_with_tracer, tracer_library

    lib = tracer_library()  # UsageError (exit 2) where no compiler can build it
    if os.environ.get(ENV_PRELOADED):
        raise HarnessError(f"the simulation was restarted with LD_PRELOAD={lib}, and the tracer is still not "
                           f"loaded (LD_PRELOAD={os.environ.get('LD_PRELOAD', '')!r}): cannot trace power cuts")
    env = dict(os.environ, LD_PRELOAD=preload_with_tracer())
    env[ENV_PRELOADED] = "1"
    try:
        return subprocess.run([sys.executable, "-m", "harness", "simulate", *argv], env=env, check=False).returncode
    except KeyboardInterrupt:
        return 130


class PowerCuts:
    """Tracing of one Simulation's work dirs, and the power-cut operation."""

    def __init__(self) -> None:
        from harness.powerloss import tracer_library

        tracer_library()  # UsageError without a compiler
        if not tracer_loaded():
            raise UsageError("power cuts in the simulation need the durability tracer preloaded into this "
                             "process (run `python -m harness simulate --powercuts`, which restarts itself with "
                             "LD_PRELOAD set, or set LD_PRELOAD=" + tracer_library() + ")")
        self.workdir: Optional[str] = None
        self.journal: Optional[str] = None
        self.exclude: List[str] = []
        self.stats: List[Dict[str, Any]] = []  # one PowercutStats.as_dict() per cut of the current run

    # -- tracing on and off --------------------------------------------------------
    def start(self, workdir: str, exclude: Sequence[str] = ()) -> None:
        """Arm tracing of a new run's work dir (before any simulated process touches it)."""
        self.workdir = workdir
        self.journal = workdir.rstrip("/") + ".pl-journal"  # a sibling: outside the traced root
        self.exclude = list(exclude)
        self.stats = []
        self._arm()

    def _arm(self) -> None:
        from harness.powerloss import arm
        from harness.powerloss.build import reconfigure_in_process

        env = arm(self.workdir, self.journal, exclude=self.exclude)
        os.environ.update(env)
        if not reconfigure_in_process():
            raise HarnessError(f"the durability tracer did not start journaling {self.workdir} into "
                               f"{self.journal} (see its message on stderr)")

    def _off(self) -> None:
        from harness.powerloss.build import ENV_EXCLUDE, ENV_JOURNAL, ENV_ROOT, reconfigure_in_process

        for k in (ENV_ROOT, ENV_JOURNAL, ENV_EXCLUDE):
            os.environ.pop(k, None)
        reconfigure_in_process()

    def stop(self) -> None:
        """Tracing off; the journal and its baseline removed."""
        self._off()
        if self.journal:
            for p in (self.journal, self.journal + ".base", self.journal + ".base.tmp"):
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass
        self.workdir = self.journal = None

    # -- the operation ------------------------------------------------------------------
    def apply(self, sim, op) -> None:
        """`("powercut", mode, seed)` on the engine `sim` (see the module docstring)."""
        st = sim.st
        mode, seed = op[1], int(op[2])
        procs = [st.procs["producer"], st.procs["consumer"]]
        if all(p.terminal and p.status != "down" for p in procs):
            return  # the run is over: nothing runs to lose power
        at = None
        if len(op) == 5:  # inside an operation: reach the point as a `fail` does
            n = len(st.faults)
            sim._apply(("fail", op[3], op[4]))
            if st.error or len(st.faults) == n or st.faults[-1].kind != "failpoint":
                return  # not reached: no fault
            at = st.faults.pop()
            st.trace.pop()
        self.cut(sim, mode, seed, at)

    def cut(self, sim, mode: str, seed: int, at=None, cause: Optional[str] = None) -> None:
        """Cut the power now (steps 1-5 of the module docstring). `at`: the crash `Failpoint` of the
        process that was inside an operation at the cut (it has died there already), or None.
        `cause` ("failpoint POINT" where that process's history shows the cut as its failpoint
        event, as the process engine's does) goes into the supervisor's `powercut` event."""
        from harness.powerloss import powercut

        st = sim.st
        procs = [st.procs["producer"], st.procs["consumer"]]
        running = [p for p in procs if p.status == "running"]
        if at is not None:
            target = at.target
            trig = {"point": at.point, "hit": at.hit, "incarnation": at.incarnation}
        else:
            target = "consumer" if st.procs["consumer"].status == "running" or not running else "producer"
            trig = sim._progress(target)
        fault = len(st.faults)
        st.sup.emit("powercut", mode=mode, seed=seed, targets=[p.name for p in running], fault=fault,
                    **({"cause": cause} if cause else {}))
        for p in running:
            st.sup.emit("kill", target=p.name, target_inc=p.inc, signal=9, fault=fault)
            sim._drop(p, killed=True)
        self._close_observer(st)
        self._off()
        synced = self._synced_channel_bytes(os.path.relpath(st.inv.progress.reader.path, self.workdir))
        stats = powercut(self.workdir, self.journal, mode=mode, seed=seed)
        self._arm()
        st.observer = sim._observer_store(st.cfg, None)
        st.inv.store = st.observer
        st.inv.marker_dirty = True
        st.inv.power_lost()
        lost = self._resync_channel(st.inv, synced)
        d = stats.as_dict()
        d["channel_bytes_lost"] = lost
        self.stats.append(d)
        st.faults.append(at.replace(action="powercut") if at is not None else Powercut(**trig))
        who = ", ".join([f"{p.name}#{p.inc}" for p in running] +
                        ([f"{target}#{at.incarnation} inside an operation"] if at else [])) or "no process running"
        st.trace.append(f"power cut ({mode}, seed {seed}; {', '.join(f'{k}={v}' for k, v in trig.items())}): "
                        f"killed {who}; {stats.summary()}"
                        + (f"; the channel lost {lost} bytes of complete records" if lost else ""))

    def _close_observer(self, st) -> None:
        """Close the engine's observer connection without a checkpoint (see rule 2)."""
        obs = st.observer
        if obs is None:
            return
        st.observer = None
        st.inv.store = None
        path = getattr(obs, "path", None)
        pin = None
        if path and os.path.exists(path):
            try:
                pin = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
                pin.execute("SELECT count(*) FROM sqlite_master").fetchall()
            except sqlite3.Error:
                if pin is not None:
                    pin.close()
                pin = None
        try:
            obs.close()
        finally:
            if pin is not None:
                pin.close()

    def _synced_channel_bytes(self, rel: str) -> int:
        """Bytes of complete channel records covered by an fsync before the cut (whether or
        not the file's directory entry was durable): the model's content of the live file."""
        from harness.powerloss import durable_state, load_baseline, read_journal
        from harness.powerloss.rebuild import materialize

        _, vol, _, _ = durable_state(read_journal(self.journal), load_baseline(self.journal), "clean")
        node = vol.get(rel)
        if node is None or node.kind != "f":
            return 0
        data = materialize(node)
        return data.rfind(b"\n") + 1

    @staticmethod
    def _resync_channel(inv, synced: int) -> int:
        """Compare the observed channel with the rebuilt one and recount; report fsynced records lost."""
        reader = inv.progress.reader
        try:
            with open(reader.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            data = b""
        end = data.rfind(b"\n") + 1
        if end >= reader.offset:
            return 0
        lost = reader.offset - end
        n = data.count(b"\n", 0, end)
        if end < min(synced, reader.offset):
            gone = "the file itself is gone" if not os.path.exists(reader.path) else "cut back"
            inv.add("P6", "channel_records_lost", f"a power cut took channel records an fsync had made durable: "
                    f"{min(synced, reader.offset)} bytes of complete records were fsynced, {end} bytes ({n} "
                    f"records) are left ({gone}: the channel's directory entry was not durable)")
        reader.offset, reader.position = end, n
        inv.progress.published = n
        return lost
