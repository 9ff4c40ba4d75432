"""Where the simulation's schedules run: one work dir per schedule, on a tmpfs when there is one.

A work dir is named after the process that owns it (`sim-<pid>-...`): a
simulation SIGKILLed mid-schedule cannot remove its own, so every new
`Simulation` removes those whose owner is gone. A dir kept on purpose
(`keep_workdir`) is named `simkept-...` and no sweep takes it.
"""

from __future__ import annotations

import os
import tempfile
from typing import List

from ..owned_dirs import sweep_dead

#: A schedule's work dir is named after the process that owns it, so that a
#: later simulation can remove what a SIGKILLed one could not (`sweep_dead_workdirs`).
WORKDIR_PREFIX = "sim-"


def sweep_dead_workdirs(root: str) -> List[str]:
    """Remove the schedule work dirs under `root` whose owning process is gone (killed before its
    `finally` ran); a live owner's dirs, kept dirs and anything not named by `Simulation.run` stay."""
    return sweep_dead(root, WORKDIR_PREFIX)


def default_workdir_root() -> str:
    """A tmpfs when there is one (fsync is free there), else the temp directory."""
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK):
        return shm
    return tempfile.gettempdir()
