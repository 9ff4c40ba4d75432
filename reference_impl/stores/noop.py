"""NoOpMetadataStore: retains nothing.

Every commit is reported fresh and nothing is ever found again. It exists to
show what a ledger that forgets does to the pipeline, and certification must
reject it.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence

from ..contracts import SampleRef
from .base import MetadataStore, check_ref, empty_marker


class NoOpMetadataStore(MetadataStore):
    profile = "volatile"

    def commit_sample(self, ref: SampleRef) -> bool:
        check_ref(ref)
        return True

    def commit_samples(self, refs: Sequence[SampleRef]) -> List[bool]:
        return [self.commit_sample(r) for r in refs]

    def is_committed(self, sample_id: str) -> bool:
        return False

    def get_committed(self, sample_id: str) -> Optional[SampleRef]:
        return None

    def committed_count(self) -> int:
        return 0

    def all_committed_ids(self) -> List[str]:
        return []

    def record_train_ack(
        self, sample_ids: Iterable[str], *, global_step: Optional[int], optimizer_durable: bool
    ) -> None:
        list(sample_ids)

    def durable_marker(self) -> Dict[str, Any]:
        return empty_marker()
