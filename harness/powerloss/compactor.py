"""Keep the power-loss journal bounded while the run writes it.

Model: every traced process appends whole records to one journal
(`journal.py`). A write's record is needed by a rebuild only until the file
it wrote is fsynced: after that its bytes are part of the file's durable
content, which a rebuild computes from the baseline and the synced writes.
So a compactor reads the journal as it grows and keeps the rebuild's model
(`model.Model`) up to date:

1. each step reads the records appended since the last one (`journal.scan`
   with `final=False`: a record still being written waits for the next step),
   and applies them to the model;
2. it folds every file's synced writes into that file's base content, and
   forgets files that left both the volatile and the durable tree
   (`Model.fold`), so the model holds the work dir's content plus its
   unsynced writes;
3. it frees the journal's bytes it has read: a hole is punched over them
   (`fallocate(PUNCH_HOLE | KEEP_SIZE)`), so the disk space is returned while
   the writers keep appending at the same offsets. Where the file system
   cannot punch holes, the journal is left whole (`hole_punching` False)
   and only the model is compacted.

At the cut every writer is dead: `step(final=True)` reads the rest, and the
rebuild (`rebuild.powercut(..., compactor=c)`) uses the model. The result
(durable content, dropped and torn writes, reverted files, undone entries) is
the one a rebuild from the whole journal gives (tested against it).

Figures: `peak_bytes`, the most disk the journal held at a step (its
allocated blocks, sampled before each punch), and `bytes_read`, all it ever
held. `CompactorThread` runs the steps in the harness, every `interval_s`
when at least `STEP_BYTES` were appended since the last.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import threading
import time
from typing import Optional, Set

from . import journal as J
from .model import Baseline, Model

#: Read at most this much of the journal at once (a larger single record doubles it).
CHUNK = 16 << 20
#: A step runs when at least this much was appended since the last one.
STEP_BYTES = 1 << 20
#: The disk space a run's journal may take: what the traced processes append between two steps
#: (a step follows at once while a chunk or more is waiting). Checked free before a run that cuts
#: power (`harness.validation.check_journal_space`); the peak seen is in result.json.
JOURNAL_SPACE_BYTES = 64 << 20
_BLOCK = 4096
_FALLOC_FL_KEEP_SIZE, _FALLOC_FL_PUNCH_HOLE = 0x01, 0x02


def _fallocate():
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    f = libc.fallocate
    f.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
    f.restype = ctypes.c_int
    return f


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """Free the blocks of [offset, offset+length) of `fd`, keeping its size; False where unsupported."""
    if length <= 0:
        return True
    if _fallocate.cached is None:
        _fallocate.cached = _fallocate()
    if _fallocate.cached(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) == 0:
        return True
    e = ctypes.get_errno()
    if e in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        return False
    raise OSError(e, os.strerror(e))


_fallocate.cached = None


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def allocated_bytes(path: str) -> int:
    try:
        return os.stat(path).st_blocks * 512
    except FileNotFoundError:
        return 0


class JournalCompactor:
    """The rebuild's model of one armed journal, kept current and compact (see the module doc)."""

    def __init__(self, journal: str, base: Baseline, namespace: str = "strict") -> None:
        self.journal = journal
        self.namespace = namespace
        self.model = Model(base)
        self.offset = 0  # journal bytes read and applied
        self.punched = 0  # journal bytes freed
        self.records = 0
        self.torn = 0
        self.pids: Set[int] = set()
        self.peak_bytes = 0
        self.steps = 0
        self.hole_punching = True
        self.finished = False
        self.cpu_s = 0.0  # CPU time of the steps (the thread's own)

    @property
    def bytes_read(self) -> int:
        return self.offset

    def step(self, final: bool = False) -> int:
        """Read what was appended, apply it, fold the model, free the journal's read bytes.
        `final`: every writer is dead (the rest is read whole). Returns the records applied."""
        if self.finished:
            return 0
        t0 = time.thread_time()
        try:
            fd = os.open(self.journal, os.O_RDWR)
        except FileNotFoundError:
            self.finished = final
            return 0
        try:
            self.peak_bytes = max(self.peak_bytes, os.fstat(fd).st_blocks * 512)
            applied = self._read(fd, final)
            self.model.fold()
            self._free(fd)
        finally:
            os.close(fd)
            self.cpu_s += time.thread_time() - t0
        self.steps += 1
        self.finished = final
        return applied

    def _read(self, fd: int, final: bool) -> int:
        applied = 0
        chunk = CHUNK
        while True:
            size = os.fstat(fd).st_size
            if size <= self.offset:
                return applied
            buf = os.pread(fd, min(chunk, size - self.offset), self.offset)
            last = self.offset + len(buf) >= size
            st = J.JournalStats()
            for r in J.scan(buf, st, final=final and last, start_seq=self.records):
                if r.op == J.HELLO:
                    self.pids.add(r.pid)
                else:
                    if r.data:
                        r.data = bytes(r.data)  # (not a view that would keep the whole chunk alive)
                    self.model.apply(r, self.namespace)
                applied += 1
            self.records += st.records
            self.torn += st.torn
            self.offset += st.consumed
            if last and (st.consumed == len(buf) or not final):
                return applied
            if st.consumed == 0:  # one record longer than the chunk
                chunk *= 2

    def _free(self, fd: int) -> None:
        end = self.offset // _BLOCK * _BLOCK
        if not self.hole_punching or end <= self.punched:
            return
        if punch_hole(fd, self.punched, end - self.punched):
            self.punched = end
        else:
            self.hole_punching = False


class JournalOverBound(RuntimeError):
    """The journal took more disk than its bound (the space checked free before the run)."""


class CompactorThread:
    """Runs `compactor.step()` every `interval_s` (when STEP_BYTES or more are waiting) until `stop()`;
    an error stops it and is kept (`error`), to be raised by whoever needs the model next (the run
    polls it, so a journal over `bound` ends the run at once rather than filling the disk)."""

    def __init__(self, compactor: JournalCompactor, interval_s: float = 0.25,
                 bound: Optional[int] = None) -> None:
        self.compactor = compactor
        self.interval_s = interval_s
        self.bound = JOURNAL_SPACE_BYTES if bound is None else bound
        self.error: Optional[BaseException] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="powerloss-compactor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        c = self.compactor
        while not self._stop.wait(self.interval_s):
            try:
                # (a small journal is left alone: a step costs the runner's process CPU, a stat does not)
                while not self._stop.is_set() and _size(c.journal) - c.offset >= STEP_BYTES:
                    c.step()
                    if c.peak_bytes > self.bound:
                        raise JournalOverBound(
                            f"the power-loss journal {c.journal} took {c.peak_bytes / 2**20:.1f} MiB of disk, over "
                            f"its bound of {self.bound / 2**20:.1f} MiB (hole punching "
                            f"{'works' if c.hole_punching else 'is not supported on its file system'})")
                    if _size(c.journal) - c.offset < CHUNK:
                        break  # caught up: wait for the next interval
            except BaseException as e:  # reported at the cut (or the end), not lost in a thread
                self.error = e
                return

    def stop(self) -> JournalCompactor:
        self._stop.set()
        self._thread.join()
        return self.compactor
