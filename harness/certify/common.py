"""Shared plumbing for the tiers: the run context, child processes, retries."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import random
import shlex
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

from .certificate import Budget
from .loader import StoreTarget, close_store


@dataclass
class Context:
    target: StoreTarget
    profile: str
    budget: Budget
    seed: int
    workroot: str
    progress: Callable[[str], None] = lambda msg: None
    #: command prefix that reproduces this certification, or None (suite use)
    repro_prefix: Optional[str] = None
    overrides: Dict[str, Any] = field(default_factory=dict)

    def reproduce(self, tier: int, *extra: str) -> str:
        if self.repro_prefix is None:
            return f"rerun this test with seed={self.seed} (tier {tier})"
        parts = [self.repro_prefix, f"--tiers {tier}", f"--seed {self.seed}", f"--{self.budget.name}"]
        parts.extend(extra)
        return " ".join(parts)

    def subdir(self, name: str) -> str:
        d = os.path.join(self.workroot, name)
        n = 1
        while os.path.exists(d):
            n += 1
            d = os.path.join(self.workroot, f"{name}-{n}")
        os.makedirs(d)
        return d


def quote_cmd(argv: Sequence[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


# -- transient errors ----------------------------------------------------------------

_TRANSIENT_WORDS = ("database is locked", "database table is locked", "busy", "locked", "timed out", "timeout")


def is_transient(e: BaseException) -> bool:
    """A lock/busy/timeout error a correct store may raise under load (retry it)."""
    from .model import Violation

    if isinstance(e, Violation):
        return False
    if isinstance(e, TimeoutError):
        return True
    msg = f"{type(e).__name__} {e}".lower()
    return any(w in msg for w in _TRANSIENT_WORDS)


class Retrier:
    """Retries transient errors with backoff up to a generous deadline, counting them."""

    def __init__(self, deadline_s: float = 120.0) -> None:
        self.deadline_s = deadline_s
        self.transient = 0
        self.last_error: Optional[str] = None

    def call(self, fn: Callable, *args, on_retry: Optional[Callable[[], None]] = None, **kw):
        start = time.monotonic()
        delay = 0.002
        while True:
            try:
                return fn(*args, **kw)
            except Exception as e:  # noqa: BLE001
                if not is_transient(e):
                    raise
                self.transient += 1
                self.last_error = f"{type(e).__name__}: {e}"
                if time.monotonic() - start > self.deadline_s:
                    raise StoreStuck(
                        f"{getattr(fn, '__name__', fn)} kept failing for {self.deadline_s:.0f}s: {self.last_error}"
                    ) from e
                if on_retry is not None:
                    on_retry()
                time.sleep(delay)
                delay = min(delay * 2, 0.1)


class StoreStuck(RuntimeError):
    pass


# -- child processes -----------------------------------------------------------------


def mp_context():
    return multiprocessing.get_context("fork")


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


def run_children(children: List[Child], timeout: float, after_start: Optional[Callable[[], Any]] = None) -> List[Dict[str, Any]]:
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


# -- refs for tiers 2 and 3 ------------------------------------------------------------


def random_ref(rng: random.Random, sid: str, **meta: Any) -> Any:
    """A ref of the record type in use with every field populated (nested records, unicode)."""
    from .records import active

    return active().random_ref(rng, sid, **meta)


def open_retrying(target: StoreTarget, workdir: str, retrier: Retrier):
    return retrier.call(target.open, workdir)


def safe_close(store: Any) -> None:
    try:
        close_store(store)
    except Exception:  # noqa: BLE001
        pass
