"""Rebuild a work dir to a state a disk could hold after a power failure.

Persistence model (strict POSIX, the default):

1. What was under the root when tracing began (the baseline) is durable.
2. A file is an inode. Its content after the cut is the baseline content plus
   every write/truncate/fallocate journaled before its last fsync or
   fdatasync; an fsync covers the writes of every process journaled before
   it, whatever descriptor made them. sync_file_range makes nothing durable
   (it neither flushes metadata nor the device cache).
3. In `torn` mode, each file additionally keeps a seeded prefix of its
   unsynced operations, the last kept write cut at a 512-byte sector boundary
   of the file (a sector is written whole or not at all).
4. A directory entry (create, rename, unlink, link, mkdir, rmdir) persists
   only if its directory was fsynced (or fdatasynced) after it: an fsync of
   directory D makes D's entries, as they are at that moment, durable. A
   rename without a directory fsync is undone; an unlink without one is
   undone (the file comes back with its durable content). An entry whose
   directory is not itself durable vanishes with it.
   In `ext4-ordered` namespace mode, any fsync also makes every earlier
   namespace operation durable.
5. sync() and syncfs() make everything durable.
6. SQLite's shared-memory index (`*-shm`) never survives.
7. Files under the root that no traced process touched are left alone.
8. An operation whose process was killed after the call but before its
   record is unknown to the model; where it changed a file's size the file is
   rewritten to its durable content, otherwise it stays (an unsynced write
   persisting is also a state a disk could hold).

Operations: `arm` (baseline + empty journal + the tracer environment),
`snapshot_baseline`, `durable_state` (the model only, no disk access: for the
simulation engine), `powercut` (rewrite the dir in place, return stats).
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
import stat
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from harness.exit_codes import HarnessError, UsageError

from . import journal as J
from .model import Baseline, Model, Node, materialize

SECTOR = 512
MODES = ("clean", "torn")
NAMESPACES = ("strict", "ext4-ordered")


# -- baseline ---------------------------------------------------------------------


def snapshot_baseline(root: str, exclude: Sequence[str] = ()) -> Baseline:
    """What is under `root` now, taken as durable (contents copied: the dir starts small);
    paths under `exclude` are left out (never traced, never rebuilt)."""
    r = os.path.realpath(root)
    skip = {os.path.realpath(x) for x in exclude}
    try:
        st = os.stat(r)
    except OSError as e:
        raise UsageError(f"the power-loss work dir {root} cannot be read: {e}") from e
    base = Baseline(root=r, dev=st.st_dev, root_ino=st.st_ino)
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(os.path.join(r, rel) if rel else r) as it:
            for e in it:
                sub = f"{rel}/{e.name}" if rel else e.name
                if os.path.join(r, sub) in skip:
                    continue
                s = e.stat(follow_symlinks=False)
                if stat.S_ISDIR(s.st_mode):
                    base.entries[sub] = ("d", s.st_ino)
                    stack.append(sub)
                elif stat.S_ISREG(s.st_mode):
                    with open(e.path, "rb") as f:
                        base.entries[sub] = ("f", s.st_ino, f.read())
    return base


def baseline_path(journal: str) -> str:
    return journal + ".base"


def arm(root: str, journal: str, exclude: Sequence[str] = ()) -> Dict[str, str]:
    """Start (or restart) tracing of `root`: baseline saved next to the journal, the
    journal emptied. Returns the variables to add to each traced process's env
    (paths under `exclude` are neither traced nor touched by the rebuild)."""
    from .build import tracer_env

    env = tracer_env(root, journal, exclude=exclude)
    base = snapshot_baseline(root, exclude)
    tmp = baseline_path(journal) + ".tmp"
    try:
        with open(tmp, "wb") as f:
            pickle.dump(base, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, baseline_path(journal))
        with open(journal, "wb"):
            pass
    except OSError as e:  # (a write that fails with ENOSPC names no file: say which)
        if e.filename is None:
            e.filename = tmp
        raise
    return env


def load_baseline(journal: str) -> Baseline:
    p = baseline_path(journal)
    try:
        with open(p, "rb") as f:
            return pickle.load(f)
    except FileNotFoundError as e:
        raise HarnessError(f"no power-loss baseline at {p}: call arm() before starting traced processes") from e


# -- the model's result ------------------------------------------------------------


@dataclass
class PowercutStats:
    mode: str = "clean"
    namespace: str = "strict"
    seed: int = 0
    records: int = 0
    torn_records: int = 0
    processes: int = 0
    unsynced_writes_dropped: int = 0
    bytes_lost: int = 0
    torn_bytes_kept: int = 0
    files_reverted: List[str] = field(default_factory=list)
    entries_undone: List[str] = field(default_factory=list)
    shm_removed: List[str] = field(default_factory=list)
    unmodeled: List[str] = field(default_factory=list)
    rebuild_ms: float = 0.0

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    def summary(self) -> str:
        return (f"power cut ({self.mode}, {self.namespace}): {self.unsynced_writes_dropped} unsynced writes dropped, "
                f"{self.bytes_lost} bytes lost, {len(self.files_reverted)} files reverted, "
                f"{len(self.entries_undone)} directory entries undone")


def _torn_tail(node: Node, rng: random.Random) -> Tuple[List[tuple], int]:
    """A seeded prefix of the unsynced ops, the last write cut at a sector boundary."""
    unsynced = node.ops[node.synced:]
    k = rng.randint(0, len(unsynced))
    kept = list(unsynced[:k])
    if kept and kept[-1][0] == "w":
        off, data = kept[-1][1], kept[-1][2]
        end = off + len(data)
        cuts = list(range((off // SECTOR + 1) * SECTOR, end, SECTOR)) + [end]
        cut = rng.choice(cuts)
        kept[-1] = ("w", off, data[:cut - off])
    return kept, sum(len(o[2]) for o in kept if o[0] == "w")


def durable_state(records, base: Baseline, mode: str = "clean", seed: int = 0, namespace: str = "strict",
                  stats: Optional[PowercutStats] = None):
    """Replay the journal on the baseline. Returns (durable tree relpath -> Node, volatile
    tree, content: Node -> bytes for each file that must be rewritten, stats)."""
    if mode not in MODES:
        raise UsageError(f"power-cut mode {mode!r} is not one of {', '.join(MODES)}")
    if namespace not in NAMESPACES:
        raise UsageError(f"power-cut namespace model {namespace!r} is not one of {', '.join(NAMESPACES)}")
    m = Model(base)
    pids = set()
    n = 0
    for r in records:
        n += 1
        if r.op == J.HELLO:
            pids.add(r.pid)
        else:
            m.apply(r, namespace)
    return durable_state_of(m, n, len(pids), mode, seed, namespace, stats)


def durable_state_of(m: Model, records: int, processes: int, mode: str = "clean", seed: int = 0,
                     namespace: str = "strict", stats: Optional[PowercutStats] = None):
    """`durable_state` of a model that has seen the journal's `records` (of `processes` processes)
    already (a `JournalCompactor`'s, folded or not: the same result)."""
    if mode not in MODES:
        raise UsageError(f"power-cut mode {mode!r} is not one of {', '.join(MODES)}")
    st = stats or PowercutStats()
    st.mode, st.namespace, st.seed = mode, namespace, seed
    st.records += records
    st.processes = processes
    st.unmodeled = list(m.unmodeled[:50])
    dur, vol = m.tree(True), m.tree(False)
    rng = random.Random(seed)
    content: Dict[int, bytes] = {}
    vol_at = {id(n): p for p, n in vol.items()}
    for path in sorted(dur, key=lambda p: dur[p].order):
        node = dur[path]
        if node.kind != "f" or id(node) in content:
            continue
        if path.endswith("-shm"):
            continue
        unsynced = node.ops[node.synced:]
        extra, kept_bytes = (_torn_tail(node, rng) if (mode == "torn" and unsynced) else ([], 0))
        lost_writes = [o for o in unsynced if o[0] == "w"]
        if unsynced:
            st.unsynced_writes_dropped += len(lost_writes) - sum(
                1 for a, b in zip(extra, unsynced) if a[0] == "w" and len(a[2]) == len(b[2]))
            st.bytes_lost += sum(len(o[2]) for o in lost_writes) - kept_bytes
            st.torn_bytes_kept += kept_bytes
            if len(extra) < len(unsynced) or (extra and extra[-1] is not unsynced[len(extra) - 1]):
                st.files_reverted.append(path)
        if unsynced or vol.get(path) is not node or vol_at.get(id(node)) is None:
            content[id(node)] = materialize(node, extra)
    # unsynced writes to files that do not survive at all
    survivors = {id(n) for n in dur.values()}
    for path, node in vol.items():
        if node.kind == "f" and id(node) not in survivors:
            lost = [o for o in node.ops[node.synced:] if o[0] == "w"]
            st.unsynced_writes_dropped += len(lost)
            st.bytes_lost += sum(len(o[2]) for o in lost)
    for p in sorted(set(vol) | set(dur)):
        a, b = vol.get(p), dur.get(p)
        if a is b:
            continue
        if b is None:
            st.entries_undone.append(f"{p} (its creation or rename into place was not durable)")
        elif a is None:
            st.entries_undone.append(f"{p} (its removal or rename away was not durable)")
        else:
            st.entries_undone.append(f"{p} (replaced by a rename that was not durable)")
    return dur, vol, content, st


# -- the disk ------------------------------------------------------------------------


def _remove(path: str) -> None:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass


def powercut(root: str, journal: str, mode: str = "clean", seed: int = 0, namespace: str = "strict",
             baseline: Optional[Baseline] = None, compactor=None) -> PowercutStats:
    """Rewrite `root` in place to the state the model says survived a power cut.

    Every traced process must be dead already. `compactor`: the journal's
    `JournalCompactor`, which has read it as it grew (its last records are read
    now); without one the whole journal is read. Raises HarnessError naming the
    path that could not be rewritten."""
    t0 = time.perf_counter()
    r = os.path.realpath(root)
    st = PowercutStats()
    if compactor is not None:  # the journal was read (and folded) while the run went on
        if r != compactor.model.root:
            raise UsageError(f"the power-loss compactor of {journal} is for {compactor.model.root}, not {root}")
        compactor.step(final=True)
        dur, vol, content, st = durable_state_of(compactor.model, compactor.records, len(compactor.pids), mode,
                                                 seed, namespace, st)
        st.torn_records = compactor.torn
    else:
        base = baseline if baseline is not None else load_baseline(journal)
        if r != base.root:
            raise UsageError(f"the baseline at {baseline_path(journal)} is for {base.root}, not {root}")
        jst = J.JournalStats()
        try:
            with open(journal, "rb") as f:
                buf = f.read()
        except FileNotFoundError:
            buf = b""
        dur, vol, content, st = durable_state(J.parse(buf, jst), base, mode, seed, namespace, st)
        st.torn_records = jst.torn
    try:
        # 1. entries that are on disk but do not survive (deepest first)
        for p in sorted(vol, key=lambda p: -p.count("/")):
            if dur.get(p) is not vol[p]:
                _remove(os.path.join(r, p))
        # 2. directories, then files, of the durable tree
        written: Dict[int, str] = {}
        for p in sorted(dur, key=lambda p: p.count("/")):
            node = dur[p]
            full = os.path.join(r, p)
            if node.kind == "d":
                if not os.path.isdir(full):
                    if os.path.lexists(full):
                        _remove(full)
                    os.mkdir(full)
                continue
            if p.endswith("-shm"):
                continue
            data = content.get(id(node))
            if data is None:
                try:
                    size = os.lstat(full).st_size
                except FileNotFoundError:
                    size = None
                if size is not None and (size == node.size or not (node.ops or node.folded)):
                    continue  # unchanged: the disk already holds the durable content
                # missing, or changed by an op whose process died before journaling it
                data = materialize(node)
            if id(node) in written:
                if os.path.lexists(full):
                    _remove(full)
                os.link(written[id(node)], full)
                continue
            if os.path.isdir(full):
                shutil.rmtree(full)
            with open(full, "wb") as f:
                f.write(data)
            written[id(node)] = full
        # 3. SQLite shared-memory files never survive
        for p, node in list(dur.items()) + list(vol.items()):
            if p.endswith("-shm") and node.kind == "f":
                full = os.path.join(r, p)
                if os.path.lexists(full):
                    os.unlink(full)
                    st.shm_removed.append(p)
    except OSError as e:
        raise HarnessError(f"power-cut rebuild of {root} failed at {getattr(e, 'filename', None) or root}: {e}") from e
    st.rebuild_ms = (time.perf_counter() - t0) * 1000
    return st
