"""Certify's child processes: run fn(*args) in a child, bounded by a timeout, and
bring its return value (or its exception, or a hang) back through a file.

A child that is still running at the deadline is killed and reported hung (a
liveness finding); no child outlives the wait, even when the certifier is
interrupted.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import sys
import time
import traceback
from typing import Any, Callable, Dict, List, Optional

START_ENV = "DFH_CERTIFY_START"


class StoreStuck(RuntimeError):
    pass


# -- child processes -----------------------------------------------------------------


def mp_context(method: Optional[str] = None):
    """The start method of certify's children: `fork` where the OS has it (fast, the
    store factory is inherited), else `spawn` (macOS, Windows), or what
    DFH_CERTIFY_START says. A spawned child gets its function and arguments by
    pickling; `multiprocess` pickles with dill, so factories that plain pickle
    cannot carry (lambdas, closures, classes defined inside a test) still work."""
    method = (method or os.environ.get(START_ENV)
              or ("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"))
    if method == "fork":
        return multiprocessing.get_context("fork")
    if method != "spawn":
        raise ValueError(f"{START_ENV}={method!r}: allowed fork or spawn")
    import multiprocess

    return multiprocess.get_context("spawn")


def _child_main(fn: Callable, args: tuple, result_path: str) -> None:
    from . import guard

    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the certifier's cleanup handler is not ours
    signal.signal(signal.SIGINT, signal.SIG_DFL)
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


class Child:
    """A forked child running fn(*args); its return value comes back through a file."""

    def __init__(self, name: str, fn: Callable, args: tuple, workdir: str) -> None:
        self.name = name
        self.result_path = os.path.join(workdir, f"result-{name}-{os.getpid()}-{id(self)}.pkl")
        self.proc = mp_context().Process(target=_child_main, args=(fn, args, self.result_path), daemon=False)

    def start(self) -> "Child":
        self.proc.start()
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

    def result(self) -> Dict[str, Any]:
        try:
            with open(self.result_path, "rb") as f:
                return pickle.load(f)
        except FileNotFoundError:
            code = self.proc.exitcode
            return {
                "ok": False,
                "error": f"child {self.name} died without a result (exit code {code})",
                "prop": None,
                "traceback": "",
            }
        finally:
            try:
                os.unlink(self.result_path)
            except OSError:
                pass


def run_children(children: List[Child], timeout: float,
                 after_start: Optional[Callable[[], Any]] = None) -> List[Dict[str, Any]]:
    """Start all, wait up to `timeout` in all; a child still running is killed and reported hung."""
    try:
        for c in children:
            c.start()
        if after_start is not None:
            after_start()
        deadline = time.monotonic() + timeout
        hung = []
        for c in children:
            if not c.join(max(0.0, deadline - time.monotonic())):
                hung.append(c)
    finally:  # interrupted (SIGTERM, Ctrl-C) or hung: no child outlives the wait
        for c in children:
            if c.proc.pid is not None and c.proc.is_alive():
                c.kill()
                c.join(10)
                if c.proc.exitcode is not None:
                    try:
                        os.unlink(c.result_path)
                    except OSError:
                        pass
    out = []
    for c in children:
        if c in hung:
            out.append(
                {
                    "ok": False,
                    "error": f"child {c.name} still running after {timeout:.0f}s (hang); killed",
                    "prop": "liveness",
                    "traceback": "",
                    "hung": True,
                }
            )
        else:
            out.append(c.result())
    return out


def in_child(fn: Callable, *args, workdir: str, timeout: float = 120.0, name: str = "probe") -> Dict[str, Any]:
    return run_children([Child(name, fn, args, workdir)], timeout)[0]
