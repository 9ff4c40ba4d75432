"""Executors: where a bag of independent trials runs (local worker processes or Ray tasks).

Both expose one interface, usable beyond campaigns (simulate, certify's heavy
tiers): `map_trials(fn, items, executor)` yields `(item, result)` pairs as they
finish, where a trial that could not run (a dead worker, a lost node, a broken
pool) yields `(item, TrialLost(reason))` instead of being dropped. `fn` must be
a module-level function (it is pickled to the workers).

* `LocalExecutor(jobs)`: a process pool. Each worker sets a parent-death
  signal (SIGKILL) first, so a campaign killed by any signal, SIGKILL included,
  takes its workers with it, and each worker's zygote follows its worker
  (the zygote's own parent-death signal). Workers ignore SIGINT: the driver
  decides what an interrupt means.
* `RayExecutor(address=None, jobs)`: each item is one Ray task with
  `num_cpus=1`, retried up to `max_retries` times when its worker or node dies
  (a trial is a pure function of its seed, so a retry is the same trial).
  Without `address` it starts a local instance with `jobs` CPUs and its temp
  dir in a private folder removed at the end. Each Ray worker process keeps
  its own zygote across tasks (the runner's per-process zygote client).
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

from ..exit_codes import HarnessError, UsageError

EXECUTORS = ("local", "ray")
TICK_S = 1.0
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class TrialLost:
    """A trial whose worker died or could not be reached: never a pass, never dropped."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"TrialLost({self.reason!r})"


def _pool_init(parent_pid: int) -> None:
    from reference_impl.procutil import set_parent_death_signal

    set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != parent_pid:  # the campaign died before the signal was armed
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class LocalExecutor:
    name = "local"

    def __init__(self, jobs: int) -> None:
        self.jobs = jobs
        self._ex: Optional[ProcessPoolExecutor] = None

    def __enter__(self) -> "LocalExecutor":
        import multiprocessing as mp

        # fork: the workers are direct children of this (main) thread, which
        # lives as long as the campaign, so their parent-death signal holds.
        self._ex = ProcessPoolExecutor(max_workers=self.jobs, mp_context=mp.get_context("fork"),
                                       initializer=_pool_init, initargs=(os.getpid(),))
        return self

    def run(self, fn: Callable, items: List[Any]) -> Iterator[List[Tuple[Any, Any]]]:
        """Yield, every tick, the list of (item, result) pairs finished since the last one."""
        assert self._ex is not None
        futs = {self._ex.submit(fn, it): it for it in items}
        pending = set(futs)
        while pending:
            done, pending = wait(pending, timeout=TICK_S, return_when=FIRST_COMPLETED)
            out = []
            for f in done:
                try:
                    out.append((futs[f], f.result()))
                except Exception as e:  # BrokenProcessPool: a worker died under this trial
                    out.append((futs[f], TrialLost(f"local worker lost: {e!r}")))
            yield out

    def temp_dirs(self) -> List[str]:
        return []

    def abort(self) -> None:
        """Kill the workers now (their zygotes and runs follow by parent-death signal)."""
        if self._ex is None:
            return
        procs = list((getattr(self._ex, "_processes", None) or {}).values())
        for p in procs:
            try:
                os.kill(p.pid, signal.SIGKILL)
            except (ProcessLookupError, TypeError):
                pass
        self._ex.shutdown(wait=False, cancel_futures=True)
        for p in procs:
            p.join(timeout=5)
        self._ex = None

    def __exit__(self, *exc) -> None:
        if self._ex is not None:
            self._ex.shutdown(wait=True, cancel_futures=True)
            self._ex = None


class RayExecutor:
    name = "ray"

    def __init__(self, jobs: int, address: Optional[str] = None, *, max_retries: int = 2,
                 env: Optional[Dict[str, str]] = None, ship_code: bool = False) -> None:
        self.jobs, self.address, self.max_retries = jobs, address, max_retries
        self.start_s: Optional[float] = None
        self.env = dict(env or {})
        self.ship_code = ship_code
        # A private temp dir for a local instance (short: it holds unix sockets), removed at the end.
        self._tmp: Optional[str] = None if address else tempfile.mkdtemp(prefix="dfh-ray-")
        self._refs: Dict[Any, Any] = {}
        self.ray = None

    def __enter__(self) -> "RayExecutor":
        try:
            import ray
        except ImportError:
            self._cleanup()
            raise UsageError("--executor ray: the ray package is not installed (pip install -e .[ray])") from None
        self.ray = ray
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        env_vars = dict(self.env)
        env_vars["PYTHONPATH"] = os.pathsep.join(p for p in (_REPO_ROOT, os.getcwd(), os.environ.get("PYTHONPATH"))
                                                 if p)
        runtime_env: Dict[str, Any] = {"env_vars": env_vars}
        kw: Dict[str, Any] = {"runtime_env": runtime_env, "log_to_driver": False, "logging_level": "ERROR",
                              "configure_logging": True}
        if self.address:
            kw["address"] = self.address
            if self.ship_code:
                runtime_env["py_modules"] = [os.path.join(_REPO_ROOT, "harness"),
                                             os.path.join(_REPO_ROOT, "reference_impl")]
        else:
            kw.update(num_cpus=self.jobs, include_dashboard=False, _temp_dir=self._tmp)
        t0 = time.monotonic()
        try:
            ray.init(**kw)
            self.start_s = round(time.monotonic() - t0, 2)
        except Exception as e:
            self._cleanup()
            where = f"--address {self.address}" if self.address else "a local instance"
            raise HarnessError(f"--executor ray: could not start or reach {where}: {e}") from e
        return self

    def run(self, fn: Callable, items: List[Any]) -> Iterator[List[Tuple[Any, Any]]]:
        ray = self.ray
        remote = ray.remote(num_cpus=1, max_retries=self.max_retries, retry_exceptions=False)(fn)
        self._refs = {remote.options(name=f"dfh_trial_{i}").remote(it): it for i, it in enumerate(items)}
        pending = list(self._refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=len(pending), timeout=TICK_S, fetch_local=True)
            out = []
            for ref in ready:
                item = self._refs.pop(ref)
                try:
                    out.append((item, ray.get(ref)))
                except Exception as e:  # WorkerCrashedError, NodeDiedError, ... after the retries
                    out.append((item, TrialLost(f"ray task lost after {self.max_retries} retries: "
                                                f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")))
            yield out

    def abort(self) -> None:
        if self.ray is None:
            return
        for ref in list(self._refs):
            try:
                self.ray.cancel(ref, force=True)
            except Exception:
                pass
        self._refs = {}
        self.__exit__()

    def temp_dirs(self) -> List[str]:
        return [self._tmp] if self._tmp else []

    def _cleanup(self) -> None:
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __exit__(self, *exc) -> None:
        if self.ray is not None and self.ray.is_initialized():
            self.ray.shutdown()
        self._cleanup()


def make_executor(name: str, jobs: int, address: Optional[str] = None, **kw) -> Any:
    if name == "local":
        if address:
            raise UsageError(f"--address {address!r} needs --executor ray")
        return LocalExecutor(jobs)
    if name == "ray":
        return RayExecutor(jobs, address, **kw)
    raise UsageError(f"--executor {name!r}: allowed {', '.join(EXECUTORS)}")


def map_trials(fn: Callable, items: Iterable[Any], executor: str = "local", *, jobs: int = 2,
               address: Optional[str] = None) -> Iterator[Tuple[Any, Any]]:
    """Run `fn(item)` for every item on `executor`; yield (item, result or TrialLost) as they finish."""
    with make_executor(executor, jobs, address) as ex:
        for batch in ex.run(fn, list(items)):
            yield from batch


def split_shares(total: int, jobs: int, seed: int) -> List[Tuple[int, int]]:
    """`total` units of work in at most `jobs` shares, as (count, seed): the counts differ
    by at most one, share i gets seed `seed*1000+i`, so any executor gets the same shares."""
    jobs = max(1, min(int(jobs), int(total) or 1))
    return [(total // jobs + (1 if i < total % jobs else 0), seed * 1000 + i) for i in range(jobs)]


def map_shares(fn: Callable, items: Iterable[Any], executor: str, *, what: str, jobs: int = 2,
               address: Optional[str] = None) -> Iterator[Tuple[Any, Any]]:
    """`map_trials` for the shares of one job: a lost share is a HarnessError naming `what`,
    never a pass and never dropped."""
    from ..exit_codes import HarnessError

    for item, res in map_trials(fn, items, executor, jobs=jobs, address=address):
        if isinstance(res, TrialLost):
            raise HarnessError(f"{what}: a share was lost on {executor}: {res}")
        yield item, res

