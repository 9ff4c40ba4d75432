"""The zygote's server side: the fork server process itself (`_server_main`).

It imports torch and the reference implementation once (`_preload`, which
also takes the first-call costs of a process start), then serves each spawn
request with a child (`_child`): the child enters its own session, tells the
zygote it has (so the supervisor never signals a process that is not yet its
own group), and runs `main(argv)` as `python -m MODULE` would. While idle the
zygote keeps one spare child forked and warmed (`_Forks`), so a restart is
handed to a process that exists already. The zygote reaps its children on SIGCHLD and reports their exit
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
from typing import Any, Dict, List, Optional, Set

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
    _warm_first_calls()
    import gc

    gc.collect()
    gc.freeze()  # children's collections skip the preloaded objects (fewer copy-on-write faults)
    collapse_to_huge_pages()
    return runnable


#: madvise(2) advice that makes the kernel back a range with huge pages now (Linux 6.1+).
MADV_COLLAPSE = 25
HUGE_PAGE = 2 << 20
#: The glibc tunable (2.35+) with which malloc asks for huge pages for its heap; the zygote starts with it.
HUGE_PAGE_TUNABLE = "glibc.malloc.hugetlb=1"


def anonymous_ranges(maps_path: str = "/proc/self/maps") -> List[tuple]:
    """The huge-page-aligned (start, end) inside each private, writable, anonymous mapping
    (the heap included) that holds at least one whole huge page."""
    out = []
    with open(maps_path) as f:
        for line in f:
            parts = line.split()
            perms, name = parts[1], (parts[5] if len(parts) > 5 else "")
            if not perms.startswith("rw") or perms[3] != "p" or name not in ("", "[heap]"):
                continue
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            lo = (lo + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1)
            hi &= ~(HUGE_PAGE - 1)
            if hi > lo:
                out.append((lo, hi))
    return out


def collapse_to_huge_pages() -> int:
    """Back the zygote's preloaded anonymous memory (about 150 MB after torch) with huge pages;
    returns the bytes it could collapse (0 where the kernel cannot: before 6.1, THP off).
    Most of it is malloc's heap, in huge pages already (HUGE_PAGE_TUNABLE): this takes the rest
    in about 10 ms (all of it, without the tunable: about 300 ms).

    Every child maps that memory: with 4 KB pages, fork copies and exit tears down some 37,000
    page-table entries, about 1.5 and 3 ms of a restart on a 2-core VM; with 2 MB pages, a few
    hundred. A child's first write to a shared huge page splits it and copies only 4 KB."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
        madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        ranges = anonymous_ranges()
    except (OSError, AttributeError):
        return 0
    done = 0
    for lo, hi in ranges:
        if madvise(ctypes.c_void_p(lo), hi - lo, MADV_COLLAPSE) == 0:
            done += hi - lo
    return done


def _warm_first_calls() -> None:
    """Take once, here, the first-call costs every child would pay on its own: argument
    parsing, a model build and a training step, a checkpoint written and read back into
    model and optimizer, an SQLite transaction. None of them starts a thread."""
    import sqlite3

    from reference_impl.checkpoint_file import decode_checkpoint, encode_checkpoint
    from reference_impl.model import DraftModel, TargetModel, prompt_tokens
    from reference_impl.process_loop import process_args

    process_args("zygote", "warm-up", ["--config", "config.json", "--resume"], resume=True)
    target = TargetModel(8, 4, 0)
    feats = target.features(prompt_tokens(0, 0, 4, 8))
    draft = DraftModel(8, 4, 2, 0).to("cpu")
    optim = draft.optimizer(0.1)
    optim.zero_grad(set_to_none=True)
    draft.loss([feats, feats], [0, 1], 1).backward()
    optim.step()
    state = decode_checkpoint(encode_checkpoint({"model": draft.state_dict(), "optim": optim.state_dict(),
                                                 "global_step": 1}))
    draft.load_state_dict(state["model"])
    optim.load_state_dict(state["optim"])
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY)")
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t VALUES ('x')")
        conn.execute("COMMIT")
        conn.execute("SELECT k FROM t").fetchall()
    finally:
        conn.close()


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


def _child(req: Optional[Dict[str, Any]], zygote_pid: int, own_fds: List[int], base_path: List[str],
           in_session_fd: int = -1, request_fd: int = -1) -> None:
    """In the forked child: become `python -m MODULE ARGS` and never return.

    Once the child leads its own session (and so its own process group) it
    writes one byte to `in_session_fd`; the zygote answers "spawned" only
    after reading it, so a signal sent to the group right after a spawn lands.
    A spare (`req` None) then waits for its request on `request_fd`.
    """
    code = 1
    try:
        _enter_session(zygote_pid, own_fds, in_session_fd)
        if req is None:
            # A spare: take the first-call costs (and the copy-on-write faults they
            # bring) while no one waits, then wait for the request.
            _warm_first_calls()
            req = _read_request(request_fd)
            if req is None:  # the zygote went away without handing over a request
                os._exit(0)
        code = _become(req, base_path)
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


def _enter_session(zygote_pid: int, own_fds: List[int], in_session_fd: int) -> None:
    """Own session, parent-death signal, the zygote's descriptors closed, default signal handling."""
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


def _read_request(fd: int) -> Optional[Dict[str, Any]]:
    """A spare's request: JSON up to EOF on `fd` (None at EOF without one)."""
    chunks = []
    while True:
        try:
            data = os.read(fd, 1 << 16)
        except InterruptedError:
            continue
        if not data:
            break
        chunks.append(data)
    os.close(fd)
    return json.loads(b"".join(chunks)) if chunks else None


def _become(req: Dict[str, Any], base_path: List[str]) -> int:
    """Run `req`'s module as `python -m MODULE ARGS` would, in this process; its exit code."""
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
        code = _exit_code(mod.main(list(req["args"])))
    except SystemExit as e:
        code = _exit_code(e.code)
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    _skip_teardown_finalizers()
    import atexit

    atexit._run_exitfuncs()  # what interpreter shutdown would run
    return code


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


#: Idle time after a spawn before the zygote forks the next spare (so the fork does not
#: compete with the child that was just handed over).
SPARE_DELAY_S = 0.02


class _Forks:
    """The zygote's children: forked on request, or handed over from a spare forked beforehand.

    A spare is forked while the zygote is idle and has already entered its own
    session; a spawn request is written to it, so a restart pays neither the
    fork nor the session handshake. A spare that dies unused is reaped silently.
    """

    def __init__(self, sock: socket.socket, me: int, own_fds: List[int], base_path: List[str]) -> None:
        self.sock, self.me, self.own_fds, self.base_path = sock, me, own_fds, base_path
        self.spare: Optional[Dict[str, int]] = None  # pid, request_w, in_session_r
        self.quiet: Set[int] = set()  # spares never handed a request: their exits are not reported

    def _fds(self) -> List[int]:
        return self.own_fds + ([self.spare["request_w"], self.spare["in_session_r"]] if self.spare else [])

    def fork(self, req: Optional[Dict[str, Any]]) -> Optional[Dict[str, int]]:
        """A child for `req` (None: a spare); its pid and the zygote's pipe ends, None if fork failed."""
        for s in (sys.stdout, sys.stderr):
            s.flush()
        in_session_r, in_session_w = os.pipe()
        request_r, request_w = os.pipe() if req is None else (-1, -1)
        try:
            pid = os.fork()
        except OSError:
            for fd in (in_session_r, in_session_w, request_r, request_w):
                if fd >= 0:
                    os.close(fd)
            raise
        if pid == 0:
            os.close(in_session_r)
            if request_w >= 0:
                os.close(request_w)
            _child(req, self.me, self._fds(), self.base_path, in_session_w, request_r)  # never returns
            os._exit(127)
        os.close(in_session_w)
        if request_r >= 0:
            os.close(request_r)
        return {"pid": pid, "request_w": request_w, "in_session_r": in_session_r}

    def fork_spare(self) -> None:
        if self.spare is None:
            try:
                self.spare = self.fork(None)
            except OSError:
                self.spare = None

    def _hand_to_spare(self, req: Dict[str, Any]) -> Optional[Dict[str, int]]:
        spare, self.spare = self.spare, None
        if spare is None:
            return None
        try:
            data = json.dumps(req).encode()
            while data:
                data = data[os.write(spare["request_w"], data):]
        except OSError:  # it died unused
            self.quiet.add(spare["pid"])
            os.close(spare["in_session_r"])
            return None
        finally:
            os.close(spare["request_w"])
        return spare

    def spawn(self, req: Dict[str, Any]) -> None:
        try:
            child = self._hand_to_spare(req) or self.fork(req)
        except OSError as e:
            _send(self.sock, {"ev": "error", "id": req.get("id"), "error": f"fork failed: {e}"})
            return
        in_session = _await_session(child["in_session_r"])
        os.close(child["in_session_r"])
        _send(self.sock, {"ev": "spawned", "id": req["id"], "pid": child["pid"], "in_session": in_session})

    def reap(self) -> None:
        while True:
            try:
                pid, status, ru = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.spare is not None and pid == self.spare["pid"]:
                os.close(self.spare["request_w"])
                os.close(self.spare["in_session_r"])
                self.spare = None
                continue
            if pid in self.quiet:
                self.quiet.discard(pid)
                continue
            _send(self.sock, {"ev": "exit", "pid": pid, "code": os.waitstatus_to_exitcode(status),
                              "cpu_s": round(ru.ru_utime + ru.ru_stime, 4), "maxrss_kb": ru.ru_maxrss})


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
    forks = _Forks(sock, me, [sock.fileno(), wake_r, wake_w], base_path)
    buf = b""
    timeout = SPARE_DELAY_S
    while True:
        try:
            ready, _, _ = select.select([sock, wake_r], [], [], timeout)
        except InterruptedError:
            ready = []
        if wake_r in ready:
            try:
                while os.read(wake_r, 4096):
                    pass
            except BlockingIOError:
                pass
        forks.reap()
        if not ready:
            forks.fork_spare()  # idle: have the next child ready
            timeout = 1.0
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
                forks.spawn(req)
                timeout = SPARE_DELAY_S


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


def _server_main() -> None:
    base_path = list(sys.path[1:])  # without the '' that `python -c` puts first
    fd, parent = int(sys.argv[1]), int(sys.argv[2])
    del sys.argv[3:]  # the cmdline padding
    serve(fd, parent, base_path)


# --------------------------------------------------------------------------
# Client side: in the harness.
# --------------------------------------------------------------------------
