"""SQLiteMetadataStore: the durable single-host ledger.

WAL mode with synchronous=FULL: a transaction that returned is on disk. Each
commit batch and each ack is one `BEGIN IMMEDIATE` transaction; the marker is
read inside one read transaction, so it is a snapshot (never half of an ack).
A peer that holds the write lock (for example one paused by SIGSTOP in the
middle of a transaction) delays this process through the busy timeout and a
bounded retry instead of crashing it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from typing import Any, Dict, Iterable, List, Optional, Sequence

from .. import failpoints
from ..contracts import SampleRef, ref_to_dict
from .base import MetadataStore, as_id_set, check_refs

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS samples (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    sample_id TEXT NOT NULL UNIQUE,
    ref TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS acked (sample_id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS marker (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    global_step INTEGER,
    optimizer_durable INTEGER NOT NULL
);
"""

#: How long one call keeps retrying a locked database before giving up. A peer
#: paused inside a write transaction holds the lock for as long as it is paused.
DEFAULT_LOCK_WAIT_S = 300.0


class SQLiteMetadataStore(MetadataStore):
    profile = "durable"

    def __init__(self, path: str, *, lock_wait_s: float = DEFAULT_LOCK_WAIT_S) -> None:
        self.path = os.fspath(path)
        self._lock_wait_s = float(lock_wait_s)
        self._mutex = threading.RLock()  # one connection, many threads
        self._conn = sqlite3.connect(
            self.path, timeout=5.0, isolation_level=None, check_same_thread=False
        )
        self._retry(self._init_schema)

    # -- plumbing -----------------------------------------------------------
    def _init_schema(self) -> None:
        c = self._conn
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("PRAGMA synchronous=FULL")
        try:  # a ledger id is written in the transaction that makes the schema: then it is whole
            if c.execute("SELECT 1 FROM meta WHERE key='ledger_id'").fetchone() is not None:
                return
        except sqlite3.OperationalError as e:
            if "no such table" not in str(e).lower():
                raise
        c.execute("BEGIN IMMEDIATE")
        try:
            for stmt in _SCHEMA.strip().split(";"):
                if stmt.strip():
                    c.execute(stmt)
            c.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('ledger_id', ?)",
                (uuid.uuid4().hex,),
            )
            c.execute(
                "INSERT OR IGNORE INTO marker(id, global_step, optimizer_durable) VALUES (0, NULL, 0)"
            )
            c.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        try:
            self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    def _retry(self, fn, *args):
        deadline = time.monotonic() + self._lock_wait_s
        delay = 0.005
        while True:
            with self._mutex:
                try:
                    return fn(*args)
                except sqlite3.OperationalError as e:
                    msg = str(e).lower()
                    if "locked" not in msg and "busy" not in msg:
                        raise
                    if time.monotonic() >= deadline:
                        raise TimeoutError(
                            f"SQLite store {self.path} stayed locked for {self._lock_wait_s:.0f}s"
                        ) from e
            time.sleep(delay)
            delay = min(delay * 2, 0.2)

    def _txn(self, begin: str, body):
        """`body(conn)` in one transaction opened with `begin`, retried while the database is busy."""
        def run():
            c = self._conn
            c.execute(begin)
            try:
                result = body(c)
                c.execute("COMMIT")
                return result
            except BaseException:
                self._rollback()
                raise

        return self._retry(run)

    def _write_txn(self, body):
        return self._txn("BEGIN IMMEDIATE", body)

    def _read_txn(self, body):
        return self._txn("BEGIN", body)

    # -- contract -----------------------------------------------------------
    def ledger_id(self) -> str:
        return self._read_txn(
            lambda c: c.execute("SELECT value FROM meta WHERE key='ledger_id'").fetchone()[0]
        )

    def commit_sample(self, ref: SampleRef) -> bool:
        return self.commit_samples([ref])[0]

    def commit_samples(self, refs: Sequence[SampleRef]) -> List[bool]:
        refs = check_refs(refs)
        if not refs:
            return []
        rows = [(r.sample_id, json.dumps(ref_to_dict(r), sort_keys=True)) for r in refs]

        def body(c):
            out = []
            for sid, text in rows:
                cur = c.execute("INSERT OR IGNORE INTO samples(sample_id, ref) VALUES (?, ?)", (sid, text))
                out.append(cur.rowcount == 1)
            return out

        return self._write_txn(body)

    def is_committed(self, sample_id: str) -> bool:
        return self._read_txn(
            lambda c: c.execute("SELECT 1 FROM samples WHERE sample_id=?", (sample_id,)).fetchone()
            is not None
        )

    def get_committed(self, sample_id: str) -> Optional[SampleRef]:
        row = self._read_txn(
            lambda c: c.execute("SELECT ref FROM samples WHERE sample_id=?", (sample_id,)).fetchone()
        )
        return None if row is None else SampleRef.from_json(row[0])

    def committed_count(self) -> int:
        return self._read_txn(lambda c: c.execute("SELECT COUNT(*) FROM samples").fetchone()[0])

    def all_committed_ids(self) -> List[str]:
        return self._read_txn(
            lambda c: [r[0] for r in c.execute("SELECT sample_id FROM samples ORDER BY seq")]
        )

    def record_train_ack(
        self, sample_ids: Iterable[str], *, global_step: Optional[int], optimizer_durable: bool
    ) -> None:
        ids = sorted(as_id_set(sample_ids))

        def body(c):
            c.executemany("INSERT OR IGNORE INTO acked(sample_id) VALUES (?)", [(i,) for i in ids])
            failpoints.hit("store.mid_ack_txn")
            if global_step is None:
                c.execute("UPDATE marker SET optimizer_durable=? WHERE id=0", (int(bool(optimizer_durable)),))
            else:
                c.execute(
                    "UPDATE marker SET global_step=?, optimizer_durable=? WHERE id=0",
                    (int(global_step), int(bool(optimizer_durable))),
                )

        self._write_txn(body)

    def durable_marker(self) -> Dict[str, Any]:
        def body(c):
            acked = {r[0] for r in c.execute("SELECT sample_id FROM acked")}
            step, durable = c.execute(
                "SELECT global_step, optimizer_durable FROM marker WHERE id=0"
            ).fetchone()
            return {"acked": acked, "global_step": step, "optimizer_durable": bool(durable)}

        return self._read_txn(body)

    def close(self) -> None:
        with self._mutex:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
