"""The names every fault uses: targets, triggers, power-cut modes.

A target is a process of the run: `producer`, `consumer` (the data-parallel
group process when there are several ranks), `store_server` (the in-memory
store's server), or one rank of the consumer group, `consumer.rank<N>` (kill
and pause only). A power cut hits every process: its target is `all`.
"""

from __future__ import annotations

import re
from typing import Optional

from reference_impl.failpoints import ACTIONS  # noqa: F401 (re-exported: the failpoint actions)

PRODUCER, CONSUMER, STORE_SERVER = "producer", "consumer", "store_server"
#: Every process of a run a fault may name.
TARGETS = (PRODUCER, CONSUMER, STORE_SERVER)
#: The two processes of the pipeline (the ones the simulation steps).
PIPELINE = (PRODUCER, CONSUMER)
#: One rank of a data-parallel consumer group ("consumer.rank1").
RANK_TARGET = re.compile(r"^consumer\.rank(\d+)$")
#: A power cut hits every process of the run.
POWERCUT_TARGET = "all"
#: How a power cut rebuilds the work dir (harness.powerloss): `torn` keeps a seeded torn tail.
POWERCUT_MODES = ("clean", "torn")
#: When a timed fault fires: records in the channel, the consumer's consumed count, seconds after start.
TRIGGERS = ("at_published", "at_consumed", "at_s")
#: Failpoint actions that end the incarnation they fire in (the next one is a restart).
ENDING_ACTIONS = ("crash", "powercut")


def rank_of(target: str) -> Optional[int]:
    """The rank a `consumer.rank<N>` target names, else None."""
    m = RANK_TARGET.match(target) if isinstance(target, str) else None
    return int(m.group(1)) if m else None


def process_of(target: str) -> str:
    """The supervised process a target lives in (a rank lives in the consumer group)."""
    return CONSUMER if rank_of(target) is not None else target
