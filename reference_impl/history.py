"""Per-process event history, one JSON line per event.

Each process appends to its own file with one `write` per event on an O_APPEND
descriptor, so a SIGKILL loses at most the event being written and never
interleaves two processes' lines. Every event carries the process name, its
incarnation, a per-incarnation sequence number, wall time and monotonic time,
and, when failpoints were reached since the previous event, their counts
(`reached`).
The event vocabulary is documented in docs/history.md.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Optional

from . import failpoints


class HistoryWriter:
    def __init__(self, path: Optional[str], proc: str, incarnation: int) -> None:
        self.proc = proc
        self.incarnation = int(incarnation)
        self.seq = 0
        self.path = path
        self._fd = None
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def emit(self, ev: str, **fields: Any) -> None:
        if self._fd is None:
            return
        rec = {
            "proc": self.proc,
            "inc": self.incarnation,
            "seq": self.seq,
            "t": time.time(),
            "mono": time.monotonic(),
            "ev": ev,
        }
        rec.update(fields)
        reached = failpoints.take_reached()
        if reached:
            rec["reached"] = reached
        self.seq += 1
        os.write(self._fd, (json.dumps(rec, separators=(",", ":"), default=_default) + "\n").encode())

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _default(o: Any):
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


class NullHistory(HistoryWriter):
    def __init__(self) -> None:
        super().__init__(None, "null", 0)
