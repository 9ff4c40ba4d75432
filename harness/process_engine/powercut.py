"""Power cuts in the process engine: every process traced, then all killed at once.

Model
-----
A run whose schedule holds a power cut (a timed `powercut` fault, or a
failpoint with action `powercut`) runs every process traced by the
durability tracer (`harness.powerloss`): producer, consumer (and its ranks,
forked from it), and the in-memory store server. The journal lies outside the
work dir (`<report dir>/powerloss.journal`); the harness's own files under the
work dir (`history/`, `logs/`) are excluded from the trace and never rebuilt,
so the history survives a cut whole: it is the observer's record, not the
machine's disk.

A cut (`PowerLoss.cut`):

1. freezes every process of the run (SIGSTOP to each process group: the
   producer, the consumer group with its ranks, the store server), so none
   writes while the others die;
2. SIGKILLs every group and reaps every process (rank pids are waited for
   until gone), so the disk is quiet;
3. rebuilds the work dir (`powercut(root, journal, mode, seed)`): unsynced
   writes dropped, non-durable directory entries undone, `-shm` removed;
4. arms the tracer again (a new baseline: the rebuilt dir), so the restarted
   processes are traced against what survived.

While the processes run, a compactor thread (`harness.powerloss.compactor`)
reads the journal as it grows, folds writes that a later fsync made durable
into the rebuild's model and frees the journal's read bytes, so the journal
holds only what was appended since its last step; the cut's rebuild uses that
model. `summary()` reports the journal's peak size on disk.

The runner then restarts every process that was running with its next
incarnation (the store server first). The supervisor's `powercut` event
carries the cut's figures; `summary()` is result.json's `powerloss` block.
Cut i (0-based) of a run with seed S uses the rebuild seed S + i (`torn`
mode draws its torn tails from it), so a seed replays the same disk states
for the same journal.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import time
from typing import Any, Dict, List, Optional

from reference_impl.procutil import proc_state

from ..exit_codes import HarnessError
from ..faults import Failpoint
from ..powerloss import arm, load_baseline, powercut
from ..powerloss.build import tracer_library
from ..powerloss.compactor import CompactorThread, JournalCompactor

JOURNAL = "powerloss.journal"
#: Set (to anything) to keep each cut's journal as `powerloss.journal.cut<i>` in the report dir.
KEEP_JOURNALS_ENV = "DFH_POWERLOSS_KEEP_JOURNALS"
#: Processes that must be dead before the rebuild: how long to wait for each.
REAP_S = 10.0


def require_tracer() -> str:
    """The tracer library (built on first use); UsageError (exit 2) where no compiler can build it."""
    return tracer_library()


class PowerLoss:
    """The power-loss state of one run: its journal, its cuts."""

    def __init__(self, report_dir: str, workdir: str, mode: str, seed: int) -> None:
        self.root = workdir
        self.journal = os.path.join(report_dir, JOURNAL)
        self.exclude = [os.path.join(workdir, "history"), os.path.join(workdir, "logs")]
        self.mode = mode
        self.seed = int(seed)
        self.cuts: List[Dict[str, Any]] = []
        self.lib = tracer_library()
        self._compacting: Optional[CompactorThread] = None
        self._journal_peak = 0  # of the journals of earlier arms
        self._journal_read = 0
        self._hole_punching = True
        self._compaction_cpu_s = 0.0

    def stop_for_kill(self, p, ranks_file: Optional[str] = None) -> bool:
        """Before a kill fault: stop `p` outside the tracer's gap (False: resumed, retry)."""
        extra = _rank_pids(ranks_file, p.inc) if p.name == "consumer" else []
        return stop_outside_gap(p, extra, self.lib)

    def stop_pid_for_kill(self, pid: int, wait_s: float = 0.05) -> bool:
        """`stop_for_kill` for one pid (a rank of the consumer group)."""
        try:
            os.kill(pid, signal.SIGSTOP)
        except (ProcessLookupError, PermissionError):
            return False
        deadline = time.monotonic() + wait_s
        while proc_state(pid) not in ("T", "t", "Z", "X", None) and time.monotonic() < deadline:
            time.sleep(0.001)
        if proc_state(pid) in ("Z", "X", None) or not in_tracer_gap(pid, self.lib):
            return True
        _kill_pid(pid, signal.SIGCONT)
        return False

    def arm(self) -> Dict[str, str]:
        """Baseline the work dir as it is now, empty the journal and start compacting it; the env of a
        traced process."""
        self._stop_compacting()
        env = arm(self.root, self.journal, exclude=self.exclude)
        self._compacting = CompactorThread(JournalCompactor(self.journal, load_baseline(self.journal)))
        return env

    def _stop_compacting(self, count: bool = True) -> Optional[JournalCompactor]:
        """Stop the compactor thread; its compactor (None when none ran), its figures added unless
        `count` is False (the caller reads more first). Raises HarnessError when it had failed
        (its model is then incomplete)."""
        t, self._compacting = self._compacting, None
        if t is None:
            return None
        c = t.stop()
        if count:
            self._count(c)
        if t.error is not None:
            raise HarnessError(f"the power-loss journal {self.journal} could not be read as it grew: "
                               f"{t.error}") from t.error
        return c

    def check(self) -> None:
        """Raise HarnessError now if the compactor has failed (a journal over its bound included)."""
        t = self._compacting
        if t is not None and t.error is not None:
            self._stop_compacting()

    def _count(self, c: Optional[JournalCompactor]) -> None:
        if c is not None:
            self._journal_peak = max(self._journal_peak, c.peak_bytes)
            self._journal_read += c.bytes_read
            self._hole_punching = self._hole_punching and c.hole_punching
            self._compaction_cpu_s += c.cpu_s

    def journal_figures(self) -> Dict[str, Any]:
        """The journal's peak size on disk (bytes, sampled at each compaction step), all it ever held,
        and whether its read bytes were freed (hole punching)."""
        t = self._compacting
        c = t.compactor if t is not None else None
        return {"journal_peak_bytes": max(self._journal_peak, c.peak_bytes if c else 0),
                "journal_bytes_written": self._journal_read + (c.bytes_read if c else 0),
                "journal_compacted": self._hole_punching and (c.hole_punching if c else True),
                "journal_compaction_cpu_s": round(self._compaction_cpu_s + (c.cpu_s if c else 0.0), 3)}

    def cut(self, sup, fault: Optional[int], cause: str, ranks_file: Optional[str] = None) -> Dict[str, Any]:
        """Freeze, kill and reap every process of `sup`, rebuild the work dir, re-arm the tracer.

        Returns the cut's record; the supervisor's extra env gets the new tracer env.
        Raises HarnessError when a process cannot be reaped (the rebuild would race it)."""
        t0 = time.monotonic()
        live = [p for p in sup.procs.values() if p.poll() is None]
        group = sup.procs.get("consumer")
        rank_pids = _rank_pids(ranks_file, group.inc) if group is not None and group in live else []
        for p in live:  # 1. nobody writes from here on
            p.signal_group(signal.SIGSTOP)
        for pid in rank_pids:
            _kill_pid(pid, signal.SIGSTOP)
        for p in live:  # 2. every process dies at the same instant
            p.signal_group(signal.SIGKILL)
        for pid in rank_pids:
            _kill_pid(pid, signal.SIGKILL)
        killed = []
        for p in live:
            try:
                p.popen.wait(timeout=REAP_S)
            except subprocess.TimeoutExpired:
                raise HarnessError(f"power cut: {p.name}#{p.inc} (pid {p.pid}) still alive {REAP_S:.0f} s after "
                                   f"SIGKILL; the work dir cannot be rebuilt under a live writer") from None
            killed.append(f"{p.name}#{p.inc}")
        deadline = time.monotonic() + REAP_S
        for pid in rank_pids:
            while proc_state(pid) not in (None, "Z", "X"):
                if time.monotonic() > deadline:
                    raise HarnessError(f"power cut: consumer rank pid {pid} still alive {REAP_S:.0f} s after SIGKILL")
                time.sleep(0.005)
        freeze_ms = (time.monotonic() - t0) * 1000
        i = len(self.cuts)
        if os.environ.get(KEEP_JOURNALS_ENV):  # diagnosis: each cut's journal and baseline, kept by the report
            for suffix in ("", ".base"):
                shutil.copyfile(self.journal + suffix, f"{self.journal}.cut{i}{suffix}")
        compactor = self._stop_compacting(count=False)
        stats = powercut(self.root, self.journal, mode=self.mode, seed=self.seed + i, compactor=compactor)  # 3.
        self._count(compactor)
        sup.extra_env.update(self.arm())  # 4. restarted processes are traced against what survived
        d = stats.as_dict()
        record = {
            "index": i, "fault": fault, "cause": cause, "mode": self.mode, "seed": self.seed + i,
            "killed": killed, "freeze_kill_ms": round(freeze_ms, 2),
            "records": d["records"], "processes_traced": d["processes"],
            "unsynced_writes_dropped": d["unsynced_writes_dropped"], "bytes_lost": d["bytes_lost"],
            "torn_bytes_kept": d["torn_bytes_kept"], "files_reverted": list(d["files_reverted"]),
            "entries_undone": list(d["entries_undone"]), "shm_removed": list(d["shm_removed"]),
            "unmodeled": list(d["unmodeled"])[:10], "rebuild_ms": round(d["rebuild_ms"], 2),
        }
        self.cuts.append(record)
        sup.h.emit("powercut", fault=fault, cause=cause, mode=self.mode, killed=killed,
                   unsynced_writes_dropped=record["unsynced_writes_dropped"], bytes_lost=record["bytes_lost"],
                   files_reverted=record["files_reverted"], entries_undone=record["entries_undone"],
                   rebuild_ms=record["rebuild_ms"], summary=stats.summary())
        return record

    def summary(self) -> Dict[str, Any]:
        """result.json's `powerloss` block: sums over the cuts, and each cut."""
        c = self.cuts
        return {
            "mode": self.mode, "cuts": len(c),
            "unsynced_writes_dropped": sum(x["unsynced_writes_dropped"] for x in c),
            "bytes_lost": sum(x["bytes_lost"] for x in c),
            "files_reverted": sum(len(x["files_reverted"]) for x in c),
            "entries_undone": sum(len(x["entries_undone"]) for x in c),
            "rebuild_ms_max": max((x["rebuild_ms"] for x in c), default=0.0),
            **self.journal_figures(),
            "per_cut": c,
        }

    def close(self, keep: bool = False) -> None:
        """Stop compacting; remove the journal and its baseline (unless `keep`)."""
        try:
            self._stop_compacting()
        except HarnessError:
            pass  # (the run is over: its model is not needed any more)
        if keep:
            return
        for p in [self.journal, self.journal + ".base", self.journal + ".base.tmp"] + glob.glob(self.journal + ".cut*"):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass


# -- kills in a traced run ------------------------------------------------------------
# The tracer journals an operation after its system call returns. A SIGKILL that lands in
# between (the call done, its record not yet written) leaves the model blind to it, and a
# later directory fsync by another process then makes the model's idea of the durable
# state one the disk could not hold (seen once in 100 runs: a sidecar rename lost this way,
# then a power cut reverted the sidecar below a value read after the kill). So a kill of a
# traced process is delivered only when none of its threads is in that gap: the process
# group is stopped, each thread's /proc/<pid>/task/<tid>/syscall read, and the kill is
# retried (after SIGCONT) when a thread is inside a mutating system call or runs code of
# the tracer library. A kill inside fsync/fdatasync is allowed: without its record the
# model takes the sync as never done, a state the disk could also hold. x86_64 system
# call numbers; elsewhere no check.

#: x86_64: write, pwrite64, writev, pwritev, pwritev2, open, openat, openat2, creat, rename, renameat,
#: renameat2, unlink, unlinkat, rmdir, link, linkat, mkdir, mkdirat, truncate, ftruncate, fallocate.
GAP_SYSCALLS_X86_64 = {1, 18, 20, 296, 328, 2, 257, 437, 85, 82, 264, 316, 87, 263, 84, 86, 265, 83, 258, 76,
                       77, 285}


def _tracer_ranges(pid: int, lib: str) -> List[tuple]:
    out = []
    try:
        with open(f"/proc/{pid}/maps") as f:
            for line in f:
                if line.rstrip().endswith(lib):
                    lo, hi = line.split()[0].split("-")
                    out.append((int(lo, 16), int(hi, 16)))
    except OSError:
        pass
    return out


def in_tracer_gap(pid: int, lib: str) -> bool:
    """Whether a stopped traced process may be between a system call and its journal record."""
    if os.uname().machine != "x86_64":
        return False
    ranges = None
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/syscall") as f:
                fields = f.read().split()
        except OSError:
            continue
        if not fields or fields[0] == "running":
            return True  # not stopped yet: cannot tell
        if fields[0] != "-1":
            if int(fields[0]) in GAP_SYSCALLS_X86_64:
                return True
            continue
        pc = int(fields[-1], 16)
        ranges = _tracer_ranges(pid, lib) if ranges is None else ranges
        if any(lo <= pc < hi for lo, hi in ranges):
            return True
    return False


def stop_outside_gap(p, extra_pids: List[int], lib: str, wait_s: float = 0.05) -> bool:
    """Stop `p`'s process group (and `extra_pids`); True when stopped outside the tracer's gap
    (the caller then kills), False when it was resumed (retry later)."""
    if not p.signal_group(signal.SIGSTOP):
        return False
    pids = [p.pid] + list(extra_pids)
    deadline = time.monotonic() + wait_s
    while any(proc_state(x) not in ("T", "t", "Z", "X", None) for x in pids):
        if time.monotonic() > deadline:
            break
        time.sleep(0.001)
    if not any(in_tracer_gap(x, lib) for x in pids if proc_state(x) not in ("Z", "X", None)):
        return True
    p.signal_group(signal.SIGCONT)
    return False


def stopped_at_powercut(workdir: str, target: str, inc: int, faults: List[Failpoint],
                        action: str = "powercut") -> Optional[int]:
    """The id of the `powercut` (or other stopping `action`) failpoint fault that `target`#`inc`
    stopped at, from its history (the failpoint event is written before the process stops itself);
    None when its history shows none (a process stopped by a pause is not a power cut)."""
    planned = [f for f in faults if f.action == action and f.target == target and f.incarnation == inc]
    if not planned:
        return None
    points = set()
    for path in glob.glob(os.path.join(workdir, "history", f"{target}*.jsonl")):
        try:
            with open(path, "rb") as fh:
                for line in fh:
                    try:
                        e = json.loads(line)
                    except ValueError:
                        continue
                    if e.get("ev") == "failpoint" and e.get("action") == action and e.get("inc") == inc:
                        points.add(e.get("point"))
        except OSError:
            continue
    for f in planned:
        if f.point in points:
            return f.id
    return None


def _rank_pids(ranks_file: Optional[str], inc: int) -> List[int]:
    """The rank pids the live consumer group `inc` published (never a stale file's pids)."""
    if not ranks_file:
        return []
    try:
        with open(ranks_file) as f:
            info = json.load(f)
    except (OSError, ValueError):
        return []
    if info.get("inc") != inc:
        return []
    return [int(p) for p in (info.get("pids") or {}).values()]


def _kill_pid(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
