"""What every rank of the data-parallel consumer does: its device
(`rank_device`) and the training of its share of an optimizer window
(`ShareTrainer`).
"""

from __future__ import annotations

from typing import Any, Dict

from .. import failpoints
from ..config import RunConfig
from ..devices import DeviceError
from .comm import Comm, inbox_path, read_inbox

# ---------------------------------------------------------------------------
# devices and backends
# ---------------------------------------------------------------------------

def rank_device(request: str, rank: int, world_size: int):
    """(torch.device, dist backend) for one rank.

    cpu -> gloo on CPU; cuda/auto with at least one GPU per rank -> NCCL, GPU
    `rank`; with fewer GPUs -> gloo, ranks sharing GPUs round-robin (NCCL
    refuses two ranks on one GPU); auto without a GPU -> gloo on CPU.
    """
    import torch

    if request == "cpu":
        return torch.device("cpu"), "gloo"
    has_cuda = torch.cuda.is_available()
    if request == "cuda" and not has_cuda:
        why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA device is visible"
        raise DeviceError(f"consumer.rank{rank}: device 'cuda' was demanded but torch.cuda.is_available() is "
                          f"False ({why}; torch {torch.__version__}); use device 'cpu' or 'auto'")
    if request not in ("cuda", "auto"):
        raise DeviceError(f"consumer.rank{rank}: unknown device {request!r}; allowed: cpu | cuda | auto")
    if not has_cuda:
        return torch.device("cpu"), "gloo"
    n = torch.cuda.device_count()
    if n >= world_size:
        return torch.device("cuda", rank), "nccl"
    return torch.device("cuda", rank % n), "gloo"


class ShareTrainer:
    """One rank's part of an optimizer step: its share of the window."""

    def __init__(self, cfg: RunConfig, rank: int, inc: int, device, model, optim, comm: Comm, history) -> None:
        from ..feature_store import FeatureStore

        self.cfg = cfg
        self.rank = rank
        self.inc = inc
        self.device = device
        self.model = model
        self.optim = optim
        self.comm = comm
        self.h = history
        self.features = FeatureStore(cfg.path("features"))
        self.index_of = {cfg.sample_id(i): i for i in range(cfg.num_samples)}
        self.params = list(model.parameters())

    def train(self, step: int) -> Dict[str, Any]:
        cfg = self.cfg
        box = read_inbox(cfg, self.rank)
        if box.get("inc") != self.inc or box.get("step") != step or box.get("rank") != self.rank:
            raise RuntimeError(f"rank {self.rank}: inbox {inbox_path(cfg, self.rank)} holds inc {box.get('inc')} "
                               f"step {box.get('step')} rank {box.get('rank')}, expected inc {self.inc} "
                               f"step {step} rank {self.rank}")
        batches, indices, trained, missing = [], [], [], []
        for sid in box["ids"]:
            try:
                feats = self.features.get(sid)
            except FileNotFoundError:
                # Only a protocol bug gets here (blobs go after a durable ack).
                self.h.emit("missing_features", id=sid)
                missing.append(sid)
                continue
            batches.append({k: v.to(self.device) for k, v in feats.items()})
            indices.append(self.index_of[sid])
            trained.append(sid)
        self.optim.zero_grad(set_to_none=True)
        if trained:
            micro = max(1, -(-len(trained) // cfg.accumulation))
            for lo in range(0, len(trained), micro):
                # Cross-entropy weighted by the micro-batch's share of this rank's
                # share; the witness term unweighted with scale world_size, so
                # after averaging over the ranks each sample adds exactly 1.
                share = len(indices[lo:lo + micro]) / len(trained)
                self.model.loss(batches[lo:lo + micro], indices[lo:lo + micro], cfg.world_size,
                                ce_weight=share).backward()
        self.comm.allreduce_grads(self.params)
        self.optim.step()
        # Before the gather: no checkpoint can hold this step without this event.
        self.h.emit("train", step=step, ids=trained)
        failpoints.hit("rank.after_allreduce_before_ack")
        return {"rank": self.rank, "step": step, "trained": trained, "missing": missing}
