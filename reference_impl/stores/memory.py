"""InMemoryMetadataStore: the volatile, thread-safe ledger.

One lock guards every method, so each call is atomic with respect to the others
(an ack and a marker read never interleave). Nothing survives the process: run it
inside the store server (`stores.server`) to share it between processes.
"""

from __future__ import annotations

import copy
import threading
import uuid
from typing import Any, Dict, Iterable, List, Optional, Sequence

from .. import failpoints
from ..contracts import SampleRef
from .base import MetadataStore, as_id_set, check_refs


class InMemoryMetadataStore(MetadataStore):
    profile = "volatile"

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._refs: Dict[str, SampleRef] = {}
        self._order: List[str] = []
        self._owner: Dict[str, str] = {}  # sample id -> the token of the call that committed it
        self._acked: set = set()
        self._global_step: Optional[int] = None
        self._optimizer_durable = False
        self._ledger_id = uuid.uuid4().hex

    def ledger_id(self) -> str:
        """Identity of this ledger; a new one means everything before is gone."""
        return self._ledger_id

    def commit_sample(self, ref: SampleRef) -> bool:
        return self.commit_samples([ref])[0]

    def commit_samples(self, refs: Sequence[SampleRef]) -> List[bool]:
        return self.commit_samples_once(None, refs)

    def commit_samples_once(self, token: Optional[str], refs: Sequence[SampleRef]) -> List[bool]:
        """`commit_samples`, idempotent under retry: an id first committed by a call with the same
        `token` (a retry of one call whose reply was lost) is answered fresh again, once per call."""
        refs = check_refs(refs)
        with self._lock:
            out = []
            seen = set()
            for r in refs:
                sid = r.sample_id
                fresh = sid not in self._refs
                if fresh:
                    self._refs[sid] = copy.deepcopy(r)
                    self._order.append(sid)
                    if token is not None:
                        self._owner[sid] = token
                elif token is not None and sid not in seen and self._owner.get(sid) == token:
                    fresh = True
                seen.add(sid)
                out.append(fresh)
            return out

    def is_committed(self, sample_id: str) -> bool:
        with self._lock:
            return sample_id in self._refs

    def get_committed(self, sample_id: str) -> Optional[SampleRef]:
        with self._lock:
            r = self._refs.get(sample_id)
            return copy.deepcopy(r) if r is not None else None

    def committed_count(self) -> int:
        with self._lock:
            return len(self._order)

    def all_committed_ids(self) -> List[str]:
        with self._lock:
            return list(self._order)

    def record_train_ack(
        self, sample_ids: Iterable[str], *, global_step: Optional[int], optimizer_durable: bool
    ) -> None:
        ids = as_id_set(sample_ids)
        with self._lock:
            self._acked |= ids
            failpoints.hit("store.mid_ack_txn")
            if global_step is not None:
                self._global_step = int(global_step)
            self._optimizer_durable = bool(optimizer_durable)

    def durable_marker(self) -> Dict[str, Any]:
        with self._lock:
            return {
                "acked": set(self._acked),
                "global_step": self._global_step,
                "optimizer_durable": self._optimizer_durable,
            }
