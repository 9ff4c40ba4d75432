"""Shared plumbing for the tiers: the run context, child processes, retries."""

from __future__ import annotations

import os
import random
import shlex
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Sequence

from .certificate import Budget
from .children import Child, StoreStuck, in_child, mp_context, run_children  # noqa: F401 (re-exported)
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
    #: the certificate folder (tier 4 keeps its run reports there), or None
    report_dir: Optional[str] = None

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


# -- refs for tiers 2 and 3 ------------------------------------------------------------


def random_ref(rng: random.Random, sid: str, **meta: Any) -> Any:
    """A ref of the record type in use with every field populated (nested records, unicode)."""
    from .records import active

    return active().random_ref(rng, sid, **meta)


def safe_close(store: Any) -> None:
    try:
        close_store(store)
    except Exception:  # noqa: BLE001
        pass
