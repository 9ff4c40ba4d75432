"""The zygote's server side: the fork server process itself (`_server_main`).

It imports torch and the reference implementation once (`_preload`), then
forks one child per spawn request (`_child`): the child enters its own
session, tells the zygote it has (so the supervisor never signals a process
that is not yet its own group), and runs `main(argv)` as `python -m MODULE`
would. The zygote reaps its children on SIGCHLD and reports their exit
statuses over the socket (`serve`). The client side, which the supervisor
uses, is `harness.process_engine.zygote`; the protocol is described there.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import socket
import sys
import time
from typing import Any, Dict, List

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
