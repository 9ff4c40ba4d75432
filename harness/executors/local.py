"""`LocalExecutor`: trials on worker processes forked from the driver, one trial at a time each.

The driver knows which trial each worker holds, so a worker that dies under
a trial (SIGKILL, a segfault, `os._exit`) costs that trial one attempt and
nothing else: the trial goes back in the queue (up to `max_retries` retries,
then `TrialLost`), a fresh worker takes the dead one's place, and the other
workers keep their trials. An exception raised by `fn` is not retried (the
same item raises again): it is a `TrialLost` naming the exception.

Each worker sets a parent-death signal (SIGKILL) first, so a driver killed by
any signal, SIGKILL included, takes its workers with it, and each worker's
zygote follows its worker (the zygote's own parent-death signal). Workers
ignore SIGINT: the driver decides what an interrupt means.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from collections import deque
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_ready
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Tuple

from .lost import TrialLost

TICK_S = 1.0


def _worker_main(fn: Callable, conn: Connection, parent_pid: int) -> None:
    from reference_impl.procutil import set_parent_death_signal

    set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != parent_pid:  # the driver died before the signal was armed
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_DFL)
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        index, item = job
        try:
            out: Tuple[int, bool, Any] = (index, True, fn(item))
        except BaseException as e:  # reported to the driver as a lost trial, the worker lives on
            out = (index, False, f"{type(e).__name__}: {e}")
        try:
            conn.send(out)
        except Exception as e:  # a result that does not pickle: the trial is lost, not the worker
            conn.send((index, False, f"its result could not be sent back: {type(e).__name__}: {e}"))


class _Worker:
    def __init__(self, fn: Callable) -> None:
        ctx = mp.get_context("fork")  # no pickling of fn; the driver's main thread outlives its workers
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(fn, child, os.getpid()))
        self.proc.start()
        child.close()
        self.job: Optional[int] = None  # the index of the trial it holds

    def give(self, index: int, item: Any) -> None:
        self.job = index
        self.conn.send((index, item))

    def kill(self) -> None:
        try:
            os.kill(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, TypeError):
            pass

    def close(self, join_s: float) -> None:
        self.proc.join(timeout=join_s)
        if self.proc.is_alive():
            self.kill()
            self.proc.join(timeout=5)
        self.conn.close()


class LocalExecutor:
    name = "local"

    def __init__(self, jobs: int, *, max_retries: int = 2) -> None:
        self.jobs, self.max_retries = jobs, max_retries
        self.start_s: Optional[float] = None
        self._workers: List[_Worker] = []
        self.retried = 0  # trials given again after their worker died

    def __enter__(self) -> "LocalExecutor":
        return self

    def run(self, fn: Callable, items: List[Any]) -> Iterator[List[Tuple[Any, Any]]]:
        """Yield, every tick, the list of (item, result) pairs finished since the last one."""
        queue: Deque[int] = deque(range(len(items)))
        attempts: Dict[int, int] = {}
        left = len(items)
        while left:
            self._staff(fn, queue)
            for w in self._workers:
                if w.job is None and queue:
                    i = queue.popleft()
                    attempts[i] = attempts.get(i, 0) + 1
                    w.give(i, items[i])
            out: List[Tuple[Any, Any]] = []
            busy = [w for w in self._workers if w.job is not None]
            ready = wait_ready([w.conn for w in busy] + [w.proc.sentinel for w in busy], timeout=TICK_S)
            for w in busy:
                if w.conn in ready and w.conn.poll():
                    try:
                        index, ok, res = w.conn.recv()
                    except (EOFError, OSError):  # died while sending: same as died
                        pass
                    else:
                        w.job = None
                        out.append((items[index], res if ok else TrialLost(f"local trial raised {res}")))
                        left -= 1
                        continue
                if w.proc.sentinel in ready or not w.proc.is_alive():
                    lost = self._bury(w, queue, attempts)
                    if lost is not None:
                        out.append((items[lost[0]], lost[1]))
                        left -= 1
            yield out

    def _staff(self, fn: Callable, queue: Deque[int]) -> None:
        """Fork workers until there are `jobs` of them (never more than the trials waiting need)."""
        idle = sum(1 for w in self._workers if w.job is None)
        while len(self._workers) < self.jobs and idle < len(queue):
            self._workers.append(_Worker(fn))
            idle += 1

    def _bury(self, w: _Worker, queue: Deque[int], attempts: Dict[int, int]) -> Optional[Tuple[int, TrialLost]]:
        """A dead worker leaves; its trial goes back in the queue, or is lost past its retries."""
        w.proc.join(timeout=5)
        code = w.proc.exitcode
        self._workers.remove(w)
        w.conn.close()
        index, w.job = w.job, None
        if index is None:
            return None
        how = f"killed by {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
        if attempts[index] <= self.max_retries:
            self.retried += 1
            queue.appendleft(index)
            return None
        return index, TrialLost(f"local worker lost ({how}) on each of {attempts[index]} attempts")

    def temp_dirs(self) -> List[str]:
        return []

    def abort(self) -> None:
        """Kill the workers now (their zygotes and runs follow by parent-death signal)."""
        for w in self._workers:
            w.kill()
        for w in self._workers:
            w.close(join_s=5)
        self._workers = []

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None:  # an interrupt or an error in the driver: do not wait for the trials
            self.abort()
            return
        for w in self._workers:
            try:
                w.conn.send(None)
            except OSError:
                pass
        for w in self._workers:
            w.close(join_s=30)
        self._workers = []
