"""A fork server ("zygote"): torch and reference_impl imported once, children forked on request.

Starting `python -m reference_impl.consumer` costs an interpreter start plus the
torch import (1.5-5 s here, CPU-bound). A crash harness restarts processes all
the time, so the supervisor asks a zygote instead: one long-lived process that
has already imported torch and the reference implementation, and forks a child
per request. The child then does what `python -m MODULE ARGS...` would do from
`main(argv)` on: the environment, working directory, `sys.argv`, `sys.path`
(its own PYTHONPATH first), unbuffered stdout/stderr to the log file, stdin
from /dev/null, and `sys.exit(main(argv))`'s exit status.

Process tree and cleanup:

    harness --(PR_SET_PDEATHSIG=SIGKILL)-- zygote --(PR_SET_PDEATHSIG=SIGKILL)-- child (own session)

The zygote is started from a keeper thread that lives as long as the harness
process (the parent-death signal follows the thread that forked), so when the
harness dies, even by SIGKILL, the zygote is killed, and with it every child.
Each child calls `setsid()`, so the supervisor signals it by process group as
before (SIGKILL, SIGSTOP, SIGCONT).

Exit statuses: only the zygote can wait for its children. It reaps them on
SIGCHLD and sends `{"ev": "exit", "pid": P, "code": C}` over a socket pair,
with C exactly Popen's returncode (`-signal` when killed, the exit status
otherwise). `ZygoteChild` is the Popen-like object (pid, poll, wait, returncode,
send_signal) that the supervisor keeps.

Forking a process that has imported torch: the zygote sets one intra-op
thread before anything runs, never touches CUDA, and starts no threads of its
own, so a child starts with a single thread and no held locks.

Protocol (JSON lines over an AF_UNIX socket pair): requests
`{"op": "spawn", "id", "module", "args", "env", "log", "cwd"}`; messages
`{"ev": "ready", "pid"}`, `{"ev": "spawned", "id", "pid"}`,
`{"ev": "error", "id", "error"}`, `{"ev": "exit", "pid", "code", "cpu_s", "maxrss_kb"}`.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional

from reference_impl.procutil import set_parent_death_signal

from .zygote_server import _REPO_ROOT, CMDLINE_ROOM, HUGE_PAGE_TUNABLE, PRELOAD, START_TIMEOUT_S, ZYGOTE_MODULES  # noqa: F401


class ZygoteError(RuntimeError):
    pass


class ZygoteChild:
    """A zygote-forked process, with the part of Popen's interface the supervisor uses."""

    def __init__(self, client: "ZygoteClient", pid: int, args: List[str]) -> None:
        self.client = client
        self.pid = pid
        self.args = args
        self.returncode: Optional[int] = None
        self.usage: Optional[Dict[str, Any]] = None  # CPU seconds and peak RSS, once reaped

    def poll(self) -> Optional[int]:
        if self.returncode is None:
            self.client.pump(0.0)
        return self.returncode

    def wait(self, timeout: Optional[float] = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            left = 0.5 if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired(self.args, timeout)
            self.client.pump(min(left, 0.5))
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class _Keeper:
    """A thread that lives as long as the process and forks the zygotes.

    PR_SET_PDEATHSIG fires when the thread that forked the process ends, not
    the process, so the zygote must not be forked by a short-lived thread.
    """

    def __init__(self) -> None:
        import queue

        self.q: "queue.Queue" = queue.Queue()
        self.t = threading.Thread(target=self._loop, name="dfh-zygote-keeper", daemon=True)
        self.t.start()

    def _loop(self) -> None:
        while True:
            fn, box, done = self.q.get()
            try:
                box.append(("ok", fn()))
            except BaseException as e:  # handed back to the caller
                box.append(("err", e))
            done.set()

    def call(self, fn):
        box: list = []
        done = threading.Event()
        self.q.put((fn, box, done))
        done.wait()
        kind, val = box[0]
        if kind == "err":
            raise val
        return val


class ZygoteClient:
    def __init__(self, python: str = sys.executable, *, start_timeout_s: float = START_TIMEOUT_S,
                 preload: str = "") -> None:
        self.python = python
        self.preload = preload  # LD_PRELOAD (the power-loss tracer), inactive until a child reconfigures it
        self.owner_pid = os.getpid()
        self._lock = threading.RLock()
        self._buf = b""
        self._next_id = 0
        self._replies: Dict[int, Dict[str, Any]] = {}
        self._children: Dict[int, ZygoteChild] = {}
        self._exits: Dict[int, int] = {}  # exits of pids not (yet) known as children
        self.closed = False
        self.ready_s: Optional[float] = None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock = ours
        t0 = time.monotonic()
        code = ("import sys; sys.path.insert(1, %r); "
                "from harness.process_engine.zygote_server import _server_main; _server_main()" % _REPO_ROOT)
        parent = os.getpid()

        env = dict(os.environ)
        # numpy's OpenBLAS (imported by torch) starts a thread pool at import; the
        # children never use it, and a zygote with one thread forks cleanly.
        env.setdefault("OPENBLAS_NUM_THREADS", "1")
        # malloc asks for huge pages as the preload grows its heap, so the zygote's memory is in
        # 2 MB pages from the start (zygote_server.collapse_to_huge_pages takes what is left).
        env["GLIBC_TUNABLES"] = ":".join(t for t in (env.get("GLIBC_TUNABLES"), HUGE_PAGE_TUNABLE) if t)
        for k in ("DFH_TRACE_ROOT", "DFH_TRACE_JOURNAL", "DFH_TRACE_EXCLUDE"):
            env.pop(k, None)  # the zygote itself traces nothing
        if preload:
            env["LD_PRELOAD"] = preload

        def start():
            return subprocess.Popen([python, "-c", code, str(theirs.fileno()), str(parent), " " * CMDLINE_ROOM],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env,
                                    pass_fds=(theirs.fileno(),), close_fds=True,
                                    preexec_fn=lambda: set_parent_death_signal(signal.SIGKILL))

        try:
            self.proc = _keeper().call(start)
        finally:
            theirs.close()
        msg = self._read_until(lambda m: m.get("ev") == "ready", start_timeout_s)
        if msg is None:
            self.close()
            raise ZygoteError(f"zygote did not start within {start_timeout_s:.0f} s")
        self.pid = msg["pid"]
        self.threads = msg.get("threads")
        self.modules = tuple(msg.get("modules") or ())
        self.ready_s = time.monotonic() - t0

    # -- transport ------------------------------------------------------------
    def _handle(self, msg: Dict[str, Any]) -> None:
        ev = msg.get("ev")
        if ev == "exit":
            pid, code = int(msg["pid"]), int(msg["code"])
            ch = self._children.pop(pid, None)
            if ch is not None:
                ch.usage = {"cpu_s": msg.get("cpu_s"), "maxrss_kb": msg.get("maxrss_kb")}
                ch.returncode = code
            else:
                self._exits[pid] = msg
        elif ev in ("spawned", "error"):
            self._replies[int(msg["id"])] = msg

    def _lost(self) -> None:
        """The zygote is gone; its children were killed by their parent-death signal."""
        self.closed = True
        for pid, ch in list(self._children.items()):
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            ch.returncode = -signal.SIGKILL
        self._children.clear()

    def pump(self, timeout: float = 0.0) -> List[Dict[str, Any]]:
        """Read and handle whatever messages arrive within `timeout` seconds."""
        with self._lock:
            if self.closed:
                return []
            out = []
            try:
                r, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
            except (OSError, ValueError):
                self._lost()
                return out
            if not r:
                return out
            try:
                data = self.sock.recv(1 << 20)
            except OSError:
                data = b""
            if not data:
                self._lost()
                return out
            self._buf += data
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                if line.strip():
                    msg = json.loads(line)
                    self._handle(msg)
                    out.append(msg)
            return out

    def _read_until(self, pred, timeout: float) -> Optional[Dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            for m in self.pump(min(0.5, max(0.0, deadline - time.monotonic()))):
                if pred(m):
                    return m
            if self.closed or time.monotonic() >= deadline:
                return None

    # -- API ----------------------------------------------------------------------
    def alive(self) -> bool:
        if self.closed or os.getpid() != self.owner_pid:
            return False
        self.pump(0.0)
        return not self.closed and self.proc.poll() is None

    def spawn(self, module: str, args: List[str], *, env: Dict[str, str], log_path: str,
              cwd: Optional[str] = None, timeout: float = 30.0) -> ZygoteChild:
        with self._lock:
            if self.closed:
                raise ZygoteError("zygote is not running")
            if module not in self.modules:
                raise ZygoteError(f"the zygote has not preloaded {module}")
            self._next_id += 1
            rid = self._next_id
            req = {"op": "spawn", "id": rid, "module": module, "args": list(args), "env": dict(env),
                   "log": os.path.abspath(log_path), "cwd": cwd or os.getcwd()}
            try:
                self.sock.sendall((json.dumps(req) + "\n").encode())
            except OSError as e:
                self._lost()
                raise ZygoteError(f"zygote connection lost: {e}") from e
            deadline = time.monotonic() + timeout
            while rid not in self._replies:
                if self.closed:
                    raise ZygoteError("zygote died while spawning")
                if time.monotonic() >= deadline:
                    raise ZygoteError(f"zygote did not answer a spawn within {timeout} s")
                self.pump(0.05)
            msg = self._replies.pop(rid)
            if msg["ev"] == "error":
                raise ZygoteError(msg["error"])
            pid = int(msg["pid"])
            ch = ZygoteChild(self, pid, [module, *args])
            if pid in self._exits:
                m = self._exits.pop(pid)
                ch.usage = {"cpu_s": m.get("cpu_s"), "maxrss_kb": m.get("maxrss_kb")}
                ch.returncode = int(m["code"])
            else:
                self._children[pid] = ch
            return ch

    def close(self, timeout: float = 5.0) -> None:
        """Stop the zygote (its children die with it) and reap it."""
        with self._lock:
            if os.getpid() != self.owner_pid:
                return
            self.closed = True
            try:
                self.sock.close()
            except OSError:
                pass
            proc = getattr(self, "proc", None)
            if proc is not None and proc.poll() is None:
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)


_KEEPER: Optional[_Keeper] = None
_CLIENTS: Dict[str, ZygoteClient] = {}
_GLOBAL_LOCK = threading.Lock()
_OWNER_PID = os.getpid()
_KEEPER_PID = os.getpid()


def _keeper() -> _Keeper:
    global _KEEPER, _KEEPER_PID
    if _KEEPER is None or _KEEPER_PID != os.getpid() or not _KEEPER.t.is_alive():
        _KEEPER = _Keeper()
        _KEEPER_PID = os.getpid()
    return _KEEPER


def get_client(python: str = sys.executable, preload: str = "") -> ZygoteClient:
    """This process's zygote for `python` (and `preload`: a traced zygote is a separate one),
    started (and restarted) on demand."""
    global _CLIENTS, _OWNER_PID
    with _GLOBAL_LOCK:
        if _OWNER_PID != os.getpid():  # a forked copy of a harness: its zygotes are not ours
            _CLIENTS = {}
            _OWNER_PID = os.getpid()
        key = f"{python}\0{preload}" if preload else python
        c = _CLIENTS.get(key)
        if c is None or not c.alive():
            if c is not None:
                c.close(timeout=1.0)
            c = _CLIENTS[key] = ZygoteClient(python, preload=preload)
        return c


def shutdown_all() -> None:
    with _GLOBAL_LOCK:
        for c in list(_CLIENTS.values()):
            c.close(timeout=2.0)
        _CLIENTS.clear()


import atexit as _atexit  # noqa: E402

_atexit.register(shutdown_all)
