"""The MetadataStore contract shared by the producer and the consumer.

Names and semantics are call-compatible with SpecForge's MetadataStore so that a
backend written for SpecForge is usable (and certifiable) unchanged:

* `commit_sample(ref) -> bool`: True iff `ref.sample_id` was never committed
  before, across all processes and restarts.
* `commit_samples(refs) -> list[bool]`: one flag per input, in order; a repeated
  id inside one batch is fresh once. Durable backends commit the batch in one
  transaction.
* `record_train_ack(ids, *, global_step, optimizer_durable)`: one atomic update:
  acked |= ids; global_step = value unless None; optimizer_durable = flag.
* `durable_marker() -> {"acked": set, "global_step": int|None,
  "optimizer_durable": bool}`, read as one snapshot.
"""

from __future__ import annotations

import abc
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set

from ..contracts import SampleRef, assert_no_tensors

#: The methods of the MetadataStore contract, as a store server exposes them to its clients.
CONTRACT_METHODS = ("commit_sample", "commit_samples", "is_committed", "get_committed", "committed_count",
                    "all_committed_ids", "record_train_ack", "durable_marker", "ledger_id")


class StoreUnavailable(RuntimeError):
    """The store cannot be reached or its ledger is gone; callers fail closed."""


class MetadataStore(abc.ABC):
    """Abstract durable ledger of committed samples and training acks."""

    @abc.abstractmethod
    def commit_sample(self, ref: SampleRef) -> bool: ...

    def commit_samples(self, refs: Sequence[SampleRef]) -> List[bool]:
        return [self.commit_sample(r) for r in refs]

    @abc.abstractmethod
    def is_committed(self, sample_id: str) -> bool: ...

    @abc.abstractmethod
    def get_committed(self, sample_id: str) -> Optional[SampleRef]: ...

    @abc.abstractmethod
    def committed_count(self) -> int: ...

    @abc.abstractmethod
    def all_committed_ids(self) -> List[str]: ...

    @abc.abstractmethod
    def record_train_ack(
        self,
        sample_ids: Iterable[str],
        *,
        global_step: Optional[int],
        optimizer_durable: bool,
    ) -> None: ...

    @abc.abstractmethod
    def durable_marker(self) -> Dict[str, Any]: ...

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def record_network_events(store: Any, history: Any) -> None:
    """A networked store's failed attempts (and the calls that returned after one) as `store_call`
    events in `history`; a store without `on_network_event` has none to report."""
    if hasattr(store, "on_network_event"):
        store.on_network_event = lambda **fields: history.emit("store_call", **fields)


def empty_marker() -> Dict[str, Any]:
    return {"acked": set(), "global_step": None, "optimizer_durable": False}


def check_ref(ref: Any) -> None:
    """Reject refs carrying tensors before they reach any ledger."""
    assert_no_tensors(ref, "ref")


def check_refs(refs: Iterable[Any]) -> List[Any]:
    """The refs of a batch as a list, each checked (check_ref) before any reaches the ledger."""
    refs = list(refs)
    for r in refs:
        check_ref(r)
    return refs


def as_id_set(ids: Iterable[str]) -> Set[str]:
    return {str(i) for i in ids}
