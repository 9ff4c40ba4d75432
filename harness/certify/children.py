"""Certify's child processes: run fn(*args) in a child, bounded by a timeout, and
bring its return value (or its exception, its death, or a hang) back through a file.

Start method: a child is forked by a fork server (`forkserver`), a fresh
interpreter started without threads that forks every child; the certifier
itself never forks, so threads it has (Ray, torch, a test runner) cannot leave
a child with a lock held. `spawn` is the alternative (DFH_CERTIFY_START).
Both come from `multiprocess`, which pickles with dill, so factories that plain
pickle cannot carry (lambdas, closures, classes defined inside a test) still
reach the child. What the certifier set for this certification (the call
timeout, the record types, its environment) is handed to each child explicitly.

Death: every store call a child makes is written to its call board (`guard`)
while it runs. A child that ends without a result is reported at once with
its exit status or signal and the store call(s) it was in (`died`); with no
store call in flight the death is not the backend's and `died["in_store"]` is
False. `run_children` then stops the other children of the same run at once
instead of letting them wait for a peer that is gone.

A child still running at the deadline is killed and reported hung (a liveness
finding); no child outlives the wait, even when the certifier is interrupted.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import sys
import tempfile
import time
import traceback
from typing import Any, Callable, Dict, List, Optional

START_ENV = "DFH_CERTIFY_START"
START_METHODS = ("forkserver", "spawn")
#: imported once by the fork server, so that a child does not import them again
PRELOAD = ["harness.certify.children", "harness.certify.tier1_contract", "harness.certify.tier2_concurrency",
           "harness.certify.tier3_crash", "reference_impl.contracts", "reference_impl.stores.sqlite"]


class StoreStuck(RuntimeError):
    pass


# -- the start method ---------------------------------------------------------------


def mp_context(method: Optional[str] = None):
    """The `multiprocess` context of certify's children: `forkserver` (default) or `spawn`."""
    method = method or os.environ.get(START_ENV) or "forkserver"
    if method not in START_METHODS:
        raise ValueError(f"{START_ENV}={method!r}: allowed {', '.join(START_METHODS)}")
    import multiprocess

    ctx = multiprocess.get_context(method)
    if method == "forkserver":
        from multiprocess import forkserver

        _forget_foreign_fork_server(forkserver._forkserver)
        if not forkserver._forkserver._forkserver_pid:  # not started yet: choose what it imports once
            ctx.set_forkserver_preload(PRELOAD)
            _short_socket_dir()
    return ctx


#: An AF_UNIX address holds 107 bytes; the fork server's is `<temp dir>/pymp-XXXXXXXX/listener-XXXXXXXX`.
SOCKET_DIR_MAX = 64


def _short_socket_dir() -> None:
    """Under a long TMPDIR (a test runner's private one, a deep scratch path) the fork server's socket
    address would not fit ("AF_UNIX path too long"): its folder is then made in a short temp dir
    instead, removed at exit as multiprocess removes its own."""
    from multiprocess import process, util

    if process.current_process()._config.get("tempdir") is not None or len(tempfile.gettempdir()) <= SOCKET_DIR_MAX:
        return
    short = next((d for d in ("/tmp", "/var/tmp", "/dev/shm") if os.path.isdir(d) and os.access(d, os.W_OK)), None)
    if short is None:
        return  # nothing shorter: the start fails and says why
    saved = tempfile.tempdir
    tempfile.tempdir = short
    try:
        util.get_temp_dir()
    finally:
        tempfile.tempdir = saved


def _forget_foreign_fork_server(fs) -> None:
    """A fork server this process did not start is forgotten, so that the next child starts a new one.

    A process forked from one whose fork server was running (mutmut forks each mutant's test run
    from the process that ran the stats run; any test runner that forks) inherits the server's pid,
    but the server is not its child: `ForkServer.ensure_running` then fails with ChildProcessError
    on its `waitpid`, and every certification in that process fails for a reason of its own."""
    pid = fs._forkserver_pid
    if not pid:
        return
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        done = pid  # inherited through a fork: not this process's server
    if not done:
        return  # ours, and alive
    try:
        os.close(fs._forkserver_alive_fd)
    except (OSError, TypeError):
        pass
    fs._forkserver_address = None
    fs._forkserver_alive_fd = None
    fs._forkserver_pid = None


@contextlib.contextmanager
def _main_not_rerun():
    """While a child is started: a `__main__` run from a file (a user's script, stdin) is not
    re-imported in the child. dill carries what the child runs from `__main__` by value, and a
    script without `if __name__ == "__main__":` would otherwise run again in every child."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or path is None or getattr(getattr(main, "__spec__", None), "name", None):
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


def start(proc) -> None:
    """Start a `multiprocess` Process of certify (`Child` and tier 3's workers)."""
    with _main_not_rerun():
        proc.start()


def signal_name(code: Optional[int]) -> str:
    """`killed by SIGSEGV` / `exited with status 0` for a child's exit code."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


# -- inside the child ------------------------------------------------------------------


def _parent_state() -> Dict[str, Any]:
    """What the certifier set for this certification, handed to the child: the call timeout, the
    record types, and the environment as it is now (the fork server has the one it started with;
    a networked backend's server, for one, is named in a variable set later)."""
    from . import guard, records

    return {"call_timeout": guard.timeout_s(), "records": records.active(), "environ": dict(os.environ)}


def use_parent_state(state: Dict[str, Any]) -> None:
    """In a child: take on what `_parent_state` captured."""
    from . import guard, records

    guard.configure(state["call_timeout"])
    records.use(state["records"])
    environ = state["environ"]
    for k in [k for k in os.environ if k not in environ]:
        del os.environ[k]
    os.environ.update(environ)


def _child_main(fn: Callable, args: tuple, result_path: str, state: Dict[str, Any]) -> None:
    from . import guard

    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the certifier's cleanup handler is not ours
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    use_parent_state(state)
    guard.arm(result_path)
    try:
        value = fn(*args)
        out = {"ok": True, "value": value}
    except BaseException as e:  # noqa: BLE001
        out = {
            "ok": False,
            "error": f"{type(e).__name__}: {e}",
            "prop": getattr(e, "prop", None),
            "traceback": traceback.format_exc(),
        }
    try:
        data = pickle.dumps(out)
    except Exception as e:  # noqa: BLE001
        data = pickle.dumps({"ok": False, "error": f"result not picklable: {e!r}", "prop": None, "traceback": ""})
    tmp = result_path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, result_path)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# -- in the certifier --------------------------------------------------------------------


def death_report(name: str, code: Optional[int], calls: List[str]) -> Dict[str, Any]:
    """The result of a child `name` that ended without one: how it ended, in which store call."""
    how = signal_name(code)
    if calls:
        error = (f"the process running the store ({name}) {how} during {' / '.join(calls)}: the store's code "
                 "ended the process")
    else:
        error = f"child {name} {how} without a result, outside any store call"
    return {"ok": False, "error": error, "prop": "exception" if calls else None, "traceback": "",
            "died": {"exit_code": code, "how": how, "calls": calls, "in_store": bool(calls), "child": name}}


def raise_if_harness_died(r: Dict[str, Any]) -> None:
    """HarnessError when a child died outside any store call (not the backend's finding)."""
    died = r.get("died")
    if died and not died["in_store"]:
        from harness.exit_codes import HarnessError

        raise HarnessError(r["error"])


class Child:
    """A child running fn(*args); its return value comes back through a file."""

    def __init__(self, name: str, fn: Callable, args: tuple, workdir: str) -> None:
        self.name = name
        self.result_path = os.path.join(workdir, f"result-{name}-{os.getpid()}-{id(self)}.pkl")
        self.proc = mp_context().Process(target=_child_main, args=(fn, args, self.result_path, _parent_state()),
                                         daemon=False)
        self.stopped = False  # killed by the certifier because a peer died

    def start(self) -> "Child":
        from .guard import board_create

        board_create(self.result_path)
        start(self.proc)
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        try:
            os.kill(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, TypeError):
            pass

    def join(self, timeout: Optional[float]) -> bool:
        self.proc.join(timeout)
        return not self.proc.is_alive()

    def died(self) -> bool:
        """Ended without writing a result."""
        return self.proc.exitcode is not None and not os.path.exists(self.result_path)

    def result(self) -> Dict[str, Any]:
        from .guard import board_read

        try:
            with open(self.result_path, "rb") as f:
                return pickle.load(f)
        except FileNotFoundError:
            return death_report(self.name, self.proc.exitcode, board_read(self.result_path))
        finally:
            self.cleanup()

    def cleanup(self) -> None:
        from .guard import board_remove

        board_remove(self.result_path)
        try:
            os.unlink(self.result_path)
        except OSError:
            pass


def _wait_all(children: List[Child], timeout: float) -> List[Child]:
    """Wait for every child up to `timeout`; a child that dies without a result stops the
    others at once. Returns the children still running at the deadline."""
    from multiprocess.connection import wait

    deadline = time.monotonic() + timeout
    running = [c for c in children if c.proc.exitcode is None]
    while running:
        left = deadline - time.monotonic()
        if left <= 0:
            return running
        ended = wait([c.proc.sentinel for c in running], left)
        for c in [c for c in running if c.proc.sentinel in ended]:
            c.join(10)
            if c.died():
                for other in children:
                    if other.proc.exitcode is None:
                        other.stopped = True
                        other.kill()
                        other.join(10)
                return []
        running = [c for c in running if c.proc.exitcode is None]
    return []


def _stop(children: List[Child]) -> None:
    for c in children:
        if c.proc.pid is not None and c.proc.is_alive():
            c.kill()
            c.join(10)


def run_children(children: List[Child], timeout: float,
                 after_start: Optional[Callable[[], Any]] = None) -> List[Dict[str, Any]]:
    """Start all, wait up to `timeout` in all; a child still running is killed and reported hung."""
    hung: List[Child] = []
    try:
        for c in children:
            c.start()
        if after_start is not None:
            after_start()
        hung = _wait_all(children, timeout)
    except BaseException:  # interrupted (SIGTERM, Ctrl-C): no child outlives the wait, no file stays
        _stop(children)
        for c in children:
            c.cleanup()
        raise
    _stop(children)
    out = []
    for c in children:
        if c in hung:
            c.cleanup()
            out.append({"ok": False, "error": f"child {c.name} still running after {timeout:.0f}s (hang); killed",
                        "prop": "liveness", "traceback": "", "hung": True})
        elif c.stopped:
            c.cleanup()
            out.append({"ok": False, "error": f"child {c.name} stopped: another process of the run died",
                        "prop": None, "traceback": "", "stopped": True})
        else:
            out.append(c.result())
    return out


def in_child(fn: Callable, *args, workdir: str, timeout: float = 120.0, name: str = "probe") -> Dict[str, Any]:
    return run_children([Child(name, fn, args, workdir)], timeout)[0]
