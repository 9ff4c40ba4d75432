"""A bug zoo: MetadataStore backends written against the contract, each broken
in one realistic way (and a few correct-but-unusual ones that must pass).

`ZOO` maps each broken store to the tier and property certification must
name when it rejects it.
Every SQLite store here waits up to 60 s for a lock, so what certification
finds is the bug, not lock contention.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import sqlite3
import threading
import time
from typing import Any, Dict, Iterable, List, Optional, Sequence

from reference_impl.contracts import SampleRef, ref_to_dict
from reference_impl.stores.base import MetadataStore, as_id_set, check_ref, check_refs

_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (seq INTEGER PRIMARY KEY AUTOINCREMENT, sample_id TEXT NOT NULL UNIQUE,
                                    ref TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS acked (sample_id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS marker (id INTEGER PRIMARY KEY CHECK (id = 0), global_step INTEGER,
                                   optimizer_durable INTEGER NOT NULL, blob TEXT);
"""


class SqliteStore(MetadataStore):
    """A correct SQLite store; the broken ones below override one piece of it."""

    profile = "durable"
    schema = _SCHEMA

    def __init__(self, path: str) -> None:
        self.path = str(path)
        self._lock = threading.RLock()
        self.conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None, check_same_thread=False)
        with self._lock:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")

            def init(c):
                for stmt in self.schema.strip().split(";"):
                    if stmt.strip():
                        c.execute(stmt)
                c.execute("INSERT OR IGNORE INTO marker(id, global_step, optimizer_durable, blob) "
                          "VALUES (0, NULL, 0, '[]')")

            self._txn(init)

    # plumbing
    def _txn(self, body, mode: str = "IMMEDIATE"):
        with self._lock:
            c = self.conn
            c.execute(f"BEGIN {mode}")
            try:
                out = body(c)
                c.execute("COMMIT")
                return out
            except BaseException:
                c.execute("ROLLBACK")
                raise

    def _read(self, body):
        return self._txn(body, mode="DEFERRED")

    @staticmethod
    def _dump(ref) -> str:
        return json.dumps(ref_to_dict(ref), sort_keys=True)

    @staticmethod
    def _load(text: str) -> SampleRef:
        return SampleRef.from_json(text)

    # contract
    def commit_sample(self, ref) -> bool:
        return self.commit_samples([ref])[0]

    def commit_samples(self, refs: Sequence[Any]) -> List[bool]:
        refs = check_refs(refs)
        rows = [(r.sample_id, self._dump(r)) for r in refs]

        def body(c):
            return [
                c.execute("INSERT OR IGNORE INTO samples(sample_id, ref) VALUES (?, ?)", row).rowcount == 1
                for row in rows
            ]

        return self._txn(body) if rows else []

    def is_committed(self, sample_id: str) -> bool:
        return self._read(
            lambda c: c.execute("SELECT 1 FROM samples WHERE sample_id=?", (sample_id,)).fetchone() is not None)

    def get_committed(self, sample_id: str):
        row = self._read(lambda c: c.execute("SELECT ref FROM samples WHERE sample_id=?", (sample_id,)).fetchone())
        return None if row is None else self._load(row[0])

    def committed_count(self) -> int:
        return self._read(lambda c: c.execute("SELECT COUNT(*) FROM samples").fetchone()[0])

    def all_committed_ids(self) -> List[str]:
        return self._read(lambda c: [r[0] for r in c.execute("SELECT sample_id FROM samples ORDER BY seq")])

    def record_train_ack(self, sample_ids: Iterable[str], *, global_step: Optional[int],
                         optimizer_durable: bool) -> None:
        ids = sorted(as_id_set(sample_ids))

        def body(c):
            c.executemany("INSERT OR IGNORE INTO acked(sample_id) VALUES (?)", [(i,) for i in ids])
            if global_step is None:
                c.execute("UPDATE marker SET optimizer_durable=? WHERE id=0", (int(optimizer_durable),))
            else:
                c.execute("UPDATE marker SET global_step=?, optimizer_durable=? WHERE id=0",
                          (int(global_step), int(optimizer_durable)))

        self._txn(body)

    def durable_marker(self) -> Dict[str, Any]:
        def body(c):
            acked = {r[0] for r in c.execute("SELECT sample_id FROM acked")}
            step, flag = c.execute("SELECT global_step, optimizer_durable FROM marker WHERE id=0").fetchone()
            return {"acked": acked, "global_step": step, "optimizer_durable": bool(flag)}

        return self._read(body)

    def close(self) -> None:
        with self._lock:
            self.conn.close()


# ---------------------------------------------------------------------------
# broken stores
# ---------------------------------------------------------------------------


class CheckThenInsertStore(SqliteStore):
    """Dedup by SELECT-then-INSERT outside a transaction: two processes both see 'absent'."""

    def commit_samples(self, refs):
        out = []
        for r in list(refs):
            check_ref(r)
            with self._lock:
                seen = self.conn.execute("SELECT 1 FROM samples WHERE sample_id=?", (r.sample_id,)).fetchone()
                if seen is None:
                    self.conn.execute("INSERT OR IGNORE INTO samples(sample_id, ref) VALUES (?, ?)",
                                      (r.sample_id, self._dump(r)))
            out.append(seen is None)
        return out


class SplitAckTxnStore(SqliteStore):
    """The acked ids and the marker row are written in two transactions."""

    def record_train_ack(self, sample_ids, *, global_step, optimizer_durable):
        ids = sorted(as_id_set(sample_ids))
        self._txn(lambda c: c.executemany("INSERT OR IGNORE INTO acked(sample_id) VALUES (?)", [(i,) for i in ids]))

        def marker(c):
            if global_step is None:
                c.execute("UPDATE marker SET optimizer_durable=? WHERE id=0", (int(optimizer_durable),))
            else:
                c.execute("UPDATE marker SET global_step=?, optimizer_durable=? WHERE id=0",
                          (int(global_step), int(optimizer_durable)))

        self._txn(marker)


_MARKER_CACHE: Dict[str, Dict[str, Any]] = {}


class CachedMarkerStore(SqliteStore):
    """durable_marker is cached per process after the first read; only this process's acks refresh it."""

    def durable_marker(self):
        m = _MARKER_CACHE.get(self.path)
        if m is None:
            m = super().durable_marker()
            _MARKER_CACHE[self.path] = m
        return {"acked": set(m["acked"]), "global_step": m["global_step"], "optimizer_durable": m["optimizer_durable"]}

    def record_train_ack(self, sample_ids, *, global_step, optimizer_durable):
        super().record_train_ack(sample_ids, global_step=global_step, optimizer_durable=optimizer_durable)
        _MARKER_CACHE[self.path] = super().durable_marker()


class TwoStatementMarkerStore(SqliteStore):
    """durable_marker reads the acked ids and the marker row in two separate statements (no snapshot)."""

    def durable_marker(self):
        with self._lock:
            acked = {r[0] for r in self.conn.execute("SELECT sample_id FROM acked")}
            step, flag = self.conn.execute("SELECT global_step, optimizer_durable FROM marker WHERE id=0").fetchone()
        return {"acked": acked, "global_step": step, "optimizer_durable": bool(flag)}


class NoneErasesStepStore(SqliteStore):
    """global_step=None overwrites the step with NULL instead of keeping it."""

    def record_train_ack(self, sample_ids, *, global_step, optimizer_durable):
        ids = sorted(as_id_set(sample_ids))

        def body(c):
            c.executemany("INSERT OR IGNORE INTO acked(sample_id) VALUES (?)", [(i,) for i in ids])
            c.execute("UPDATE marker SET global_step=?, optimizer_durable=? WHERE id=0",
                      (global_step, int(optimizer_durable)))

        self._txn(body)


class ZeroStepStore(SqliteStore):
    """`if global_step:` treats step 0 as 'no step'."""

    def record_train_ack(self, sample_ids, *, global_step, optimizer_durable):
        super().record_train_ack(sample_ids, global_step=global_step or None, optimizer_durable=optimizer_durable)


class UnorderedIdsStore(SqliteStore):
    """all_committed_ids sorted by id, not in first-commit order."""

    def all_committed_ids(self):
        return self._read(lambda c: [r[0] for r in c.execute("SELECT sample_id FROM samples ORDER BY sample_id")])


class FlatSpecStore(SqliteStore):
    """Feature specs are stored flat: only name, shape and dtype survive the round trip."""

    @staticmethod
    def _dump(ref) -> str:
        d = ref_to_dict(ref)
        d["feature_specs"] = {k: {"name": v["name"], "shape": v["shape"], "dtype": v["dtype"]}
                              for k, v in d["feature_specs"].items()}
        return json.dumps(d, sort_keys=True)


class BatchRepeatFreshStore(SqliteStore):
    """Freshness is decided against the state before the batch: a repeated id in one batch is fresh twice."""

    def commit_samples(self, refs):
        refs = check_refs(refs)

        def body(c):
            before = {sid for (sid,) in c.execute("SELECT sample_id FROM samples")}
            for r in refs:
                c.execute("INSERT OR IGNORE INTO samples(sample_id, ref) VALUES (?, ?)", (r.sample_id, self._dump(r)))
            return [r.sample_id not in before for r in refs]

        return self._txn(body) if refs else []


class MemoryMarker:
    """The ack marker held in this instance's memory, every ack and read under `self._marker_lock`."""

    def _init_marker(self, lock) -> None:
        self._marker_lock = lock
        self._acked: set = set()
        self._step = None
        self._flag = False

    def record_train_ack(self, sample_ids, *, global_step, optimizer_durable):
        with self._marker_lock:
            self._acked |= as_id_set(sample_ids)
            if global_step is not None:
                self._step = int(global_step)
            self._flag = bool(optimizer_durable)

    def durable_marker(self):
        with self._marker_lock:
            return {"acked": set(self._acked), "global_step": self._step, "optimizer_durable": self._flag}


class MemoryAcksStore(MemoryMarker, SqliteStore):
    """Commits are durable, acks are held only in this instance's memory."""

    def __init__(self, path):
        super().__init__(path)
        self._init_marker(self._lock)


class BufferedCommitsStore(SqliteStore):
    """Commits are buffered in memory and written every 64 refs or on close."""

    FLUSH_AT = 64

    def __init__(self, path):
        super().__init__(path)
        self._buf: Dict[str, str] = {}

    def commit_samples(self, refs):
        out = []
        with self._lock:
            for r in list(refs):
                check_ref(r)
                fresh = r.sample_id not in self._buf and not super().is_committed(r.sample_id)
                if fresh:
                    self._buf[r.sample_id] = self._dump(r)
                out.append(fresh)
            if len(self._buf) >= self.FLUSH_AT:
                self._flush()
        return out

    def _flush(self):
        rows = list(self._buf.items())
        self._buf.clear()
        if rows:
            self._txn(lambda c: c.executemany("INSERT OR IGNORE INTO samples(sample_id, ref) VALUES (?, ?)", rows))

    def is_committed(self, sample_id):
        with self._lock:
            self._flush()
            return super().is_committed(sample_id)

    def get_committed(self, sample_id):
        with self._lock:
            self._flush()
            return super().get_committed(sample_id)

    def committed_count(self):
        with self._lock:
            self._flush()
            return super().committed_count()

    def all_committed_ids(self):
        with self._lock:
            self._flush()
            return super().all_committed_ids()

    def close(self):
        with self._lock:
            self._flush()
        super().close()


class LostUpdateAckStore(SqliteStore):
    """Acked ids kept as one JSON list, read-modify-written in two statements: concurrent acks lose updates."""

    def record_train_ack(self, sample_ids, *, global_step, optimizer_durable):
        ids = as_id_set(sample_ids)
        with self._lock:
            (blob,) = self.conn.execute("SELECT blob FROM marker WHERE id=0").fetchone()
            acked = set(json.loads(blob)) | ids

            def write(c):
                c.execute("UPDATE marker SET blob=? WHERE id=0", (json.dumps(sorted(acked)),))
                if global_step is None:
                    c.execute("UPDATE marker SET optimizer_durable=? WHERE id=0", (int(optimizer_durable),))
                else:
                    c.execute("UPDATE marker SET global_step=?, optimizer_durable=? WHERE id=0",
                              (int(global_step), int(optimizer_durable)))

            self._txn(write)

    def durable_marker(self):
        def body(c):
            blob, step, flag = c.execute(
                "SELECT blob, global_step, optimizer_durable FROM marker WHERE id=0").fetchone()
            return {"acked": set(json.loads(blob)), "global_step": step, "optimizer_durable": bool(flag)}

        return self._read(body)


class CaseInsensitiveIdStore(SqliteStore):
    """sample_id compared case-insensitively (COLLATE NOCASE): 'S0' is taken to be 's0'."""

    schema = _SCHEMA.replace("sample_id TEXT NOT NULL UNIQUE", "sample_id TEXT NOT NULL UNIQUE COLLATE NOCASE")


class LastWriterWinsStore(SqliteStore):
    """A repeated commit overwrites the stored ref (INSERT OR REPLACE), though it reports not fresh."""

    def commit_samples(self, refs):
        refs = check_refs(refs)

        def body(c):
            out = []
            for r in refs:
                seen = c.execute("SELECT 1 FROM samples WHERE sample_id=?", (r.sample_id,)).fetchone()
                c.execute("INSERT OR REPLACE INTO samples(sample_id, ref) VALUES (?, ?)", (r.sample_id, self._dump(r)))
                out.append(seen is None)
            return out

        return self._txn(body) if refs else []


class RacyMemoryStore(MemoryMarker, MetadataStore):
    """Volatile, no lock: dedup is check-then-insert, so two threads can both get 'fresh'."""

    profile = "volatile"

    def __init__(self):
        self._refs: Dict[str, SampleRef] = {}
        self._order: List[str] = []
        self._init_marker(threading.Lock())  # guards only the ack path

    def commit_sample(self, ref):
        check_ref(ref)
        fresh = ref.sample_id not in self._refs
        time.sleep(0)  # the round trip a real backend makes between the check and the insert: other threads run
        if fresh:
            self._refs[ref.sample_id] = copy.deepcopy(ref)
            self._order.append(ref.sample_id)
        return fresh

    def is_committed(self, sample_id):
        return sample_id in self._refs

    def get_committed(self, sample_id):
        return self._refs.get(sample_id)

    def committed_count(self):
        return len(self._refs)

    def all_committed_ids(self):
        return list(dict.fromkeys(self._order))


class TornMemoryMarkerStore(MetadataStore):
    """Volatile; commits are locked, but an ack updates ids one by one and the marker is read without the lock."""

    profile = "volatile"

    def __init__(self):
        self._lock = threading.Lock()
        self._refs: Dict[str, SampleRef] = {}
        self._order: List[str] = []
        self._acked: set = set()
        self._step = None
        self._flag = False

    def commit_sample(self, ref):
        return self.commit_samples([ref])[0]

    def commit_samples(self, refs):
        out = []
        with self._lock:
            for r in list(refs):
                check_ref(r)
                fresh = r.sample_id not in self._refs
                if fresh:
                    self._refs[r.sample_id] = r
                    self._order.append(r.sample_id)
                out.append(fresh)
        return out

    def is_committed(self, sample_id):
        with self._lock:
            return sample_id in self._refs

    def get_committed(self, sample_id):
        with self._lock:
            return self._refs.get(sample_id)

    def committed_count(self):
        with self._lock:
            return len(self._order)

    def all_committed_ids(self):
        with self._lock:
            return list(self._order)

    def record_train_ack(self, sample_ids, *, global_step, optimizer_durable):
        with self._lock:
            for sid in as_id_set(sample_ids):
                self._acked.add(sid)
                time.sleep(0)  # one write per id, as a backend without batch writes does: readers run between
            if global_step is not None:
                self._step = int(global_step)
            self._flag = bool(optimizer_durable)

    def durable_marker(self):
        acked = set(self._acked)
        return {"acked": acked, "global_step": self._step, "optimizer_durable": self._flag}


# ---------------------------------------------------------------------------
# unusual but correct: certification must NOT reject these
# ---------------------------------------------------------------------------


class OldContractStore:
    """Has only commit_sample (the older contract), no commit_samples; otherwise correct."""

    profile = "durable"

    def __init__(self, path):
        self._s = SqliteStore(path)

    def commit_sample(self, ref):
        return self._s.commit_samples([ref])[0]

    def __getattr__(self, name):
        if name == "commit_samples":
            raise AttributeError(name)
        return getattr(self._s, name)


@dataclasses.dataclass
class ForeignRef:
    sample_id: str
    run_id: str
    source_task_id: Optional[str]
    feature_store_uri: str
    feature_keys: Dict[str, str]
    feature_specs: Dict[str, Dict[str, Any]]  # plain dicts, not FeatureSpec
    strategy: str
    schema_version: int
    target_model_version: Optional[str]
    draft_weight_version: Optional[str]
    tokenizer_version: Optional[str]
    num_tokens: int
    estimated_bytes: int
    metadata: Dict[str, Any]


class ForeignRefStore(SqliteStore):
    """Returns its own ref type (specs as dicts): equal field by field, so it passes."""

    @staticmethod
    def _load(text: str):
        return ForeignRef(**json.loads(text))


class NonAtomicBatchStore(SqliteStore):
    """Each ref of a batch in its own transaction: a crash can tear a batch (a warning, not a failure)."""

    def commit_samples(self, refs):
        return [SqliteStore.commit_samples(self, [r])[0] for r in list(refs)]


class ImpatientStore(SqliteStore):
    """Correct, but raises 'database is locked' after 20 ms of waiting; retried, reported as a warning."""

    def __init__(self, path):
        super().__init__(path)
        self.conn.execute("PRAGMA busy_timeout=20")


class SlowAfterAckStore(SqliteStore):
    """Correct, but the first read after its own ack is slow (a busy client): the instance that
    acked reads all_committed_ids last, after the other instance has read everything."""

    _acked_last = False

    def record_train_ack(self, sample_ids, *, global_step, optimizer_durable):
        super().record_train_ack(sample_ids, global_step=global_step, optimizer_durable=optimizer_durable)
        self._acked_last = True

    def all_committed_ids(self):
        if self._acked_last:
            self._acked_last = False
            time.sleep(0.3)
        return super().all_committed_ids()


def factory_in_dir(workdir: str) -> SqliteStore:
    """A callable factory taking a working directory (the other accepted form)."""
    import os

    return SqliteStore(os.path.join(workdir, "ledger.sqlite"))


def failing_constructor(path: str):
    raise RuntimeError("cannot connect to backend at " + str(path))


class FailingConstructorStore(SqliteStore):
    def __init__(self, path):
        raise ConnectionError("backend unreachable")


NOT_A_STORE = 42


class HangingConstructorStore(SqliteStore):
    """The constructor never returns (waits for a server that never answers): a liveness finding."""

    def __init__(self, path):
        threading.Event().wait()


class HangingCommitStore(SqliteStore):
    """commit_sample never returns (a lock that is never released): a liveness finding."""

    def commit_samples(self, refs):
        threading.Event().wait()


class SegfaultAckStore(SqliteStore):
    """record_train_ack crashes the process with SIGSEGV, as a native extension's bug does: a read of
    address 0 in the calling thread."""

    def record_train_ack(self, sample_ids, *, global_step, optimizer_durable):
        import ctypes

        ctypes.string_at(0)


class ExitAckStore(SqliteStore):
    """record_train_ack ends the process with os._exit(0) (a client library that exits on a lost
    connection): no exception, no result, exit status 0."""

    def record_train_ack(self, sample_ids, *, global_step, optimizer_durable):
        import os

        os._exit(0)


class MissingMethodsStore:
    def __init__(self, path):
        self.path = path

    def commit_sample(self, ref):
        return True


# store -> (tier that must reject it, property that must be named, profile).
# A property may be a tuple when the bug has two symptoms and either may show first.
ZOO = {
    "CheckThenInsertStore": (2, "P4 dedup", "durable"),
    "SplitAckTxnStore": (2, "P5 ack atomicity", "durable"),
    "CachedMarkerStore": (2, "visibility", "durable"),
    "TwoStatementMarkerStore": (2, "P5 ack atomicity", "durable"),
    "NoneErasesStepStore": (1, "global_step", "durable"),
    "ZeroStepStore": (1, "global_step", "durable"),
    "UnorderedIdsStore": (1, "all_committed_ids order", "durable"),
    "FlatSpecStore": (1, "round-trip", "durable"),
    "BatchRepeatFreshStore": (1, "freshness", "durable"),
    "MemoryAcksStore": (1, "reopen", "durable"),
    "BufferedCommitsStore": (3, "P6 durability", "durable"),
    "LostUpdateAckStore": (2, "lost-update", "durable"),
    "CaseInsensitiveIdStore": (1, ("freshness", "is_committed", "round-trip"), "durable"),
    "LastWriterWinsStore": (1, ("round-trip", "all_committed_ids order"), "durable"),
    "RacyMemoryStore": (2, "P4 dedup", "volatile"),
    "TornMemoryMarkerStore": (2, "P5 ack atomicity", "volatile"),
}
