"""What the bench measures processes with: /proc (CPU, memory, descriptors, children),
a fresh interpreter per section, medians, a history file read back.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import statistics
from typing import Any, Dict, List, Optional

from reference_impl.procutil import CSTIME, CUTIME, STIME, UTIME, stat_fields

_CLK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_of(pid: int, with_children: bool = True) -> float:
    """utime+stime (+ cutime+cstime of reaped children) of `pid`, seconds."""
    s = stat_fields(pid)
    if s is None:
        return 0.0
    ticks = int(s[UTIME]) + int(s[STIME]) + ((int(s[CUTIME]) + int(s[CSTIME])) if with_children else 0)
    return ticks / _CLK


def children_map() -> Dict[int, List[int]]:
    kids: Dict[int, List[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            s = stat_fields(int(name))
            if s is not None:
                kids.setdefault(int(s[1]), []).append(int(name))
    return kids


def descendants(pid: int) -> List[int]:
    kids = children_map()
    out, todo = [], [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * _PAGE // 1024
    except (OSError, IndexError, ValueError):
        return 0


def pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def zygote_pids() -> List[int]:
    from ..process_engine import zygote

    return [c.pid for c in zygote._CLIENTS.values() if not c.closed]


def tree_cpu() -> float:
    """CPU seconds of this process, its reaped children and its zygotes (with theirs)."""
    import resource

    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime + sum(cpu_of(z) for z in zygote_pids())


def in_fresh_process(fn, *args):
    """Run `fn(*args)` in a fresh interpreter and return its result."""
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(fn, args)


def median(xs: List[float], digits: int = 4) -> Optional[float]:
    """The median, rounded (the mean of two middle values is printed, and 21.700000000000003 says nothing more)."""
    return round(statistics.median(xs), digits) if xs else None


def read_events(path: str) -> List[Dict[str, Any]]:
    out = []
    try:
        with open(path, "rb") as f:
            for line in f.read().split(b"\n"):
                if line.strip():
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        pass
    except FileNotFoundError:
        pass
    return out
