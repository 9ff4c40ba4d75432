"""Faults: one typed model for both engines, the planner, the ledger, replay and shrinking.

    vocabulary  targets, triggers, power-cut modes (the names every fault uses)
    points      the one table of failpoints and the process that reaches each
    kinds       one dataclass per fault kind, read from / written to dicts with validation
    schedule    a run's planned faults (`schedule.json`), `has_powercut`
    plan        the planner: (scenario, seed) -> schedule, with plans that can land
    table       a scenario file's [faults] table: power-cut mode, explicit faults, random spec
    simulated   the simulation engine's operations, and a simulated run's faults as a scenario

Delivery is per engine: the process engine sends timed faults from its run
(`harness.process_engine.runner`) and arms failpoints through the environment;
the simulation applies its operations (`harness.simulate.engine`).

How to add a fault kind: write its dataclass in `kinds.py` (a `Timed`
subclass when a trigger fires it), decorated with `@fault_kind`, with its
`kind` name, its fields (each with its `_check`), `ends_incarnation`, and
`validate`/`describe` where the defaults do not fit. Parsing, validation with
exit 2, schedule.json and scenario TOML follow from that one definition. Then
teach the engines to deliver it (the process engine's `Run.deliver`, the
simulation's operations in `simulated.py`) and, if the planner should draw
it, `plan._draw`. A kind that acts on the network between a client node and
the store server subclasses `Network` (delivered by the networked backend's
proxies, `harness.process_engine.store_servers`).
"""

from .kinds import (
    KINDS,
    LATENCY_DIRECTIONS,
    NETWORK_KINDS,
    Duplicate,
    Failpoint,
    Fault,
    FaultError,
    Kill,
    Latency,
    LostReply,
    Network,
    Partition,
    Pause,
    Powercut,
    Replay,
    Reset,
    Timed,
    fault_from_dict,
    fault_kind,
)
from .plan import DRAWN_KINDS, make_schedule
from .points import POINT_ROLE, owner, points_for, points_matching
from .schedule import Schedule, fired_kind, has_powercut, read_schedule
from .table import RANDOM_KEYS, faults_table
from .vocabulary import PIPELINE, POWERCUT_MODES, POWERCUT_TARGET, RANK_TARGET, TARGETS, TRIGGERS, process_of, rank_of

__all__ = [
    "DRAWN_KINDS", "KINDS", "LATENCY_DIRECTIONS", "NETWORK_KINDS", "PIPELINE", "POINT_ROLE", "POWERCUT_MODES",
    "POWERCUT_TARGET", "RANDOM_KEYS", "RANK_TARGET", "TARGETS", "TRIGGERS", "Duplicate", "Failpoint", "Fault",
    "FaultError", "Kill", "Latency", "LostReply", "Network", "Partition", "Pause", "Powercut", "Replay", "Reset",
    "Schedule", "Timed", "fault_from_dict", "fault_kind", "fired_kind", "faults_table", "has_powercut", "make_schedule",
    "owner",
    "points_for", "points_matching", "process_of", "rank_of", "read_schedule",
]
