"""The one table of failpoints and the process that reaches each.

A failpoint (`reference_impl.failpoints.POINTS`) is armed through the
environment of the process that runs its code. Its role says which:

* `producer` - the producer (its channel appends and feature writes too);
* `consumer` - the consumer (the group process with several ranks);
* `store`    - the store code: in the consumer, except with the in-memory
  backend, whose store code runs in the store server;
* `rank`     - every rank of a data-parallel consumer group (a rule's `rank`
  field arms one rank only); `rank0` - rank 0 of the group.

Its pace says how often its process reaches it (`POINT_PACE`): once per
channel record, per publish batch, per optimizer step (a window of
train_batch * accumulation * ranks samples), or per checkpoint
(checkpoint_every steps). The planner uses it to aim failpoints at hits a
process still reaches (`samples_per_hit`).
"""

from __future__ import annotations

import fnmatch
from typing import Dict, List, Sequence

from reference_impl.failpoints import POINTS

from .vocabulary import CONSUMER, PRODUCER, STORE_SERVER

ROLE_OF_PREFIX = {"producer": "producer", "channel": "producer", "features": "producer", "consumer": "consumer",
                  "store": "store", "rank": "rank", "rank0": "rank0"}
#: point -> role (see the module docstring).
POINT_ROLE: Dict[str, str] = {p: ROLE_OF_PREFIX[p.split(".", 1)[0]] for p in POINTS}
RANK_ROLES = ("rank", "rank0")
#: point -> how often its process reaches it (measured: counts of reached points over many runs).
POINT_PACE: Dict[str, str] = {
    "producer.after_features_before_commit": "batch", "producer.after_commit_before_publish": "batch",
    "producer.mid_publish_batch": "record", "channel.mid_append": "record", "channel.before_fsync": "batch",
    "features.before_rename": "record",
    "consumer.after_read_before_train": "step", "consumer.after_train_before_checkpoint": "step",
    "rank.mid_inbox_read": "step", "rank.after_allreduce_before_ack": "step", "rank0.after_gather_before_ack": "step",
    "consumer.after_checkpoint_before_ack": "checkpoint", "consumer.after_ack_before_consumed": "checkpoint",
    "consumer.after_ack_before_release": "checkpoint", "consumer.mid_checkpoint_replace": "checkpoint",
    "consumer.mid_consumed_replace": "checkpoint", "store.mid_ack_txn": "checkpoint",
}


def owner(point: str, backend: str = "sqlite") -> str:
    """The process whose failpoint rules arm `point`."""
    role = POINT_ROLE[point]
    if role == "producer":
        return PRODUCER
    if role == "store" and backend == "inmemory":
        return STORE_SERVER
    return CONSUMER


def is_rank_point(point: str) -> bool:
    return POINT_ROLE.get(point) in RANK_ROLES


def points_for(process: str, backend: str = "sqlite", ranks: int = 1) -> List[str]:
    """The failpoints `process` reaches (rank points only in a group of several ranks)."""
    return [p for p in POINTS if owner(p, backend) == process and (ranks > 1 or not is_rank_point(p))]


def samples_per_hit(point: str, workload: Dict[str, int], ranks: int = 1) -> int:
    """How many samples its process handles between two hits of `point` (a point not in the
    table counts as once per checkpoint, the slowest pace: a planned hit is then never too far)."""
    step = workload["train_batch"] * workload["accumulation"] * ranks
    return {"record": 1, "batch": workload["publish_batch"], "step": step,
            "checkpoint": step * workload["checkpoint_every"]}[POINT_PACE.get(point, "checkpoint")]


def points_matching(patterns: Sequence[str]) -> List[str]:
    """The failpoints the patterns name (fnmatch, e.g. "consumer.*"), each once, in pattern order."""
    out: List[str] = []
    for pat in patterns:
        out += [p for p in POINTS if fnmatch.fnmatchcase(p, pat) and p not in out]
    return out
