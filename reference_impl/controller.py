"""DataFlowController: commit with dedup, optimizer-boundary ack, reconcile.

Reconcile on restart (consumer side) combines the durable ledger with the
consumer's checkpoint, which is written *before* the ack of the same step:

1. ledger lost: the store's marker is behind the last ack the checkpoint saw
   (`acked_step`), or the store's ledger identity changed -> fail closed
   (retraining from an emptied ledger would duplicate samples in the checkpoint);
2. ledger ahead of the checkpoint (marker step > checkpoint step): the
   checkpoint that holds acked samples is gone -> fail closed;
3. checkpoint ahead of the ledger (crash between checkpoint and ack): roll the
   ack forward with the checkpoint's `unacked` ids, so those samples are
   released rather than trained a second time;
4. released = acked ids; requeued = committed ids not released.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence

from .contracts import SampleRef
from .stores.base import MetadataStore


class LedgerLost(RuntimeError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class Reconciliation:
    released: List[str]
    requeued: List[str]
    rolled_forward: List[str] = field(default_factory=list)
    marker_step: Optional[int] = None
    checkpoint_step: Optional[int] = None


class DataFlowController:
    def __init__(self, store: MetadataStore) -> None:
        self.store = store

    def commit(self, refs: Sequence[SampleRef]) -> List[bool]:
        if hasattr(self.store, "commit_samples"):
            return list(self.store.commit_samples(list(refs)))
        return [self.store.commit_sample(r) for r in refs]  # older single-commit stores

    def ack(self, sample_ids: Iterable[str], *, global_step: int, durable: bool = True) -> None:
        self.store.record_train_ack(list(sample_ids), global_step=global_step, optimizer_durable=durable)

    def ledger_id(self) -> Optional[str]:
        fn = getattr(self.store, "ledger_id", None)
        return fn() if callable(fn) else None

    def reconcile(self, checkpoint: Optional[Dict[str, Any]]) -> Reconciliation:
        marker = self.store.durable_marker()
        marker_step = marker.get("global_step")
        ckpt_step = int(checkpoint["global_step"]) if checkpoint else 0
        if checkpoint:
            known = checkpoint.get("ledger_id")
            current = self.ledger_id()
            if known and current and known != current:
                raise LedgerLost("ledger_lost", f"store ledger {current} is not the ledger {known} of the checkpoint")
            # The checkpoint records the last step it knew was acked; a ledger
            # behind that has lost acks. (Not "step > 0 and no ack": a crash
            # between the first checkpoint and the first ack is legitimate.)
            known_acked = int(checkpoint.get("acked_step") or 0)
            if known_acked > (marker_step or 0):
                raise LedgerLost("ledger_lost", f"the checkpoint saw step {known_acked} acked but the store's "
                                                f"marker is at step {marker_step}")
        if (marker_step or 0) > ckpt_step:
            raise LedgerLost(
                "checkpoint_behind_ledger",
                f"store acked up to step {marker_step} but the newest checkpoint is step {ckpt_step}",
            )
        acked = set(marker.get("acked") or ())
        rolled: List[str] = []
        if checkpoint and ckpt_step > (marker_step or 0):
            rolled = sorted(set(checkpoint.get("unacked") or ()) - acked)
            self.ack(checkpoint.get("unacked") or (), global_step=ckpt_step, durable=True)
            acked |= set(rolled)
        committed = self.store.all_committed_ids()
        requeued = [sid for sid in committed if sid not in acked]
        return Reconciliation(
            released=sorted(acked),
            requeued=requeued,
            rolled_forward=rolled,
            marker_step=marker_step,
            checkpoint_step=ckpt_step if checkpoint else None,
        )
