"""Power-loss-only members of the store zoo: each passes tiers 1-4 (a SIGKILL
keeps every written page) and breaks only when unsynced writes are lost.

`POWERLOSS_ZOO` maps each broken store to the property the power-cut trials
must name; `POWERLOSS_PASSING` lists stores they must not reject.
"""

from __future__ import annotations

import fcntl
import json
import os
from typing import Any, Dict, List, Optional

from reference_impl.contracts import SampleRef, ref_to_dict
from reference_impl.stores.base import MetadataStore, as_id_set, check_ref

from . import SqliteStore


class SyncOffStore(SqliteStore):
    """WAL with PRAGMA synchronous=OFF: SQLite never fsyncs, a returned commit is only in the page cache."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        with self._lock:
            self.conn.execute("PRAGMA synchronous=OFF")


class WalNormalStore(SqliteStore):
    """WAL with synchronous=NORMAL: commits are synced only at checkpoints, so the last ones can be lost."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        with self._lock:
            self.conn.execute("PRAGMA synchronous=NORMAL")


class JsonFileStore(MetadataStore):
    """The whole state in one JSON file, replaced atomically (temp file, fsync, rename, directory fsync)
    under an flock. Correct: it must pass the power-cut trials. The broken variants override `_persist`."""

    profile = "durable"

    def __init__(self, workdir: str) -> None:
        self.dir = os.path.realpath(workdir)
        os.makedirs(self.dir, exist_ok=True)
        self.path = os.path.join(self.dir, "state.json")
        self._lockfd = os.open(os.path.join(self.dir, "state.lock"), os.O_RDWR | os.O_CREAT, 0o644)
        with self._locked():
            if not os.path.exists(self.path):
                self._persist({"refs": {}, "order": [], "acked": [], "step": None, "flag": False})

    # plumbing
    def _locked(self):
        store = self

        class _L:
            def __enter__(self):
                fcntl.flock(store._lockfd, fcntl.LOCK_EX)

            def __exit__(self, *exc):
                fcntl.flock(store._lockfd, fcntl.LOCK_UN)

        return _L()

    def _load(self) -> Dict[str, Any]:
        with open(self.path, "rb") as f:
            return json.loads(f.read().decode())

    def _write_tmp(self, state: Dict[str, Any], fsync: bool) -> str:
        tmp = self.path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(json.dumps(state, sort_keys=True).encode())
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        return tmp

    def _fsync_dir(self) -> None:
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _persist(self, state: Dict[str, Any]) -> None:
        os.replace(self._write_tmp(state, fsync=True), self.path)
        self._fsync_dir()

    # contract
    def commit_sample(self, ref) -> bool:
        return self.commit_samples([ref])[0]

    def commit_samples(self, refs) -> List[bool]:
        refs = list(refs)
        for r in refs:
            check_ref(r)
        with self._locked():
            st = self._load()
            out = []
            for r in refs:
                fresh = r.sample_id not in st["refs"]
                if fresh:
                    st["refs"][r.sample_id] = ref_to_dict(r)
                    st["order"].append(r.sample_id)
                out.append(fresh)
            if any(out):
                self._persist(st)
            return out

    def is_committed(self, sample_id: str) -> bool:
        with self._locked():
            return sample_id in self._load()["refs"]

    def get_committed(self, sample_id: str) -> Optional[SampleRef]:
        with self._locked():
            d = self._load()["refs"].get(sample_id)
        return None if d is None else SampleRef.from_json(json.dumps(d))

    def committed_count(self) -> int:
        with self._locked():
            return len(self._load()["order"])

    def all_committed_ids(self) -> List[str]:
        with self._locked():
            return list(self._load()["order"])

    def record_train_ack(self, sample_ids, *, global_step, optimizer_durable) -> None:
        ids = as_id_set(sample_ids)
        with self._locked():
            st = self._load()
            st["acked"] = sorted(set(st["acked"]) | ids)
            if global_step is not None:
                st["step"] = int(global_step)
            st["flag"] = bool(optimizer_durable)
            self._persist(st)

    def durable_marker(self) -> Dict[str, Any]:
        with self._locked():
            st = self._load()
        return {"acked": set(st["acked"]), "global_step": st["step"], "optimizer_durable": st["flag"]}

    def close(self) -> None:
        os.close(self._lockfd)


class JsonNoFsyncStore(JsonFileStore):
    """Replaces its file (temp file, rename) without any fsync: after a power cut the rename and the
    data may both be gone."""

    def _persist(self, state):
        os.replace(self._write_tmp(state, fsync=False), self.path)


class JsonNoDirSyncStore(JsonFileStore):
    """fsyncs the temp file but never the directory after the rename: the rename itself is not durable."""

    def _persist(self, state):
        os.replace(self._write_tmp(state, fsync=True), self.path)


_Z = "tests.store_zoo.powerloss"
POWERLOSS_ZOO = {
    f"{_Z}:SyncOffStore": "P6 durability",
    f"{_Z}:WalNormalStore": "P6 durability",
    f"{_Z}:JsonNoFsyncStore": "P6 durability",
    f"{_Z}:JsonNoDirSyncStore": "P6 durability",
}
POWERLOSS_PASSING = [
    "reference_impl.stores.sqlite:SQLiteMetadataStore",
    "tests.store_zoo:SqliteStore",
    f"{_Z}:JsonFileStore",
]
