"""Process utilities (Linux): `/proc/<pid>/stat` fields and the parent-death signal.

Written once for the reference (the data-parallel consumer's group and ranks)
and for the harness (supervisor, zygote, bench, tests), which imports it from
here: `reference_impl` never imports `harness`.
"""

from __future__ import annotations

import ctypes
import signal
from typing import List, Optional, Union

PR_SET_PDEATHSIG = 1

# Indices into `stat_fields`, which starts after "pid (comm)" (proc(5) field number - 3).
STATE, PPID = 0, 1
UTIME, STIME, CUTIME, CSTIME = 11, 12, 13, 14
ARG_START, ARG_END = 45, 46

_libc = None


def stat_fields(pid: Union[int, str] = "self") -> Optional[List[str]]:
    """The fields of `/proc/<pid>/stat` after "pid (comm)" (state first), or None when
    there is no such process (or its stat cannot be read)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return data.rsplit(b")", 1)[1].decode("ascii", "replace").split()
    except (OSError, IndexError):
        return None


def proc_state(pid: Union[int, str]) -> Optional[str]:
    """The one-letter state of `pid` (R, S, D, T, Z, X, ...), or None when it is gone."""
    f = stat_fields(pid)
    return f[STATE] if f else None


def pid_stopped(pid: int) -> bool:
    """True while the process is stopped (SIGSTOP, e.g. a `pause` failpoint)."""
    return proc_state(int(pid)) == "T"


def pid_gone(pid: int) -> bool:
    """True when the process no longer runs: no such pid, a zombie, or dead."""
    return proc_state(int(pid)) in (None, "Z", "X")


def parent_of(pid: Union[int, str]) -> Optional[int]:
    f = stat_fields(pid)
    try:
        return int(f[PPID]) if f else None
    except (IndexError, ValueError):
        return None


def libc():
    """The C library (loaded once; load it before forking, not in the child)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def set_parent_death_signal(sig: int = signal.SIGKILL) -> None:
    """PR_SET_PDEATHSIG for the calling process (used between fork and exec too)."""
    if libc().prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
