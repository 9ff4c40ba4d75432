"""Power loss: a durability tracer (LD_PRELOAD), its journal, and the rebuild of a
work dir to what a disk could hold after a power failure.

Use: `env = arm(root, journal)` before starting the traced processes (add `env`
to each one's environment), kill them all at once, then
`stats = powercut(root, journal, mode="clean"|"torn", seed=...)`.
"""

from .build import preload_with_tracer, traced_environ, tracer_env, tracer_library
from .journal import Record, read_journal
from .rebuild import (
    Baseline,
    PowercutStats,
    arm,
    durable_state,
    load_baseline,
    powercut,
    snapshot_baseline,
)

__all__ = [
    "Baseline",
    "PowercutStats",
    "Record",
    "arm",
    "durable_state",
    "load_baseline",
    "powercut",
    "read_journal",
    "snapshot_baseline",
    "traced_environ",
    "preload_with_tracer",
    "tracer_env",
    "tracer_library",
]
