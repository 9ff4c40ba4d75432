"""The final state of a run, read from its files and its store (docs/history.md).

Read after every pipeline process has stopped but before the in-memory store
server is stopped (its ledger lives only in that process).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Dict, Optional

from reference_impl.channel import CONSUMED, FAILED, channel_ids, read_json
from reference_impl.config import RunConfig
from reference_impl.feature_store import FeatureStore


class PlannedIds(Sequence):
    """The planned sample ids `s000000 ...`, computed on access: no per-sample list is built."""

    def __init__(self, cfg: RunConfig) -> None:
        self._n = int(cfg.num_samples)
        self._id = cfg.sample_id

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._id(k) for k in range(*i.indices(self._n))]
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(i)
        return self._id(i)

    def __iter__(self):
        return (self._id(k) for k in range(self._n))


def read_witness(cfg: RunConfig):
    """(witness list, global_step) from the final checkpoint, or (None, None)."""
    from reference_impl.consumer import load_checkpoint

    ckpt = load_checkpoint(cfg)
    if ckpt is None:
        return None, None
    return ckpt["model"]["witness"].tolist(), int(ckpt["global_step"])


def read_store(cfg: RunConfig):
    """(marker, committed_ids) as the store holds them now, or (None, None)."""
    if cfg.backend in ("private", "noop"):
        return None, None
    from reference_impl.stores import open_store

    try:
        store = open_store(cfg.backend, cfg.workdir)
    except Exception:
        return None, None
    try:
        marker = store.durable_marker()
        marker = {"acked": sorted(marker.get("acked") or ()), "global_step": marker.get("global_step"),
                  "optimizer_durable": marker.get("optimizer_durable")}
        return marker, list(store.all_committed_ids())
    except Exception:
        return None, None
    finally:
        try:
            store.close()
        except Exception:
            pass


def read_final_state(cfg: RunConfig, *, outcome: str, durable_store: bool, bound_s: float,
                     fail_closed_reason: Optional[str] = None) -> Dict[str, Any]:
    workdir = cfg.workdir
    witness, step = read_witness(cfg)
    marker, committed = read_store(cfg)
    consumed = read_json(os.path.join(workdir, CONSUMED))
    failed = read_json(os.path.join(workdir, FAILED))
    if fail_closed_reason is None and failed and failed.get("fail_closed"):
        fail_closed_reason = failed.get("reason")
    return {
        "planned_ids": PlannedIds(cfg),
        "witness": witness,
        "checkpoint_step": step,
        "marker": marker,
        "committed_ids": committed,
        "channel_ids": channel_ids(workdir),
        "consumed": int(consumed["consumed"]) if consumed else None,
        "features_left": FeatureStore(os.path.join(workdir, "features")).list_ids(),
        "outcome": outcome,
        "fail_closed_reason": fail_closed_reason,
        "failed": failed,
        "watermarks": {"high": cfg.high_watermark, "low": cfg.low_watermark, "publish_batch": cfg.publish_batch},
        "durable_store": durable_store,
        "bound_s": bound_s,
    }
