"""The one table of failpoints and the process that reaches each.

A failpoint (`reference_impl.failpoints.POINTS`) is armed through the
environment of the process that runs its code. Its role says which:

* `producer` - the producer (its channel appends and feature writes too);
* `consumer` - the consumer (the group process with several ranks);
* `store`    - the store code: in the consumer, except with the in-memory
  backend, whose store code runs in the store server;
* `rank`     - every rank of a data-parallel consumer group (a rule's `rank`
  field arms one rank only); `rank0` - rank 0 of the group.
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


def points_matching(patterns: Sequence[str]) -> List[str]:
    """The failpoints the patterns name (fnmatch, e.g. "consumer.*"), each once, in pattern order."""
    out: List[str] = []
    for pat in patterns:
        out += [p for p in POINTS if fnmatch.fnmatchcase(p, pat) and p not in out]
    return out
