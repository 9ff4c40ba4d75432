"""`RayExecutor`: each trial one Ray task, on a local instance or an existing cluster.

Each item is one Ray task with `num_cpus=1`, retried up to `max_retries`
times when its worker or node dies. Without `address` it starts a local
instance with `jobs` CPUs and its temp dir in a private folder removed at the
end. Each Ray worker process keeps its own zygote across tasks (the runner's
per-process zygote client).

Reaching a cluster is bounded by `connect_timeout_s` (default 30 s, or what
`set_default_connect_timeout` set: the command line's --connect-timeout): Ray
itself retries an unreachable GCS for minutes. Past the bound, or when the
address refuses the connection, the executor stops with a UsageError (exit
2) naming the address.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple
from unittest import mock

from ..exit_codes import HarnessError, UsageError
from ..owned_dirs import make_owned_dir, sweep_dead
from ..process_engine.work_dir import ROOT_ENV, work_root
from .lost import TrialLost

TICK_S = 1.0
#: The raylet starts its workers at this niceness (Ray's default: 15).
WORKER_NICENESS_ENV = "RAY_worker_niceness"
DEFAULT_CONNECT_TIMEOUT_S = 30.0
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


_connect_timeout_s = DEFAULT_CONNECT_TIMEOUT_S


def set_default_connect_timeout(seconds: float) -> None:
    """The bound of every RayExecutor made afterwards in this process (and its forks) that is given none:
    the command line's --connect-timeout, so certify's and simulate's inner executors honour it too."""
    global _connect_timeout_s
    _connect_timeout_s = float(seconds)


def host_port(address: str) -> Optional[Tuple[str, int]]:
    """(host, port) of `HOST:PORT` or `ray://HOST:PORT`; None for `auto` and other forms Ray resolves itself."""
    a = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = a.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return None
    return host.strip("[]"), int(port)


def check_reachable(address: str, timeout_s: float) -> None:
    """A TCP connection to the address within `timeout_s`, or a UsageError naming it."""
    hp = host_port(address)
    if hp is None:
        return
    try:
        with socket.create_connection(hp, timeout=timeout_s):
            pass
    except OSError as e:
        why = (f"no answer within {timeout_s:g} s, the limit set by --connect-timeout"
               if isinstance(e, socket.timeout) else (e.strerror or str(e)))
        raise UsageError(f"--address {address}: cannot reach the Ray cluster ({why})") from None


class RayExecutor:
    name = "ray"

    def __init__(self, jobs: int, address: Optional[str] = None, *, max_retries: int = 2,
                 env: Optional[Dict[str, str]] = None, ship_code: bool = False,
                 connect_timeout_s: Optional[float] = None) -> None:
        self.jobs, self.address, self.max_retries = jobs, address, max_retries
        self.connect_timeout_s = _connect_timeout_s if connect_timeout_s is None else connect_timeout_s
        self.start_s: Optional[float] = None
        self.stop_s: Optional[float] = None  # how long the shutdown took
        self.monitor_stopped: Optional[int] = None  # the autoscaler monitor's pid, SIGKILLed before the shutdown
        self.env = dict(env or {})
        self.ship_code = ship_code
        # A private temp dir for a local instance (short: it holds unix sockets), removed at the end.
        self._tmp: Optional[str] = None if address else tempfile.mkdtemp(prefix="dfh-ray-")
        # The trials' work dirs (process_engine/work_dir.py) under a root of this executor's on the
        # tmpfs: Ray kills its workers at shutdown, mid-trial on an abort, and this root goes with them.
        self._work_root: Optional[str] = None
        root = None if address else work_root()
        if root is not None:
            sweep_dead(root, "dfh-ray-work-")  # (those of a driver SIGKILLed before its cleanup)
            self._work_root = make_owned_dir("dfh-ray-work-", root)
        self._refs: Dict[Any, Any] = {}
        self.ray = None

    def _init_kwargs(self) -> Dict[str, Any]:
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
            # Ray kills its workers at shutdown, so their own temp files (a fork server's socket dir,
            # for one) are never removed by them: they go into the private dir removed at the end.
            env_vars["TMPDIR"] = self._tmp
            # Ray starts its workers at nice 15, and a trial's runner, fork server, producer and
            # consumer inherit it: on a busy machine they then wait behind every other process,
            # and a runner that polls late sees a whole run end before its planned kills.
            env_vars[WORKER_NICENESS_ENV] = "0"
            if self._work_root:
                env_vars[ROOT_ENV] = self._work_root
        return kw

    def __enter__(self) -> "RayExecutor":
        try:
            import ray
        except ImportError:
            self._cleanup()
            raise UsageError("--executor ray: the ray package is not installed (pip install -e .[ray])") from None
        self.ray = ray
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        t0 = time.monotonic()
        try:
            if self.address:
                check_reachable(self.address, self.connect_timeout_s)
                self._init_bounded(ray, self._init_kwargs(), self.connect_timeout_s - (time.monotonic() - t0))
            else:
                kw = self._init_kwargs()
                # A local instance's workers inherit the raylet's environment, which is this process's
                # at init: set there, the variables need no runtime_env, and Ray's prestarted workers
                # (which have none) run the trials instead of new ones started per runtime_env.
                with mock.patch.dict(os.environ, kw.pop("runtime_env")["env_vars"]):
                    ray.init(**kw)
            self.start_s = round(time.monotonic() - t0, 2)
        except UsageError:
            self._cleanup()
            raise
        except Exception as e:
            self._cleanup()
            where = f"--address {self.address}" if self.address else "a local instance"
            raise HarnessError(f"--executor ray: could not start or reach {where}: {e}") from e
        return self

    def _init_bounded(self, ray: Any, kw: Dict[str, Any], timeout_s: float) -> None:
        """`ray.init` on a thread; past `timeout_s` it is abandoned (a daemon thread) and the address named."""
        box: Dict[str, Any] = {}

        def connect() -> None:
            try:
                ray.init(**kw)
                box["ok"] = True
            except BaseException as e:  # handed to the caller's thread
                box["error"] = e

        t = threading.Thread(target=connect, name="dfh-ray-connect", daemon=True)
        t.start()
        t.join(max(timeout_s, 1.0))
        if "error" in box:
            raise box["error"]
        if "ok" not in box:
            raise UsageError(f"--address {self.address}: no Ray cluster answered within "
                             f"{self.connect_timeout_s:g} s (the limit is --connect-timeout)")

    def run(self, fn: Callable, items: List[Any]) -> Iterator[List[Tuple[Any, Any]]]:
        ray = self.ray
        remote = ray.remote(num_cpus=1, max_retries=self.max_retries, retry_exceptions=False)(fn)
        self._refs = {remote.options(name=f"dfh_trial_{i}").remote(it): it for i, it in enumerate(items)}
        pending = list(self._refs)
        while pending:
            # Back at the first finished trial (not at the tick's end), then whatever else is done by now.
            ready, pending = ray.wait(pending, num_returns=1, timeout=TICK_S, fetch_local=True)
            if ready and pending:
                more, pending = ray.wait(pending, num_returns=len(pending), timeout=0, fetch_local=True)
                ready += more
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
        return [d for d in (self._tmp, self._work_root) if d]

    def _cleanup(self) -> None:
        for d in (self._tmp, self._work_root):
            if d:
                shutil.rmtree(d, ignore_errors=True)
        self._tmp = self._work_root = None

    def __exit__(self, *exc) -> None:
        if self.ray is not None and self.ray.is_initialized():
            t0 = time.monotonic()
            if not self.address:
                self.monitor_stopped = stop_autoscaler_monitor(self.ray)
            self.ray.shutdown()
            self.stop_s = round(time.monotonic() - t0, 2)
        self._cleanup()


def stop_autoscaler_monitor(ray: Any) -> Optional[int]:
    """SIGKILL a local instance's autoscaler monitor before `ray.shutdown`; its pid, or None.

    `ray.shutdown` stops the GCS before the monitor, and the monitor's SIGTERM handler then tries
    to report its end to that GCS: Ray waits out its one-second grace and SIGKILLs it anyway,
    which was 1.0 of shutdown's 1.34 s. A private instance's monitor has nothing to save (there is
    no autoscaler to tell). Ray keeps its processes in a private attribute: when that is not there
    (another Ray version), nothing is done and shutdown takes its usual time.
    """
    node = getattr(getattr(getattr(ray, "_private", None), "worker", None), "_global_node", None)
    infos = (getattr(node, "all_processes", None) or {}).get("monitor") or []
    for info in infos:
        proc = getattr(info, "process", None)
        if proc is None or proc.poll() is not None:
            continue
        proc.kill()
        try:
            proc.wait(5)
        except Exception:
            pass  # Ray's own shutdown reaps it or reports it
        return proc.pid
    return None
