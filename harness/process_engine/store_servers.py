"""The run's store server and the network between it and each client process.

A run whose backend has a server (`inmemory`, `redis`, or a third-party
backend that declares `store_server = "redis"`) gets one here: the server runs
as the supervisor's process `store_server` (killed and restarted like any
process, traced for power cuts when the run is traced), with one `NodeProxy`
in front of it for each client node (the producer, the consumer, each
consumer rank). The server's address file lists each node's endpoint; a
client process learns its node name from `DFH_STORE_NODE` (`env_for`).
Network faults (`partition`, `latency`, `reset`, `lost_reply`) go to the
target node's proxy.

* `RunRedisServer`: the Redis server, its files laid out before the power-loss
  baseline; its first start creates the ledger, a restart must bring it back
  from the server's own files (else every client fails closed);
* `RunMemoryServer`: the volatile in-memory store server; each start has a new
  ledger (and a new port: the proxies follow it).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, List, Optional

from reference_impl.private_files import write_secret_json

from ..exit_codes import HarnessError, UsageError
from ..faults import Latency, Network, Partition, Reset
from ..network.proxy import NodeProxy
from ..stores.redis_server import RedisServer
from .supervisor import Supervisor

NAME = "store_server"
NODE_ENV = "DFH_STORE_NODE"


def nodes_of(world_size: int) -> List[str]:
    """The client nodes of a run: the producer, the consumer (group), and each rank of a group."""
    return ["producer", "consumer"] + ([f"consumer.rank{r}" for r in range(world_size)] if world_size > 1 else [])


class ServedStore:
    """What both servers share: the supervisor, the proxies, fault delivery, the summary."""

    def __init__(self, sup: Supervisor, world_size: int, seed: int, upstream_port: int) -> None:
        self.sup = sup
        self.proxies = {n: NodeProxy(n, ("127.0.0.1", upstream_port), seed=seed) for n in nodes_of(world_size)}
        self.starts = 0
        self._armed: set = set()  # lost_reply failpoint faults already armed

    def endpoints(self) -> Dict[str, Any]:
        return {n: list(p.address) for n, p in self.proxies.items()}

    def describe(self) -> Dict[str, Any]:
        raise NotImplementedError

    @staticmethod
    def env_for(name: str) -> Dict[str, str]:
        return {NODE_ENV: name}

    def deliver(self, f: Network) -> str:
        """Apply network fault `f` to its node's proxy: "sent", or why it cannot land."""
        proxy = self.proxies.get(f.target)
        if proxy is None:
            return f"no network node {f.target!r}; nodes: {', '.join(self.proxies)}"
        fid = int(f.id)
        if isinstance(f, Partition):
            proxy.partition(float(f.duration_s), fault=fid)
        elif isinstance(f, Latency):
            proxy.latency(float(f.delay_s), float(f.jitter_s), f.direction, float(f.duration_s), fault=fid)
        elif isinstance(f, Reset):
            proxy.reset(fault=fid)
        else:
            proxy.lose_next_reply(fault=fid)
        return "sent"

    def arm_at_failpoints(self, sup: Supervisor, workdir: str, failpoints: List[Any]) -> None:
        """A process that stopped itself at a `lost_reply` failpoint: arm a lost reply on its
        node's proxy, then resume it (its next store call is the one whose answer is lost)."""
        from .powercut import stopped_at_powercut

        for name in ("producer", "consumer"):
            p = sup.procs.get(name)
            if p is None or p.poll() is not None or name not in self.proxies or not p.is_stopped():
                continue
            fid = stopped_at_powercut(workdir, name, p.inc, failpoints, action="lost_reply")
            if fid is None or fid in self._armed:
                continue
            self._armed.add(fid)
            self.proxies[name].lose_next_reply(fault=fid)
            sup.cont(name, fault=fid)

    def landed(self) -> List[tuple]:
        """(fault id, how it was seen) for every network fault that took effect so far."""
        return [(x.fault, x.detail) for p in self.proxies.values() for x in p.landed if x.fault is not None]

    def summary(self) -> Dict[str, Any]:
        return {"server": self.describe(), "starts": self.starts,
                "proxies": [p.summary() for p in self.proxies.values()]}

    def close(self) -> None:
        for p in self.proxies.values():
            p.close()


class RunRedisServer(ServedStore):
    """One run's Redis server under `sup`, with a proxy per client node."""

    def __init__(self, workdir: str, sup: Supervisor, *, persistence: str, world_size: int, seed: int) -> None:
        self.server = RedisServer(workdir, persistence)
        # The server's files exist before the power-loss tracer takes its baseline of the work dir.
        self.server.prepare()
        super().__init__(sup, world_size, seed, self.server.port)
        self.server.write_connection({n: p.address for n, p in self.proxies.items()})

    def start(self) -> None:
        """First start (then the ledger is created) or a restart after a kill or a power cut."""
        from ..stores.redis_server import PORT_TAKEN

        def spawn():
            p = self.sup.spawn(NAME, "harness.stores.redis_server", self.server.argv())
            return (lambda: p.poll() is None), (lambda: PORT_TAKEN in p.stderr_tail())

        self.server.start_until_bound(spawn)
        for proxy in self.proxies.values():  # the start may have moved the server to another port
            proxy.upstream = ("127.0.0.1", self.server.port)
        self.starts += 1
        if self.starts == 1:
            self.server.create_ledger()

    def describe(self) -> Dict[str, Any]:
        return self.server.describe()


class RunMemoryServer(ServedStore):
    """The in-memory store server (`python -m reference_impl.stores.server`) behind the node proxies."""

    def __init__(self, workdir: str, sup: Supervisor, *, world_size: int, seed: int) -> None:
        self.address_file = os.path.join(workdir, "store.addr")
        super().__init__(sup, world_size, seed, 0)

    def start(self) -> None:
        if os.path.exists(self.address_file):
            os.unlink(self.address_file)
        p = self.sup.spawn(NAME, "reference_impl.stores.server", ["--address-file", self.address_file])
        self.starts += 1
        limit = time.monotonic() + 30
        while not os.path.exists(self.address_file):
            if time.monotonic() > limit or p.poll() is not None:
                raise HarnessError(f"store server did not start: {p.stderr_tail()}")
            time.sleep(0.01)
        with open(self.address_file) as f:
            info = json.load(f)
        for proxy in self.proxies.values():  # a new incarnation listens on a new port
            proxy.upstream = (str(info["address"][0]), int(info["address"][1]))
        write_secret_json(self.address_file, dict(info, endpoints=self.endpoints()))

    def describe(self) -> Dict[str, Any]:
        return {"software": "reference_impl.stores.server", "persistence": "none (volatile)"}

def close(server: Optional[ServedStore]) -> None:
    """Close a run's proxies (the server process is the supervisor's to stop)."""
    if server is not None:
        server.close()


def server_kind(backend: str) -> Optional[str]:
    """The store server a backend needs: `redis` for the built-in backend, else what a third-party
    factory declares in its `store_server` attribute (None: it needs none the harness starts)."""
    if backend == "redis":
        return "redis"
    if ":" not in backend:
        return None
    from reference_impl.stores import load_factory

    kind = getattr(load_factory(backend), "store_server", None)
    if kind not in (None, "redis"):
        raise UsageError(f"store backend {backend!r} declares store_server = {kind!r}; allowed: 'redis'")
    return kind


def check_for_run(backend: str, has_powercut: bool) -> None:
    """Refuse, before anything is written, a run whose store server cannot be started or traced."""
    if server_kind(backend) is None:
        return
    from ..stores.redis_server import find_binary, is_dynamic

    binary = find_binary()  # UsageError when there is none
    if has_powercut and not is_dynamic(binary):
        raise UsageError(f"power cuts need a dynamically linked redis-server (the tracer is preloaded); "
                         f"{binary} is statically linked: set DFH_REDIS_SERVER to another one")


def for_run(backend: str, workdir: str, sup: Supervisor, store: Dict[str, Any], world_size: int,
            seed: int) -> Optional[ServedStore]:
    """The store server a run with `backend` needs (behind its node proxies), or None."""
    if backend == "inmemory":
        return RunMemoryServer(workdir, sup, world_size=world_size, seed=seed)
    if server_kind(backend) is None:
        return None
    persistence = store.get("persistence", "always")
    if ":" in backend:  # a backend may name the persistence it is meant to run on
        from reference_impl.stores import load_factory

        persistence = getattr(load_factory(backend), "store_persistence", persistence)
    return RunRedisServer(workdir, sup, persistence=persistence, world_size=world_size, seed=seed)
