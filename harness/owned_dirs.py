"""Temporary dirs named after the process that owns them, removed once that process is gone.

A process SIGKILLed before its `finally` or `atexit` ran cannot remove its own
temp dir. A dir named `<prefix><owner pid>-<random>` tells a later process
whose it is: `sweep_dead(root, prefix)` removes those whose owner no longer
runs and leaves a live owner's dirs, and every name it did not make, alone.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from typing import List, Optional

from reference_impl.procutil import pid_gone


def owned_dir_prefix(prefix: str) -> str:
    """The name prefix of a dir this process owns (`mkdtemp(prefix=...)` adds the random part)."""
    return f"{prefix}{os.getpid()}-"


def make_owned_dir(prefix: str, root: Optional[str] = None) -> str:
    """A new temp dir under `root` (default: the temp directory) owned by this process."""
    return tempfile.mkdtemp(prefix=owned_dir_prefix(prefix), dir=root)


def sweep_dead(root: str, prefix: str) -> List[str]:
    """Remove the dirs under `root` named `<prefix><pid>-...` whose owning process is gone."""
    removed = []
    try:
        names = os.listdir(root)
    except OSError:
        return removed
    for name in names:
        m = re.fullmatch(re.escape(prefix) + r"(\d+)-[A-Za-z0-9_]+", name)
        if m is None or not pid_gone(int(m.group(1))):
            continue
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        removed.append(name)
    return removed
