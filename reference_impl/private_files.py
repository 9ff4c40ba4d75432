"""Files and directories that only their owner may read: run dirs, key files, address files.

A run's directory holds what its servers need to let a client in (an authkey,
a password); any local user who can read it can connect and, through a
pickle-speaking server, run code as the run's user. So:

* `make_private_dir(path)`: a directory of mode 0700 (created, or an existing
  one of ours tightened); its parents are created with the usual mode;
* `write_secret(path, data)` / `write_secret_json(path, obj)`: a file of mode
  0600, created so (never readable by others, not even for an instant),
  written whole, fsynced and renamed into place;
* `is_private(path)`: the path's mode gives nothing to group or others.

Modes are set explicitly (`chmod`), never left to the umask.
"""

from __future__ import annotations

import json
import os
import stat
from typing import Any, Union

PRIVATE_DIR_MODE = 0o700
SECRET_FILE_MODE = 0o600


def make_private_dir(path: str, exist_ok: bool = False) -> str:
    """Create `path` with mode 0700 (its missing parents with the default mode); an existing
    directory (with `exist_ok`) must be ours and is set to 0700. Returns `path`."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    try:
        os.mkdir(path, PRIVATE_DIR_MODE)
    except FileExistsError:
        if not exist_ok or not os.path.isdir(path):
            raise
        if os.stat(path).st_uid != os.geteuid():
            raise PermissionError(13, "directory owned by another user: it cannot be made private", path) from None
    os.chmod(path, PRIVATE_DIR_MODE)  # mkdir's mode is cut by the umask
    return path


def write_secret(path: str, data: Union[bytes, str]) -> None:
    """Replace `path` with `data` in a file of mode 0600: created 0600, fsynced, renamed, dir fsynced."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SECRET_FILE_MODE)
    try:
        os.fchmod(fd, SECRET_FILE_MODE)  # (O_CREAT's mode is cut by the umask, never widened)
        view = memoryview(raw)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_secret_json(path: str, obj: Any) -> None:
    """`write_secret` of `obj` as JSON."""
    write_secret(path, json.dumps(obj, sort_keys=True))


def is_private(path: str) -> bool:
    """True when group and others have no permission bits on `path`."""
    return not stat.S_IMODE(os.stat(path).st_mode) & 0o077
