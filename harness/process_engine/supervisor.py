"""The supervisor: spawns, signals, restarts and reaps the run's processes.

Every child gets its own process group (so a signal reaches it and anything
it starts) and a parent-death signal (`PR_SET_PDEATHSIG` = SIGKILL), so no
child outlives the harness, even when the harness itself is SIGKILLed.
Every wait has a timeout. Each action is logged as a `supervisor` event.

Launchers: `spawn` starts each child as `python -m MODULE` (Popen); `zygote`
forks the producer and the consumer from a fork server that has torch and
reference_impl imported already (`harness.process_engine.zygote`), so a restart takes tens of
milliseconds instead of seconds. Other modules (the store server) are always
spawned. The default comes from the environment variable `DFH_LAUNCHER`
(`zygote`, `spawn`, or unset: the zygote, falling back to spawn with a warning
if it cannot start). Both give the same `Proc` behaviour: pid, process group,
exit status (negative signal number when killed), signals and logs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional

from reference_impl.failpoints import ENV_VAR
from reference_impl.history import HistoryWriter
from reference_impl.procutil import pid_stopped, set_parent_death_signal

LAUNCHER_ENV = "DFH_LAUNCHER"
LAUNCHERS = ("zygote", "spawn")
_zygote_warned = False


def _warn_once(msg: str) -> None:
    global _zygote_warned
    if not _zygote_warned:
        _zygote_warned = True
        print(f"harness: {msg}", file=sys.stderr)


def child_preexec() -> None:
    os.setsid()
    set_parent_death_signal()


class Proc:
    """One process incarnation; `popen` is a subprocess.Popen or a zygote.ZygoteChild."""

    def __init__(self, name: str, inc: int, popen, log_path: str, launcher: str = "spawn") -> None:
        self.name = name
        self.inc = inc
        self.popen = popen
        self.log_path = log_path
        self.launcher = launcher
        self.started = time.monotonic()
        self.code: Optional[int] = None
        self.reported = False  # its end was reported by Supervisor.reap (whoever polled it first)
        self.last_signal_error: Optional[str] = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> Optional[int]:
        if self.code is None:
            self.code = self.popen.poll()
        return self.code

    def is_stopped(self) -> bool:
        return pid_stopped(self.pid)

    def signal_group(self, sig: int) -> bool:
        """Signal the process group; False when no such group exists (ESRCH) or it is not ours (EPERM).

        The caller decides what a failed delivery means (a fault retried or
        recorded as missed, a cleanup that had nothing left to stop).
        """
        try:
            os.killpg(self.pid, sig)
            return True
        except ProcessLookupError:
            self.last_signal_error = f"no process group {self.pid} (ESRCH)"
            return False
        except PermissionError:
            self.last_signal_error = f"process group {self.pid} not ours (EPERM)"
            return False

    def stderr_tail(self, n: int = 2000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, 2)
                size = f.tell()
                f.seek(max(0, size - n))
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""


class Supervisor:
    def __init__(self, workdir: str, *, python: str = sys.executable, extra_env: Optional[Dict[str, str]] = None,
                 launcher: Optional[str] = None):
        launcher = launcher or os.environ.get(LAUNCHER_ENV) or "auto"
        if launcher not in LAUNCHERS + ("auto",):
            raise ValueError(f"launcher {launcher!r}: allowed {', '.join(LAUNCHERS)} (env {LAUNCHER_ENV})")
        self.launcher = launcher
        self.workdir = workdir
        self.python = python
        self.extra_env = dict(extra_env or {})
        self.logs = os.path.join(workdir, "logs")
        os.makedirs(self.logs, exist_ok=True)
        self.h = HistoryWriter(os.path.join(workdir, "history", "supervisor.jsonl"), "supervisor", 0)
        self.procs: Dict[str, Proc] = {}
        self.incarnations: Dict[str, int] = {}
        self.all_procs: List[Proc] = []

    def spawn(self, name: str, module: str, args: List[str], *, failpoints: Optional[list] = None,
              env: Optional[Dict[str, str]] = None) -> Proc:
        inc = self.incarnations.get(name, -1) + 1
        self.incarnations[name] = inc
        e = dict(os.environ)
        e.update(self.extra_env)
        e.update(env or {})
        e["DFH_INCARNATION"] = str(inc)
        e["PYTHONUNBUFFERED"] = "1"
        if failpoints:
            import json

            e[ENV_VAR] = json.dumps(failpoints)
        else:
            e.pop(ENV_VAR, None)
        log_path = os.path.join(self.logs, f"{name}.{inc}.log")
        argv = [*args, "--incarnation", str(inc)]
        zygote = self._zygote(module)
        with open(log_path, "wb") as log:
            popen = None
            if zygote is not None:
                try:
                    popen = zygote.spawn(module, argv, env=e, log_path=log_path)
                except Exception as exc:  # the zygote died meanwhile: spawn this one
                    if self.launcher == "zygote":
                        raise
                    _warn_once(f"zygote spawn failed ({exc}); spawning {module} instead")
                    zygote = None
            if popen is None:
                popen = subprocess.Popen([self.python, "-m", module, *argv],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         env=e, preexec_fn=child_preexec, close_fds=True)
        p = Proc(name, inc, popen, log_path, "zygote" if zygote is not None else "spawn")
        self.procs[name] = p
        self.all_procs.append(p)
        self.h.emit("spawn", target=name, target_inc=inc, pid=p.pid, failpoints=failpoints or [])
        return p

    def _zygote(self, module: str):
        """The zygote client to launch `module` with, or None to spawn it."""
        from . import zygote

        if self.launcher == "spawn" or module not in zygote.ZYGOTE_MODULES:
            return None
        try:
            # A traced run (power loss) forks from a zygote started with the tracer preloaded.
            client = zygote.get_client(self.python, self.extra_env.get("LD_PRELOAD", ""))
            return client if module in client.modules else None
        except Exception as exc:
            if self.launcher == "zygote":
                raise
            _warn_once(f"zygote launcher unavailable ({exc}); spawning processes instead")
            self.launcher = "spawn"
            return None

    def kill(self, name: str, fault: Optional[int] = None, sig: int = signal.SIGKILL) -> bool:
        """Signal `name`'s group; True when the signal was delivered (not yet that it landed)."""
        p = self.procs.get(name)
        if p is None or p.poll() is not None:
            return False
        if not p.signal_group(sig):
            self.h.emit("signal_failed", target=name, target_inc=p.inc, signal=int(sig), fault=fault,
                        error=p.last_signal_error)
            return False
        self.h.emit("kill", target=name, target_inc=p.inc, signal=int(sig), fault=fault)
        return True

    def pause(self, name: str, fault: Optional[int] = None) -> bool:
        p = self.procs.get(name)
        if p is None or p.poll() is not None:
            return False
        if not p.signal_group(signal.SIGSTOP):
            self.h.emit("signal_failed", target=name, target_inc=p.inc, signal=int(signal.SIGSTOP), fault=fault,
                        error=p.last_signal_error)
            return False
        self.h.emit("pause", target=name, target_inc=p.inc, fault=fault)
        return True

    def cont(self, name: str, fault: Optional[int] = None) -> bool:
        p = self.procs.get(name)
        if p is None or p.poll() is not None:
            return False
        ok = p.signal_group(signal.SIGCONT)
        self.h.emit("cont", target=name, target_inc=p.inc, fault=fault,
                    **({} if ok else {"error": p.last_signal_error}))
        return ok

    def idle(self, timeout_s: float) -> None:
        """Wait up to `timeout_s`; back as soon as the zygote reports (a child's exit above all), so
        a loop that reaps after each wait restarts a killed process without a polling delay."""
        client = next((p.popen.client for p in self.procs.values()
                       if p.launcher == "zygote" and p.code is None and not p.popen.client.closed), None)
        if client is None:
            time.sleep(timeout_s)
        else:
            client.pump(timeout_s)

    def reap(self) -> List[Proc]:
        """Processes that ended since the last call (each reported once)."""
        ended = []
        for p in list(self.procs.values()):
            if not p.reported and p.poll() is not None:
                p.reported = True
                self.h.emit("exited", target=p.name, target_inc=p.inc, code=p.code)
                ended.append(p)
        return ended

    def shutdown(self, grace_s: float = 2.0) -> None:
        """Stop everything still running: SIGCONT + SIGTERM, then SIGKILL; reap all."""
        live = [p for p in self.all_procs if p.poll() is None]
        for p in live:
            p.signal_group(signal.SIGCONT)
            p.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for p in live:
            try:
                p.popen.wait(timeout=max(0.01, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.signal_group(signal.SIGKILL)
                try:
                    p.popen.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
            p.poll()
        # Anything a child left in its group dies with it.
        for p in self.all_procs:
            p.signal_group(signal.SIGKILL)
        self.h.close()
