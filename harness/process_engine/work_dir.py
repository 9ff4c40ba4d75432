"""Where a run's work dir lives: on a tmpfs when there is one, reached from the run dir.

A crash trial needs no disk under its files: a SIGKILLed process's writes are
in the page cache either way, and a power cut is the durability tracer's model
(its journal), not the disk's. On a tmpfs the run's many fsyncs, opens and
renames cost a fraction: a kill-random trial took 0.46 s of CPU with its work
dir on this machine's disk and 0.29 s on /dev/shm.

* The work dir is `<root>/run-<harness pid>-XXXX` (`harness.owned_dirs`: a run
  whose harness was SIGKILLed leaves it, and the next run removes it), mode
  0700 like the run dir.
* While the run lasts, `<run dir>/work` is a symlink to it, so the run's live
  files are where they always were.
* A work dir that is kept (an unexpected verdict, `--keep-work`, a run that
  could not finish) is moved into the run dir, and its config names its new
  place: a report never points into a tmpfs. Otherwise it is removed.

`DFH_WORK_ROOT` names another root; `DFH_WORK_ROOT=run-dir` keeps the work dir
inside the run dir (the layout before; no tmpfs).
"""

from __future__ import annotations

import os
import shutil
from typing import Optional

from reference_impl.config import load_config, write_config

from ..owned_dirs import make_owned_dir, sweep_dead

ROOT_ENV = "DFH_WORK_ROOT"
IN_RUN_DIR = "run-dir"
PREFIX = "run-"
TMPFS = "/dev/shm"


def work_root() -> Optional[str]:
    """The root of run work dirs; None: inside the run dir."""
    root = os.environ.get(ROOT_ENV)
    if root == IN_RUN_DIR:
        return None
    if root:
        return root
    return TMPFS if os.path.isdir(TMPFS) and os.access(TMPFS, os.W_OK | os.X_OK) else None


def make_work_dir(rdir: str) -> str:
    """The run's work dir (made, empty, 0700), with `<rdir>/work` leading to it."""
    link = os.path.join(rdir, "work")
    root = work_root()
    if root is None:
        os.mkdir(link, 0o700)
        return link
    sweep_dead(root, PREFIX)
    work = make_owned_dir(PREFIX, root)
    try:
        os.symlink(work, link)
    except OSError:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return work


def settle_work_dir(rdir: str, work: str, keep: bool) -> None:
    """At the run's end: a kept work dir into the run dir (config rewritten), else removed."""
    link = os.path.join(rdir, "work")
    if os.path.realpath(work) == os.path.realpath(link) and not os.path.islink(link):  # inside the run dir
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
        return
    if os.path.islink(link):
        os.unlink(link)
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
        return
    shutil.move(work, link)
    conf = os.path.join(link, "config.json")
    if os.path.exists(conf):
        cfg = load_config(conf)
        cfg.workdir = link
        write_config(cfg)
