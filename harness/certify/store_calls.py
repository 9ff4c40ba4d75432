"""The store calls certify needs before any tier: which contract methods a store
lacks, and closing it (close() is optional in the contract)."""

from __future__ import annotations

from typing import Any, List

READ_METHODS = (
    "is_committed",
    "get_committed",
    "committed_count",
    "all_committed_ids",
    "record_train_ack",
    "durable_marker",
)


def close_store(store: Any) -> None:
    fn = getattr(store, "close", None)
    if callable(fn):
        fn()


def missing_methods(store: Any) -> List[str]:
    missing = [m for m in READ_METHODS if not callable(getattr(store, m, None))]
    if not callable(getattr(store, "commit_sample", None)):
        missing.insert(0, "commit_sample")
    return missing
