"""The campaign's reaper: when the campaign process dies, by any signal, nothing it started survives.

Parent-death signals cover the local pool (workers, zygotes, runs), but not
everything a campaign may start: a local Ray instance's agents (RuntimeEnvAgent,
DashboardAgent) are children of the raylet and outlive a SIGKILLed driver. So
the campaign starts this small watcher first, in its own session, holding the
read end of a pipe whose write end only the campaign holds. When the pipe
closes (the campaign exited or was killed), the watcher SIGKILLs every process
whose initial environment carries `DFH_CAMPAIGN_ID=<this campaign's id>`
(everything the campaign exec'ed inherits it) and every process it saw
descend from the campaign while it ran (checked every TRACK_S, pid reuse
guarded by start time; this catches processes that overwrite their
environment with a process title), with their descendants, then removes the
given temp dirs, and exits.

Run as a script (`python reaper.py CAMPAIGN_ID [DIR...]`): it imports nothing
from the harness, so it starts in milliseconds.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional

ENV = "DFH_CAMPAIGN_ID"
TRACK_S = 0.5


def marked_pids(campaign_id: str) -> Dict[int, str]:
    """Live processes whose initial environment has DFH_CAMPAIGN_ID=campaign_id: {pid: command line}."""
    want = f"{ENV}={campaign_id}".encode()
    out: Dict[int, str] = {}
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if want not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{name}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
            with open(f"/proc/{name}/cmdline", "rb") as f:
                out[int(name)] = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, IndexError):
            continue
    return out


def _stat(pid: int):
    """(ppid, starttime) of a live process, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] == "Z":
        return None
    return int(fields[1]), int(fields[19])


def descendants(root: int) -> Dict[int, int]:
    """{pid: starttime} of every live descendant of `root`."""
    kids: Dict[int, List[int]] = {}
    start: Dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st:
                kids.setdefault(st[0], []).append(int(name))
                start[int(name)] = st[1]
    out: Dict[int, int] = {}
    todo = [root]
    while todo:
        for c in kids.get(todo.pop(), []):
            if c not in out:
                out[c] = start[c]
                todo.append(c)
    return out


def sweep(campaign_id: str, tracked: Optional[Dict[int, int]] = None, rounds: int = 5) -> List[int]:
    """Kill the marked processes, the tracked ones that are still the same process, and their descendants."""
    killed: List[int] = []
    me = os.getpid()
    for _ in range(rounds):
        pids = set(marked_pids(campaign_id))
        for pid, t in (tracked or {}).items():
            st = _stat(pid)
            if st and st[1] == t:
                pids.add(pid)
        for pid in list(pids):
            pids.update(descendants(pid))
        pids.discard(me)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except OSError:
                pass
        time.sleep(0.2)
    return killed


class Reaper:
    """Start the watcher; `close()` (or the campaign's death) makes it sweep."""

    def __init__(self, campaign_id: str, dirs: Optional[List[str]] = None) -> None:
        env = {k: v for k, v in os.environ.items() if k != ENV}
        r, w = os.pipe()
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), campaign_id, *(dirs or [])],
                                     stdin=r, stdout=subprocess.DEVNULL, env=env, start_new_session=True,
                                     close_fds=True)
        os.close(r)
        self._w: Optional[int] = w

    def close(self, timeout: float = 15.0) -> None:
        if self._w is None:
            return
        os.close(self._w)
        self._w = None
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass


def main(argv: List[str]) -> int:
    import select

    campaign_id, dirs = argv[0], argv[1:]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is for the campaign
    parent = os.getppid()
    tracked: Dict[int, int] = {}
    before = set(descendants(parent).items())  # what the caller had already started is not ours
    while True:
        # Processes that hide the marker (setproctitle overwrites the environment
        # area, as Ray's agents do) are caught by ancestry, noted while alive.
        tracked.update(kv for kv in descendants(parent).items() if kv not in before)
        tracked.pop(os.getpid(), None)
        try:
            ready, _, _ = select.select([0], [], [], TRACK_S)
            if ready and not os.read(0, 4096):
                break
        except InterruptedError:
            continue
        except OSError:
            break
    sweep(campaign_id, tracked)
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
