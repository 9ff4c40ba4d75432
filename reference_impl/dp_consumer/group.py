"""The group process of the data-parallel consumer: forks the ranks, publishes
their pids, watches them, and turns a lost rank into a group restart.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import sys
import time
from typing import Dict, List, Optional

from ..channel import read_json, write_json_atomic
from ..config import EXIT_ERROR, EXIT_FAIL_CLOSED, EXIT_FAILED, EXIT_OK, EXIT_USAGE, RunConfig
from ..history import HistoryWriter, NullHistory
from ..procutil import libc, proc_state, set_parent_death_signal
from .comm import (
    EXIT_KILLED,
    EXIT_PEER_LOST,
    HANG_MARGIN_S,
    INBOX_DIR,
    MASTER_ADDR,
    RANKS_FILE,
    STOP_GRACE_S,
    collective_timeout_s,
)
from .rank import rank_main

# ---------------------------------------------------------------------------
# the group process
# ---------------------------------------------------------------------------

def listen_socket() -> socket.socket:
    """A bound, listening socket on a free port, handed to rank 0's TCPStore.

    The group binds it (port 0: the kernel picks a free one) and rank 0's store
    serves on that very socket (`master_listen_fd`), so no other process can
    take the port between choosing and binding it.
    """
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((MASTER_ADDR, 0))
    s.listen(128)
    return s


class _Rank:
    def __init__(self, rank: int, pid: int, hb_fd: int) -> None:
        self.rank = rank
        self.pid = pid
        self.hb_fd = hb_fd
        self.last_beat: Optional[float] = None  # the hang watch is armed at the first heartbeat
        self.code: Optional[int] = None

    def poll(self) -> Optional[int]:
        """Exit code, negative for a signal (as subprocess reports it), None while running."""
        if self.code is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.code = -signal.SIGKILL  # already reaped elsewhere: gone
                return self.code
            if pid:
                self.code = os.waitstatus_to_exitcode(status)
        return self.code

    def wait(self, timeout: float) -> Optional[int]:
        deadline = time.monotonic() + timeout
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        return self.code


def _spawn_ranks(cfg: RunConfig, args, listener: socket.socket) -> List[_Rank]:
    """Fork the ranks from the group, which has imported torch once for all of them.

    Each child joins nothing new (it stays in the group's process group, so a
    signal to that group reaches it), sets PR_SET_PDEATHSIG = SIGKILL (and
    exits at once if the group is already gone), then runs `rank_main`. CUDA
    is never initialised in the group, so every rank can initialise it after
    the fork.
    """
    libc()  # loaded here, before the fork: the child only calls prctl
    parent = os.getpid()
    port = listener.getsockname()[1]
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # every rank is on this host
    pipes = [os.pipe() for _ in range(cfg.world_size)]
    ranks = []
    for r in range(cfg.world_size):
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the rank
            code = EXIT_ERROR
            try:
                set_parent_death_signal(signal.SIGKILL)
                if os.getppid() != parent:
                    os._exit(EXIT_KILLED)
                for k, (rfd, wfd) in enumerate(pipes):
                    os.close(rfd)
                    if k != r:
                        os.close(wfd)
                if r != 0:
                    listener.close()
                rank_args = argparse.Namespace(
                    config=args.config, resume=args.resume, incarnation=args.incarnation, rank=r,
                    master_port=port, heartbeat_fd=pipes[r][1], listen_fd=listener.fileno() if r == 0 else None)
                code = rank_main(rank_args, cfg)
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    # No interpreter teardown: a process group with a dead peer can hang in it.
                    os._exit(code)
        ranks.append(_Rank(r, pid, pipes[r][0]))
    for _, wfd in pipes:
        os.close(wfd)
    for x in ranks:
        os.set_blocking(x.hb_fd, False)
    return ranks


def _kill_all(ranks: List[_Rank]) -> Dict[int, Optional[int]]:
    """SIGKILL every live rank and reap it; the codes they had before."""
    before = {x.rank: x.poll() for x in ranks}
    for x in ranks:
        if x.poll() is None:
            try:
                os.kill(x.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for x in ranks:
        x.wait(30)
    return before


def _killed(code: Optional[int]) -> bool:
    return code is not None and (code < 0 or code in (EXIT_KILLED, EXIT_PEER_LOST))


def _old_rank_alive(pid: int, config: str) -> bool:
    """True while `pid` is a live rank of this run (its command line names this module and config)."""
    if proc_state(pid) in (None, "Z", "X"):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return b"reference_impl.dp_consumer" in argv and config.encode() in argv


def _await_old_ranks(cfg: RunConfig, args, history) -> None:
    """Ranks of the previous incarnation die with their group, but a rank in the
    middle of a system call (an fsync, a rename) finishes it first: let every one
    be gone before this incarnation reads the checkpoint."""
    info = read_json(cfg.path(RANKS_FILE)) or {}
    if info.get("inc") == args.incarnation:
        return
    pids = [int(p) for p in (info.get("pids") or {}).values()]
    live = [p for p in pids if _old_rank_alive(p, args.config)]
    if not live:
        return
    deadline = time.monotonic() + 5.0
    while live and time.monotonic() < deadline:
        time.sleep(0.01)
        live = [p for p in live if _old_rank_alive(p, args.config)]
    for p in live:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5.0
    while any(_old_rank_alive(p, args.config) for p in live) and time.monotonic() < deadline:
        time.sleep(0.01)
    history.emit("old_ranks", old_inc=info.get("inc"), pids=pids, killed=live)


def group_main(args, cfg: RunConfig) -> int:
    inc = args.incarnation
    history = (HistoryWriter(cfg.path("history", "consumer.group.jsonl"), "consumer.group", inc)
               if cfg.extra.get("history", True) else NullHistory())
    _await_old_ranks(cfg, args, history)
    os.makedirs(cfg.path(INBOX_DIR), exist_ok=True)
    # numpy's OpenBLAS (imported by torch) would start a thread pool; the group
    # forks, and a process with one thread forks cleanly (the zygote sets it too).
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    # Import once here what every rank needs (not CUDA: no torch.cuda call before the fork).
    import torch  # noqa: F401
    import torch.distributed  # noqa: F401

    from .. import consumer, model  # noqa: F401

    listener = listen_socket()
    port = listener.getsockname()[1]
    ranks = _spawn_ranks(cfg, args, listener)
    listener.close()  # rank 0 holds it now
    pids = {str(x.rank): x.pid for x in ranks}
    write_json_atomic(cfg.path(RANKS_FILE), {"inc": inc, "pids": pids})
    history.emit("start", pid=os.getpid(), resume=args.resume, world_size=cfg.world_size, port=port, pids=pids,
                 collective_timeout_s=collective_timeout_s())
    hang_s = collective_timeout_s() + HANG_MARGIN_S
    by_fd = {x.hb_fd: x for x in ranks}
    prev = time.monotonic()
    stop_since: Optional[float] = None
    try:
        while True:
            try:
                readable, _, _ = select.select(list(by_fd), [], [], 0.02)
            except InterruptedError:
                readable = []
            now = time.monotonic()
            if now - prev > 1.0:
                # The group itself was stopped (SIGSTOP of the process group):
                # nobody could beat meanwhile; start the clocks again.
                for x in ranks:
                    if x.last_beat is not None:
                        x.last_beat = now
            prev = now
            for fd in readable:
                x = by_fd[fd]
                try:
                    data = os.read(fd, 4096)
                except (BlockingIOError, InterruptedError):
                    continue
                if data:
                    x.last_beat = now
                else:  # EOF: the rank is gone; poll() tells how
                    del by_fd[fd]
            codes = {x.rank: x.poll() for x in ranks}
            c0 = codes[0]
            if c0 in (EXIT_OK, EXIT_USAGE, EXIT_FAIL_CLOSED, EXIT_FAILED):
                # Rank 0 ended by design and told the others to stop.
                if stop_since is None:
                    stop_since = now
                if all(c is not None for c in codes.values()) or now - stop_since > STOP_GRACE_S:
                    before = _kill_all(ranks)
                    history.emit("exit", code=c0, ranks={str(k): v for k, v in before.items()})
                    return c0
                continue
            ended = {r: c for r, c in codes.items() if c is not None and not (r > 0 and c == EXIT_OK)}
            stale = [x.rank for x in ranks if x.poll() is None and x.last_beat is not None
                     and now - x.last_beat > hang_s]
            if not ended and not stale:
                continue
            before = _kill_all(ranks)
            if stale and not ended:
                history.emit("hang", ranks=stale, silent_s=hang_s)
                print(f"consumer.group: rank(s) {stale} sent no heartbeat for {hang_s} s; restarting the group",
                      file=sys.stderr, flush=True)
                code = EXIT_KILLED
            elif any(_killed(c) for c in before.values()):
                code = EXIT_KILLED
            elif any(c == EXIT_USAGE for c in before.values()):
                code = EXIT_USAGE
            else:
                code = EXIT_ERROR
            history.emit("ranks_ended", ranks={str(k): v for k, v in before.items()}, code=code)
            print(f"consumer.group: ranks ended {before}; exit {code}", file=sys.stderr, flush=True)
            return code
    finally:
        _kill_all(ranks)
        for fd in list(by_fd):
            os.close(fd)
