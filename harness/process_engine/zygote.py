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

import ctypes
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

from reference_impl.procutil import ARG_END, ARG_START, set_parent_death_signal, stat_fields

#: Modules whose `main(argv)` a zygote may run: the ones it has preloaded.
ZYGOTE_MODULES = ("reference_impl.producer", "reference_impl.consumer", "reference_impl.dp_consumer")
PRELOAD = ("reference_impl.failpoints", "reference_impl.variant", "reference_impl.model",
           "reference_impl.feature_store", "reference_impl.stores", "reference_impl.stores.server",
           "reference_impl.producer", "reference_impl.consumer")
#: Room in the zygote's argv that each child overwrites with its own command
#: line, so `ps` and /proc/PID/cmdline show `python -m MODULE ARGS...`.
CMDLINE_ROOM = 4096
START_TIMEOUT_S = 120.0
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# --------------------------------------------------------------------------
# Server side: runs in the zygote process.
# --------------------------------------------------------------------------

def _preload() -> List[str]:
    """Import what children need; returns the ZYGOTE_MODULES that imported."""
    import importlib

    import torch

    torch.set_num_threads(1)  # before any op: a forked child must not need a thread pool
    for m in PRELOAD:
        importlib.import_module(m)
    runnable = []
    for m in ZYGOTE_MODULES:
        try:
            mod = importlib.import_module(m)
        except Exception as e:  # such a module is spawned instead
            print(f"zygote: cannot preload {m}: {e!r}", file=sys.stderr)
            continue
        if callable(getattr(mod, "main", None)):
            runnable.append(m)
    # Warm the lazy paths a starting process takes (serialization, a forward
    # pass, a model build) so children inherit them; none of them starts a thread.
    import io

    from reference_impl.model import DraftModel, TargetModel, prompt_tokens

    buf = io.BytesIO()
    torch.save({"x": torch.zeros(2), "n": 1}, buf)
    buf.seek(0)
    torch.load(buf, map_location="cpu", weights_only=True)
    t = TargetModel(8, 4, 0)
    t.features(prompt_tokens(0, 0, 4, 8))
    DraftModel(8, 4, 2, 0)
    import gc

    gc.collect()
    gc.freeze()  # children's collections skip the preloaded objects (fewer copy-on-write faults)
    return runnable


def _set_cmdline(argv: List[str]) -> None:
    """Overwrite this process's /proc/PID/cmdline in place (the argv area).

    The zygote was started with CMDLINE_ROOM bytes of padding in its argv, so
    the area fits a child's command line; a longer one is cut.
    """
    fields = stat_fields("self")
    try:
        start, end = int(fields[ARG_START]), int(fields[ARG_END])
    except (TypeError, IndexError, ValueError):
        return
    size = end - start
    if size <= 1:
        return
    data = b"\0".join(a.encode(errors="replace") for a in argv)[: size - 1]
    data += b"\0" * (size - len(data))
    ctypes.memmove(start, data, size)


def _send(sock: socket.socket, msg: Dict[str, Any]) -> None:
    data = (json.dumps(msg) + "\n").encode()
    try:
        sock.sendall(data)
    except OSError:
        os._exit(0)  # the harness is gone: its end of the socket is closed


def _child(req: Dict[str, Any], zygote_pid: int, own_fds: List[int], base_path: List[str],
           in_session_fd: int = -1) -> None:
    """In the forked child: become `python -m MODULE ARGS` and never return.

    Once the child leads its own session (and so its own process group) it
    writes one byte to `in_session_fd`; the zygote answers "spawned" only
    after reading it, so a signal sent to the group right after a spawn lands.
    """
    code = 1
    try:
        os.setsid()
        set_parent_death_signal(signal.SIGKILL)
        if os.getppid() != zygote_pid:  # the zygote died before prctl took effect
            os._exit(137)
        if in_session_fd >= 0:
            os.write(in_session_fd, b"s")
            os.close(in_session_fd)
        signal.set_wakeup_fd(-1)
        for fd in own_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        log = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        import io

        # PYTHONUNBUFFERED=1, as the supervisor sets for every child.
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True,
                                      errors="backslashreplace")
        sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
        cwd = req.get("cwd") or os.getcwd()
        os.chdir(cwd)
        _set_cmdline([sys.executable, "-m", req["module"], *req["args"]])
        env = req["env"]
        os.environ.clear()
        os.environ.update(env)
        if env.get("DFH_TRACE_ROOT"):  # a power-loss run: the preloaded tracer re-reads its root and journal
            from harness.powerloss.build import reconfigure_in_process

            if not reconfigure_in_process():
                raise RuntimeError("power-loss tracing asked for, but this zygote was started without the tracer")
        pp = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        sys.path[:] = [cwd] + [os.path.abspath(p) for p in pp] + base_path
        import random

        random.seed()  # a fresh interpreter seeds from the OS; forked ones share the zygote's state
        import importlib

        module = req["module"]
        mod = importlib.import_module(module)
        sys.argv = [getattr(mod, "__file__", module) or module] + list(req["args"])
        try:
            rc = mod.main(list(req["args"]))
            code = _exit_code(rc)
        except SystemExit as e:
            code = _exit_code(e.code)
        except BaseException:
            sys.excepthook(*sys.exc_info())
            code = 1
        _skip_teardown_finalizers()
        import atexit

        atexit._run_exitfuncs()  # what interpreter shutdown would run
    except BaseException:
        try:
            import traceback

            traceback.print_exc()
        except BaseException:
            pass
        code = 1
    finally:
        for s in (sys.stdout, sys.stderr):
            try:
                s.flush()
            except BaseException:
                pass
        os._exit(code)


def _skip_teardown_finalizers() -> None:
    """Drop torch's operator-library deregistration finalizers from the exit path.

    They only free in-memory registrations (about 90 ms for 130 of them); the
    process is about to end. Every other atexit handler and finalizer runs.
    """
    import weakref

    lib = sys.modules.get("torch.library")
    fn = getattr(lib, "_del_library", None)
    if fn is None:
        return
    for ref, info in list(weakref.finalize._registry.items()):
        if info.func is fn:
            info.atexit = False


def _exit_code(rc: Any) -> int:
    """`sys.exit(rc)` semantics."""
    if rc is None:
        return 0
    if isinstance(rc, int) and not isinstance(rc, bool):
        return rc & 0xFF
    if isinstance(rc, bool):
        return int(rc)
    try:
        print(rc, file=sys.stderr)
    except BaseException:
        pass
    return 1


def serve(sock_fd: int, parent_pid: int, base_path: List[str]) -> None:
    os.setsid()  # out of the harness's terminal group: Ctrl-C reaches the harness only
    set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(0)
    sock = socket.socket(fileno=sock_fd)
    modules = _preload()
    me = os.getpid()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _send(sock, {"ev": "ready", "pid": me, "threads": len(os.listdir("/proc/self/task")), "modules": modules})
    buf = b""
    own_fds = [sock.fileno(), wake_r, wake_w]
    while True:
        try:
            ready, _, _ = select.select([sock, wake_r], [], [], 1.0)
        except InterruptedError:
            ready = []
        if wake_r in ready:
            try:
                while os.read(wake_r, 4096):
                    pass
            except BlockingIOError:
                pass
        _reap(sock)
        if sock in ready:
            try:
                data = sock.recv(1 << 20)
            except OSError:
                data = b""
            if not data:
                os._exit(0)  # the harness closed the socket; children die with us (parent-death signal)
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if not line.strip():
                    continue
                req = json.loads(line)
                if req.get("op") != "spawn":
                    _send(sock, {"ev": "error", "id": req.get("id"), "error": f"unknown op {req.get('op')!r}"})
                    continue
                for s in (sys.stdout, sys.stderr):
                    s.flush()
                in_session_r, in_session_w = os.pipe()
                try:
                    pid = os.fork()
                except OSError as e:
                    os.close(in_session_r)
                    os.close(in_session_w)
                    _send(sock, {"ev": "error", "id": req.get("id"), "error": f"fork failed: {e}"})
                    continue
                if pid == 0:
                    os.close(in_session_r)
                    _child(req, me, own_fds, base_path, in_session_w)  # never returns
                    os._exit(127)
                os.close(in_session_w)
                in_session = _await_session(in_session_r)
                os.close(in_session_r)
                _send(sock, {"ev": "spawned", "id": req["id"], "pid": pid, "in_session": in_session})


def _await_session(fd: int, timeout_s: float = 30.0) -> bool:
    """Wait for a new child's byte saying it has called setsid(); False at EOF (it died first)."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        try:
            r, _, _ = select.select([fd], [], [], left)
        except InterruptedError:
            continue
        if r:
            try:
                return os.read(fd, 1) == b"s"
            except InterruptedError:
                continue


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status, ru = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send(sock, {"ev": "exit", "pid": pid, "code": os.waitstatus_to_exitcode(status),
                     "cpu_s": round(ru.ru_utime + ru.ru_stime, 4), "maxrss_kb": ru.ru_maxrss})


def _server_main() -> None:
    base_path = list(sys.path[1:])  # without the '' that `python -c` puts first
    fd, parent = int(sys.argv[1]), int(sys.argv[2])
    del sys.argv[3:]  # the cmdline padding
    serve(fd, parent, base_path)


# --------------------------------------------------------------------------
# Client side: in the harness.
# --------------------------------------------------------------------------

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

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


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
                "from harness.process_engine.zygote import _server_main; _server_main()" % _REPO_ROOT)
        parent = os.getpid()

        env = dict(os.environ)
        # numpy's OpenBLAS (imported by torch) starts a thread pool at import; the
        # children never use it, and a zygote with one thread forks cleanly.
        env.setdefault("OPENBLAS_NUM_THREADS", "1")
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
