"""The rebuild's model of a traced work dir: inodes, their ops, the volatile and the durable tree.

A `Node` is a file (its base content, its journaled ops, how many of them are
synced) or a directory (its volatile and durable entries). `Model.apply`
replays one journal record by the rules of `rebuild` (numbered there);
`Model.fold` compacts the model without changing what a rebuild makes of it:
synced ops folded into each file's base, nodes that left both trees dropped
(`harness.powerloss.compactor` folds as the journal grows).
`materialize(node)` is a file's durable content.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from . import journal as J

FALLOC_KEEP_SIZE, FALLOC_PUNCH_HOLE, FALLOC_ZERO_RANGE = 0x01, 0x02, 0x10


@dataclass
class Baseline:
    root: str
    dev: int
    root_ino: int
    #: relpath -> ("d", ino) or ("f", ino, content)
    entries: Dict[str, tuple] = field(default_factory=dict)


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
            self._fsync(r, namespace)
        elif op == J.SYNC or (op == J.SYNCFS and r.dev == self.dev):
            self.sync_all()

    def _fsync(self, r: J.Record, namespace: str) -> None:
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
