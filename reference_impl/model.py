"""The tiny models: a frozen target that makes features, a draft head that trains.

The draft model also holds the witness vector `w` (one slot per planned
sample). Its loss term is `-scale * sum(w[i] for i in batch)` with
`scale = world_size / witness_lr`; with plain SGD at `witness_lr` (a power of
two) and data-parallel gradient averaging, training sample i adds exactly +1.0
to w[i]. The final checkpoint's `w` is then an oracle independent of any log:
1 everywhere is exactly-once, 2 a duplicate, 0 a loss.
"""

from __future__ import annotations

import functools
from typing import Dict, List

import torch
from torch import nn

WITNESS_LR = 1.0


def prompt_tokens(seed: int, index: int, seq_len: int, vocab: int) -> torch.Tensor:
    """Deterministic synthetic prompt for sample `index` of a run seeded `seed`."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + index)
    return torch.randint(0, vocab, (seq_len,), generator=g)


class TargetModel(nn.Module):
    """Frozen: token ids -> hidden states and the target's next-token choice."""

    def __init__(self, vocab: int, hidden: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.embed = nn.Parameter(torch.randn(vocab, hidden, generator=g) * 0.5, requires_grad=False)
        self.proj = nn.Parameter(torch.randn(hidden, hidden, generator=g) * 0.5, requires_grad=False)
        self.lm_head = nn.Parameter(torch.randn(hidden, vocab, generator=g) * 0.5, requires_grad=False)

    @torch.no_grad()
    def features(self, tokens: torch.Tensor) -> Dict[str, torch.Tensor]:
        h = torch.tanh(self.embed[tokens] @ self.proj)
        return {"input_ids": tokens, "hidden_states": h, "target": (h @ self.lm_head).argmax(-1)}


@functools.lru_cache(maxsize=8)
def frozen_target(vocab: int, hidden: int, seed: int, device: str) -> TargetModel:
    """The target model on `device`, built once per process: it is frozen, so every producer
    incarnation a process runs (the simulation runs hundreds) can share it."""
    return TargetModel(vocab, hidden, seed).to(device)


@functools.lru_cache(maxsize=4096)
def sample_features(seed: int, index: int, seq_len: int, vocab: int, hidden: int,
                    device: str) -> Dict[str, torch.Tensor]:
    """Sample `index`'s features from the frozen target: a pure function of its arguments, so
    computed once per process. The tensors are shared between callers: read them, never write."""
    tokens = prompt_tokens(seed, index, seq_len, vocab).to(device)
    return frozen_target(vocab, hidden, seed, device).features(tokens)


class DraftModel(nn.Module):
    def __init__(self, vocab: int, hidden: int, num_samples: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed + 17)
        self.head = nn.Linear(hidden, vocab)
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(vocab, hidden, generator=g) * 0.1)
            self.head.bias.zero_()
        self.witness = nn.Parameter(torch.zeros(num_samples, dtype=torch.float32))

    def ce_loss(self, batch: List[Dict[str, torch.Tensor]]) -> torch.Tensor:
        hidden = torch.cat([b["hidden_states"] for b in batch])
        target = torch.cat([b["target"] for b in batch])
        return nn.functional.cross_entropy(self.head(hidden), target, reduction="mean")

    def witness_loss(self, indices: List[int], world_size: int) -> torch.Tensor:
        """Gradient -world_size/WITNESS_LR at each index: one SGD step adds exactly 1."""
        idx = torch.tensor(indices, dtype=torch.long, device=self.witness.device)
        return -(world_size / WITNESS_LR) * self.witness[idx].sum()

    def loss(self, batch: List[Dict[str, torch.Tensor]], indices: List[int], world_size: int,
             ce_weight: float = 1.0) -> torch.Tensor:
        return self.ce_loss(batch) * ce_weight + self.witness_loss(indices, world_size)

    def optimizer(self, lr: float) -> "PlainSGD":
        return PlainSGD([(list(self.head.parameters()), lr), ([self.witness], WITNESS_LR)])


class PlainSGD:
    """SGD without momentum or weight decay: `p -= lr * grad`.

    Not torch.optim.SGD: constructing any torch.optim optimizer imports
    torch._dynamo, about 2 s per process start here, which a crash harness
    pays on every restart. Plain SGD has no state to checkpoint.
    """

    def __init__(self, groups) -> None:
        self.groups = [(list(params), float(lr)) for params, lr in groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for params, _ in self.groups:
            for p in params:
                p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for params, lr in self.groups:
            for p in params:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-lr)

    def state_dict(self) -> dict:
        return {"kind": "plain_sgd", "lrs": [lr for _, lr in self.groups]}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "plain_sgd":
            raise ValueError(f"not a PlainSGD state: {state!r}")
