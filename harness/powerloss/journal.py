"""Read the durability tracer's journal.

Model: the journal is a sequence of binary records appended by every traced
process, each with one writev() on an O_APPEND descriptor, so the file order
is one total order of the traced operations. A record is

    header (88 bytes, little-endian): magic "DFHJ", op, flags, total length,
        pid, fd, path1 length, path2 length, pad, nonce, st_dev, st_ino,
        a, b, c, data length
    path1, path2 (UTF-8 bytes, absolute), data, trailer (= the nonce)

Operations (`op`): HELLO (a process started tracing), CREATE (open with
O_CREAT/O_TRUNC; c = open flags), WRITE (a = offset, data = the bytes),
TRUNCATE (a = length), FALLOCATE (a = offset, b = length, c = mode), RENAME
(path1 -> path2; c = renameat2 flags), UNLINK, RMDIR, LINK (path1 -> path2),
MKDIR, FSYNC, FDATASYNC (flags bit 1: the fd is a directory, path1 its path),
SYNC_FILE_RANGE, SYNCFS, SYNC.

Rules:
1. A record whose trailer does not match its nonce, or whose length runs past
   the end, is torn (a process killed inside its journal write); it is skipped
   and reading resumes at the next magic whose record is whole.
2. Data is returned as memoryviews into one buffer (no copy per record).
3. A journal still being written is read in steps (`scan(final=False)`): a
   step stops where a decision needs bytes not written yet, so the steps
   decide exactly what one read of the finished journal would.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterator, List, Optional, Union

MAGIC = 0x4A484644
MAGIC_BYTES = struct.pack("<I", MAGIC)
HEADER = struct.Struct("<IHHIIiIIIQQQQQQQ")
assert HEADER.size == 88
TRAILER = struct.Struct("<Q")

HELLO, CREATE, WRITE, TRUNCATE, FALLOCATE, RENAME, UNLINK, RMDIR, LINK, MKDIR = range(1, 11)
FSYNC, FDATASYNC, SYNC_FILE_RANGE, SYNCFS, SYNC = range(11, 16)
OP_NAMES = {
    HELLO: "hello", CREATE: "create", WRITE: "write", TRUNCATE: "truncate", FALLOCATE: "fallocate",
    RENAME: "rename", UNLINK: "unlink", RMDIR: "rmdir", LINK: "link", MKDIR: "mkdir", FSYNC: "fsync",
    FDATASYNC: "fdatasync", SYNC_FILE_RANGE: "sync_file_range", SYNCFS: "syncfs", SYNC: "sync",
}
F_ISDIR = 1


@dataclass(slots=True)
class Record:
    seq: int  # position in the total order
    op: int
    flags: int
    pid: int
    fd: int
    dev: int
    ino: int
    a: int
    b: int
    c: int
    path1: str
    path2: str
    data: Union[memoryview, bytes]

    @property
    def name(self) -> str:
        return OP_NAMES.get(self.op, f"op{self.op}")

    @property
    def is_dir(self) -> bool:
        return bool(self.flags & F_ISDIR)

    def __repr__(self) -> str:  # short, for failure messages
        extra = f" {self.path1}" if self.path1 else ""
        extra += f" -> {self.path2}" if self.path2 else ""
        if self.op == WRITE:
            extra += f" ino={self.ino} off={self.a} len={len(self.data)}"
        elif self.op in (FSYNC, FDATASYNC, TRUNCATE):
            extra += f" ino={self.ino} a={self.a}"
        return f"<{self.seq} {self.name} pid={self.pid}{extra}>"


class JournalStats:
    def __init__(self) -> None:
        self.records = 0
        self.torn = 0
        self.bytes = 0
        self.consumed = 0  # bytes scanned to a decision (all of them for a final scan)


def parse(buf: Union[bytes, bytearray, memoryview], stats: Optional[JournalStats] = None) -> Iterator[Record]:
    """Every whole record of a finished journal `buf`, in order (rule 1: torn ones skipped)."""
    return scan(buf, stats=stats)


def scan(buf: Union[bytes, bytearray, memoryview], stats: Optional[JournalStats] = None, final: bool = True,
         start_seq: int = 0) -> Iterator[Record]:
    """The records of `buf`, numbered from `start_seq`.

    `final`: `buf` is the whole rest of the journal (every writer is dead): a
    record running past its end is torn. Otherwise (`final=False`, writers
    alive) the scan stops before such a record, and before torn bytes with no
    whole record after them yet, as more may still come: `stats.consumed` says
    where, so a later scan resumes there and decides exactly as one scan of
    the whole journal would have.
    """
    mv = memoryview(buf)
    n = len(mv)
    pos = 0
    seq = start_seq
    unpack = HEADER.unpack_from
    trailer = TRAILER.unpack_from
    hsize = HEADER.size
    raw = bytes(mv) if not isinstance(buf, bytes) else buf
    torn = 0
    while pos + hsize + 8 <= n:
        (magic, op, flags, total, pid, fd, l1, l2, _pad, nonce, dev, ino, a, b, c, dlen) = unpack(raw, pos)
        end = pos + total
        well_formed = magic == MAGIC and total == hsize + l1 + l2 + dlen + 8
        if not final and well_formed and end > n:
            break  # still being written
        if not well_formed or end > n or trailer(raw, end - 8)[0] != nonce:
            nxt = raw.find(MAGIC_BYTES, pos + 1)
            if nxt < 0 and not final:
                break  # torn, but where the next record starts is not written yet
            torn += 1
            if nxt < 0:
                break
            pos = nxt
            continue
        p = pos + hsize
        path1 = raw[p:p + l1].decode("utf-8", "surrogateescape") if l1 else ""
        p += l1
        path2 = raw[p:p + l2].decode("utf-8", "surrogateescape") if l2 else ""
        p += l2
        yield Record(seq, op, flags, pid, fd, dev, ino, a, b, c, path1, path2, mv[p:p + dlen] if dlen else b"")
        seq += 1
        pos = end
    if stats is not None:
        stats.records = seq - start_seq
        stats.torn = torn
        stats.bytes = n
        stats.consumed = n if final else pos


def read_journal(path: str, stats: Optional[JournalStats] = None) -> List[Record]:
    """All whole records of the journal at `path`, in order (missing file: none)."""
    try:
        with open(path, "rb") as f:
            buf = f.read()
    except FileNotFoundError:
        return []
    return list(parse(buf, stats))
