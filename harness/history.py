"""Load and merge the per-process event histories of one run.

Every process appends its events to `run_dir/history/<proc>.jsonl` (see
`reference_impl.history.HistoryWriter` and docs/history.md). A SIGKILL can
leave the event being written as a torn last line: a line with no newline or
one that is not valid JSON. Such a line is dropped. When a later incarnation
appended to the same file after a torn write, the fragment is glued to the
front of the next complete line; the loader keeps the complete event at the end
of that line and drops the fragment. Any other undecodable line is a corrupt
history and raises `HistoryError` naming the file and line.

The merged history is sorted by `(mono, proc, inc, seq)`; `mono` is the
monotonic clock, comparable across the processes of one host. Each event gets
`line`, its 1-based position in the merged history: the position that checker
anomalies cite.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any, Dict, Iterable, List, Optional

EVENT_START = '{"proc"'


class HistoryError(ValueError):
    """A history file that cannot be read as events (beyond a torn last line)."""


def _parse(text: str) -> Optional[Dict[str, Any]]:
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) and "ev" in obj else None


def _salvage(text: str) -> Optional[Dict[str, Any]]:
    """The complete event at the end of a line that starts with a torn fragment."""
    pos = text.rfind(EVENT_START)
    while pos > 0:
        obj = _parse(text[pos:])
        if obj is not None:
            return obj
        pos = text.rfind(EVENT_START, 0, pos)
    return None


def read_events_file(path: str, stats: Optional[Dict[str, int]] = None) -> List[Dict[str, Any]]:
    """The events of one `<proc>.jsonl` file, in file order."""
    with open(path, "rb") as f:
        data = f.read().decode("utf-8", errors="replace")
    lines = data.split("\n")
    # The text after the last newline is a torn last line (or "" when none).
    tail = lines.pop()
    torn = 1 if tail.strip() else 0
    events = []
    for i, text in enumerate(lines):
        if not text.strip():
            continue
        obj = _parse(text)
        if obj is None:
            torn += 1
            obj = _salvage(text)
            if obj is None:
                if i == len(lines) - 1:
                    continue  # an undecodable last line: torn
                raise HistoryError(f"{path}:{i + 1}: not a JSON event: {text[:120]!r}")
        events.append(obj)
    if stats is not None:
        stats["torn"] = stats.get("torn", 0) + torn
        stats["events"] = stats.get("events", 0) + len(events)
    return events


def sort_key(e: Dict[str, Any]):
    return (e.get("mono", 0.0), e.get("proc", ""), e.get("inc", 0), e.get("seq", 0))


def merge(streams: Iterable[List[Dict[str, Any]]]) -> List[Dict[str, Any]]:
    """Merge event lists into one history sorted by (mono, proc, inc, seq), numbering `line`."""
    events = [e for s in streams for e in s]
    events.sort(key=sort_key)
    for i, e in enumerate(events, 1):
        e["line"] = i
    return events


def load_history(run_dir: str, stats: Optional[Dict[str, int]] = None) -> List[Dict[str, Any]]:
    """All events of `run_dir/history/*.jsonl`, merged; `stats` (if given) gets torn/events counts."""
    paths = sorted(glob.glob(os.path.join(run_dir, "history", "*.jsonl")))
    return merge(read_events_file(p, stats) for p in paths)


def write_merged(events: List[Dict[str, Any]], path: str) -> None:
    """Write a merged history as one JSON event per line (with its `line`)."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    with open(path, "w") as f:
        for e in events:
            f.write(json.dumps(e, separators=(",", ":"), sort_keys=False, default=_default))
            f.write("\n")


def load_merged(path: str) -> List[Dict[str, Any]]:
    """Read a history written by `write_merged`; `line` is the position in the file."""
    events = []
    with open(path) as f:
        for text in f:
            if not text.strip():
                continue
            obj = json.loads(text)
            obj["line"] = len(events) + 1
            events.append(obj)
    return events


def _default(o: Any):
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
