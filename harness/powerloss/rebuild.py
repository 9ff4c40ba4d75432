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

SECTOR = 512
MODES = ("clean", "torn")
NAMESPACES = ("strict", "ext4-ordered")
FALLOC_KEEP_SIZE, FALLOC_PUNCH_HOLE, FALLOC_ZERO_RANGE = 0x01, 0x02, 0x10


# -- baseline ---------------------------------------------------------------------


@dataclass
class Baseline:
    root: str
    dev: int
    root_ino: int
    #: relpath -> ("d", ino) or ("f", ino, content)
    entries: Dict[str, tuple] = field(default_factory=dict)


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


# -- the model ------------------------------------------------------------------------


class Node:
    __slots__ = ("base", "dur", "folded", "ino", "kind", "name", "ops", "order", "size", "synced", "vol")

    def __init__(self, kind: str, ino: int, order: int, name: str, base: bytes = b"") -> None:
        self.kind = kind
        self.ino = ino
        self.order = order
        self.name = name
        self.base = base
        self.ops: List[tuple] = []
        self.synced = 0
        self.folded = False  # synced ops were folded into `base` (the node has been written to)
        self.size = len(base)  # the volatile size, after every journaled op
        self.vol: Dict[str, "Node"] = {}
        self.dur: Dict[str, "Node"] = {}

    def fold(self) -> int:
        """Fold the synced ops into `base` (what a later rebuild makes of the node is unchanged);
        the bytes of op data released."""
        if not self.synced:
            return 0
        freed = sum(len(o[2]) for o in self.ops[:self.synced] if o[0] == "w")
        if not isinstance(self.base, bytearray):
            self.base = bytearray(self.base)
        _apply_ops(self.base, self.ops[:self.synced])  # in place: a big file is not copied at every fold
        del self.ops[:self.synced]
        self.synced = 0
        self.folded = True
        return freed


class _Gone(Node):
    """Stands for every file that left both trees: ops on it (a write to an unlinked
    but open file) change nothing a rebuild reports, so they are dropped."""

    def __init__(self) -> None:
        super().__init__("f", -1, 0, "(gone)")

    def fold(self) -> int:
        return 0


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


#: Unmodeled operations kept (a rebuild reports the first 50).
UNMODELED_KEPT = 50


class _Notes(list):
    """A list that keeps its first UNMODELED_KEPT items (and counts the rest)."""

    dropped = 0

    def append(self, item) -> None:
        if len(self) < UNMODELED_KEPT:
            super().append(item)
        else:
            self.dropped += 1


class Model:
    def __init__(self, base: Baseline) -> None:
        self.root = base.root
        self.dev = base.dev
        self.n = 0
        self.top = self._node("d", base.root_ino, "")
        self.inodes: Dict[int, Node] = {base.root_ino: self.top}
        self.unmodeled: List[str] = _Notes()
        self.gone = _Gone()
        for rel in sorted(base.entries, key=lambda p: p.count("/")):
            e = base.entries[rel]
            parent, name = self._walk_parent(rel)
            node = self._node(e[0], e[1], rel, e[2] if e[0] == "f" else b"")
            parent.vol[name] = parent.dur[name] = node
            self.inodes[e[1]] = node

    def _node(self, kind, ino, name, base=b"") -> Node:
        self.n += 1
        return Node(kind, ino, self.n, name, base)

    def rel(self, path: str) -> Optional[str]:
        if path == self.root:
            return ""
        if path.startswith(self.root + "/"):
            return path[len(self.root) + 1:]
        return None

    def _walk_parent(self, rel: str) -> Tuple[Optional[Node], str]:
        parts = rel.split("/")
        d = self.top
        for p in parts[:-1]:
            d = d.vol.get(p)
            if d is None or d.kind != "d":
                return None, parts[-1]
        return d, parts[-1]

    def parent_of(self, path: str, rec) -> Tuple[Optional[Node], str]:
        rel = self.rel(path)
        if not rel:
            self.unmodeled.append(f"{rec!r}: path outside the root")
            return None, ""
        d, name = self._walk_parent(rel)
        if d is None:
            self.unmodeled.append(f"{rec!r}: parent directory of {path} unknown")
        return d, name

    def sync_all(self) -> None:
        for node in self.inodes.values():
            if node.kind == "d":
                node.dur = dict(node.vol)
            else:
                node.synced = len(node.ops)

    def apply(self, r: J.Record, namespace: str) -> None:
        op = r.op
        if op == J.WRITE:
            node = self.inodes.get(r.ino)
            if node is None or node.kind != "f":
                self.unmodeled.append(f"{r!r}: write to a file not seen created")
                return
            if node is self.gone:
                return
            node.ops.append(("w", r.a, r.data))
            node.size = max(node.size, r.a + len(r.data))
        elif op == J.TRUNCATE or op == J.FALLOCATE:
            node = self.inodes.get(r.ino)
            if node is None or node.kind != "f":
                self.unmodeled.append(f"{r!r}: size change of a file not seen created")
                return
            if node is self.gone:
                return
            keep = bool(r.c & FALLOC_KEEP_SIZE)
            if op == J.TRUNCATE:
                node.ops.append(("t", r.a))
                node.size = r.a
            elif r.c & (FALLOC_PUNCH_HOLE | FALLOC_ZERO_RANGE):
                node.ops.append(("z", r.a, r.b, keep))
                node.size = node.size if keep else max(node.size, r.a + r.b)
            elif r.c & ~FALLOC_KEEP_SIZE:
                self.unmodeled.append(f"{r!r}: fallocate mode {r.c:#x} not modelled")
            elif not keep:
                node.ops.append(("x", r.a + r.b))
                node.size = max(node.size, r.a + r.b)
        elif op == J.CREATE:
            d, name = self.parent_of(r.path1, r)
            if d is None:
                return
            old = d.vol.get(name)
            if old is not None and old.kind == "f" and old.ino == r.ino:
                if r.c & os.O_TRUNC:
                    old.ops.append(("t", 0))
                    old.size = 0
                return
            node = self._node("f", r.ino, r.path1)
            d.vol[name] = node
            self.inodes[r.ino] = node
        elif op == J.MKDIR:
            d, name = self.parent_of(r.path1, r)
            if d is not None:
                node = self._node("d", r.ino, r.path1)
                d.vol[name] = node
                self.inodes[r.ino] = node
        elif op == J.UNLINK or op == J.RMDIR:
            d, name = self.parent_of(r.path1, r)
            if d is not None:
                d.vol.pop(name, None)
        elif op == J.RENAME or op == J.LINK:
            node = None
            if r.path1:
                sd, sname = self.parent_of(r.path1, r)
                node = sd.vol.get(sname) if sd is not None else None
                if node is None:
                    if sd is not None:
                        self.unmodeled.append(f"{r!r}: source not in the model")
                    return
            else:
                self.unmodeled.append(f"{r!r}: a file moved in from outside the root")
                return
            if r.path2:
                dd, dname = self.parent_of(r.path2, r)
                if dd is None:
                    return
                if op == J.LINK:
                    dd.vol[dname] = node
                elif r.c & 2:  # RENAME_EXCHANGE
                    other = dd.vol.get(dname)
                    dd.vol[dname] = node
                    if other is not None:
                        sd.vol[sname] = other
                elif dd.vol.get(dname) is not node:
                    sd.vol.pop(sname, None)
                    dd.vol[dname] = node
            elif op == J.RENAME:
                sd.vol.pop(sname, None)
        elif op == J.FSYNC or op == J.FDATASYNC:
            node = self.inodes.get(r.ino)
            if node is None and r.is_dir and r.path1:
                rel = self.rel(r.path1)
                if rel == "":
                    node = self.top
                elif rel:
                    d, name = self._walk_parent(rel)
                    node = d.vol.get(name) if d is not None else None
            if node is None:
                self.unmodeled.append(f"{r!r}: fsync of a file not in the model")
                return
            if node.kind == "d":
                node.dur = dict(node.vol)
            else:
                node.synced = len(node.ops)
            if namespace == "ext4-ordered":
                for n in self.inodes.values():
                    if n.kind == "d":
                        n.dur = dict(n.vol)
        elif op == J.SYNC or (op == J.SYNCFS and r.dev == self.dev):
            self.sync_all()

    def fold(self) -> int:
        """Compact the model: every file's synced ops folded into its base, and every
        node that left both trees replaced by `gone` (its ops can no longer matter).
        A rebuild from the folded model reports exactly what it would have without.
        Returns the bytes of op data released."""
        live = {id(n) for n in self.tree(True).values()} | {id(n) for n in self.tree(False).values()}
        live.add(id(self.top))
        freed = 0
        for ino, node in list(self.inodes.items()):
            if id(node) not in live:
                if node is not self.gone:
                    freed += sum(len(o[2]) for o in node.ops if o[0] == "w") + len(node.base)
                    self.inodes[ino] = self.gone
            elif node.kind == "f":
                freed += node.fold()
        return freed

    def tree(self, durable: bool) -> Dict[str, Node]:
        out: Dict[str, Node] = {}
        stack = [("", self.top)]
        seen = {id(self.top)}
        while stack:
            rel, d = stack.pop()
            for name, node in (d.dur if durable else d.vol).items():
                sub = f"{rel}/{name}" if rel else name
                out[sub] = node
                if node.kind == "d" and id(node) not in seen:
                    seen.add(id(node))
                    stack.append((sub, node))
        return out


def _apply_ops(buf: bytearray, ops) -> None:
    for op in ops:
        k = op[0]
        if k == "w":
            off, data = op[1], op[2]
            if off > len(buf):
                buf.extend(bytes(off - len(buf)))
            buf[off:off + len(data)] = data
        elif k == "t":
            n = op[1]
            if n < len(buf):
                del buf[n:]
            else:
                buf.extend(bytes(n - len(buf)))
        elif k == "x":
            if op[1] > len(buf):
                buf.extend(bytes(op[1] - len(buf)))
        elif k == "z":
            off, n, keep = op[1], op[2], op[3]
            end = min(off + n, len(buf)) if keep else off + n
            if end > len(buf):
                buf.extend(bytes(end - len(buf)))
            if end > off:
                buf[off:end] = bytes(end - off)


def materialize(node: Node, extra=()) -> bytes:
    """The node's durable content: baseline, then its synced ops, then `extra`."""
    buf = bytearray(node.base)
    _apply_ops(buf, node.ops[:node.synced])
    _apply_ops(buf, extra)
    return bytes(buf)


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
