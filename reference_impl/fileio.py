"""Small durable-file helpers: atomic JSON replace, directory fsync, durable mkdir, tolerant JSON read.

A new directory entry (a created file, a rename into place, a new directory)
survives a power failure only once its directory is fsynced: `fsync_dir`
after the rename, `makedirs_durable` for a directory the protocol keeps files
in (its parent's entry for it fsynced, every time: an earlier incarnation may
have created it and died before the fsync).
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional


def fsync_dir(path: str) -> None:
    fd = os.open(path or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def makedirs_durable(path: str) -> None:
    """`os.makedirs(path, exist_ok=True)`, then fsync its parent, so the directory survives a power cut."""
    path = os.path.abspath(path)
    os.makedirs(path, exist_ok=True)
    fsync_dir(os.path.dirname(path))


def sync_if_present(path: str) -> bool:
    """fsync `path` and its directory when the file exists (False when it does not):
    a file renamed into place by a writer that was killed before its directory
    fsync is visible but not durable, and must be made durable before anyone
    acts on what it says."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(os.path.dirname(path) or ".")
    return True


def write_json_atomic(path: str, obj: Any, point: Optional[str] = None) -> None:
    """Replace `path` with `obj` as JSON: temp file, fsync, rename, fsync dir.

    `point`: a failpoint hit between the rename and the directory fsync (the
    new content visible, not yet durable)."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    if point is not None:
        from . import failpoints

        failpoints.hit(point)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def read_json(path: str) -> Optional[Any]:
    """The JSON in `path`; None when there is no such file or it does not parse."""
    # Sentinels are looked up every step and are mostly absent: access() says so
    # without the cost of raising FileNotFoundError.
    if not os.access(path, os.F_OK):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except json.JSONDecodeError:
        return None
