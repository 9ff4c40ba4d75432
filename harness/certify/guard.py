"""Bounded store calls: every construction and store call gets a timeout.

Model: the tiers call the store only inside child processes (`children.Child`).
In a child, `arm()` starts a watchdog thread; `watch(call, args)` notes a call
in progress (per thread). A call still running after the call timeout ends
the child at once with a liveness result: which call, which arguments (their
repr, cut to a readable length), how long it had run. The parent turns that
into a `liveness` counterexample with a standalone reproducer.

Outside a child (no result file to write) `watch` only times the call: the
certifier cannot be stopped from a thread, so there the tier-level timeouts of
`run_children` bound the time.

The call board: a small shared file per child (`<result>.calls`), one slot per
thread, holding the name of the store call the thread is in (empty between
calls). It costs a memory write per call, no system call, and outlives the
child: when a child dies without a result, the certifier reads which store
call(s) were running (`board_read`), so a segfault or an `os._exit` inside
`record_train_ack` is reported as that call's.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import pickle
import threading
import time
from typing import Any, Dict, List, Optional, Tuple  # noqa: F401

DEFAULT_CALL_TIMEOUT_S = 120.0

_timeout_s: float = DEFAULT_CALL_TIMEOUT_S
_result_path: Optional[str] = None
_inflight: Dict[int, Tuple[str, tuple, dict, float, Any]] = {}
_watchdog: Optional[threading.Thread] = None

SLOTS = 64  # threads per child with a slot on the call board
SLOT = 64  # bytes per slot: a call name
_board: Optional[mmap.mmap] = None
_slots: Dict[int, int] = {}


def _board_path(result_path: str) -> str:
    return result_path + ".calls"


def board_create(result_path: str) -> None:
    """In the certifier, before the child starts: an empty board."""
    with open(_board_path(result_path), "wb") as f:
        f.write(b"\0" * (SLOTS * SLOT))


def board_read(result_path: str) -> List[str]:
    """The store calls in progress when the child ended (one per thread), oldest slot first."""
    try:
        with open(_board_path(result_path), "rb") as f:
            data = f.read()
    except OSError:
        return []
    out = []
    for i in range(0, len(data), SLOT):
        name = data[i:i + SLOT].split(b"\0", 1)[0].decode("utf-8", "replace")
        if name:
            out.append(name)
    return out


def board_remove(result_path: str) -> None:
    try:
        os.unlink(_board_path(result_path))
    except OSError:
        pass


def _board_open(result_path: str) -> None:
    global _board
    _slots.clear()
    try:
        fd = os.open(_board_path(result_path), os.O_RDWR)
    except OSError:
        _board = None
        return
    try:
        _board = mmap.mmap(fd, SLOTS * SLOT)
    finally:
        os.close(fd)


def _board_enter(name: str) -> Optional[int]:
    board = _board
    if board is None:
        return None
    tid = threading.get_ident()
    i = _slots.get(tid)
    if i is None:
        i = _slots.setdefault(tid, len(_slots) % SLOTS)
    board[i * SLOT:(i + 1) * SLOT] = name.encode("utf-8", "replace")[:SLOT - 1].ljust(SLOT, b"\0")
    return i


def _board_leave(i: Optional[int]) -> None:
    if i is not None and _board is not None:
        _board[i * SLOT] = 0


def configure(timeout_s: float) -> None:
    global _timeout_s
    _timeout_s = float(timeout_s)


def timeout_s() -> float:
    return _timeout_s


def arm(result_path: str) -> None:
    """In a freshly started child: write a liveness result to `result_path` if a call hangs."""
    global _result_path, _watchdog
    _result_path = result_path
    _inflight.clear()
    _board_open(result_path)
    _watchdog = threading.Thread(target=_watch_loop, name="certify-call-watchdog", daemon=True)
    _watchdog.start()


def _short(text: str, n: int = 600) -> str:
    return text if len(text) <= n else text[: n - 20] + f"... ({len(text)} chars)"


def describe_args(args: tuple, kw: dict) -> str:
    parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kw.items()]
    return ", ".join(parts)


@contextlib.contextmanager
def watch(call: str, args: tuple = (), kw: Optional[dict] = None, raw: Any = None):
    tid = threading.get_ident()
    _inflight[tid] = (call, args, kw or {}, time.monotonic(), raw)  # one dict store: atomic, no lock
    slot = _board_enter(call)
    try:
        yield
    finally:
        _board_leave(slot)
        _inflight.pop(tid, None)


def _watch_loop() -> None:
    while True:
        time.sleep(min(0.2, max(0.01, _timeout_s / 10)))
        now = time.monotonic()
        late = [(c, describe_args(a, k), now - t0, raw) for (c, a, k, t0, raw) in list(_inflight.values())
                if now - t0 > _timeout_s]
        if late and _result_path:
            call, args, took, raw = max(late, key=lambda x: x[2])
            hang = {"call": call, "args": _short(args), "args_full": args, "seconds": round(took, 1),
                    "timeout_s": _timeout_s}
            out = {
                "ok": False,
                "error": f"{call}({_short(args, 300)}) did not return within {_timeout_s:g} s (call timeout)",
                "prop": "liveness",
                "traceback": "",
                "hang": hang,
            }
            tmp = _result_path + ".tmp"
            try:
                with open(tmp, "wb") as f:
                    f.write(pickle.dumps(out))
                os.replace(tmp, _result_path)
            finally:
                os._exit(0)


class TimedStore:
    """A store whose every public method call runs under `watch` (the call timeout)."""

    def __init__(self, inner: Any) -> None:
        object.__setattr__(self, "_inner", inner)

    def __getattr__(self, name: str) -> Any:
        v = getattr(object.__getattribute__(self, "_inner"), name)
        if name.startswith("_") or not callable(v):
            return v

        get_ident, now, inflight = threading.get_ident, time.monotonic, _inflight

        enter, leave = _board_enter, _board_leave

        def call(*args, **kw):
            tid = get_ident()
            inflight[tid] = (name, args, kw, now(), None)
            slot = enter(name)
            try:
                return v(*args, **kw)
            finally:
                leave(slot)
                inflight.pop(tid, None)

        call.__name__ = name
        # cached on the instance: later calls skip __getattr__ (tight loops stay as fast as they can)
        object.__getattribute__(self, "__dict__")[name] = call
        return call

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(object.__getattribute__(self, "_inner"), name, value)

    def __repr__(self) -> str:
        return f"TimedStore({object.__getattribute__(self, '_inner')!r})"
