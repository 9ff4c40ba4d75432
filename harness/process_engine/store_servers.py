"""The run's networked store server and the network between it and each process.

`RunRedisServer` starts the run's Redis server as the supervisor's process
`store_server` (so it is killed and restarted like any process, and traced for
power cuts when the run is traced), puts one `NodeProxy` in front of it for
each client node (the producer, the consumer, each consumer rank), writes the
connection file with each node's endpoint, and delivers the network faults
(`partition`, `latency`, `reset`, `lost_reply`) to the target node's proxy.
A client process learns its node name from `DFH_STORE_NODE` (`env_for`).

The server's first start creates the ledger; a restart must bring it back
from the server's own files (a server that lost them makes every client fail
closed).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from ..exit_codes import UsageError
from ..faults import Latency, Network, Partition, Reset
from ..network.proxy import NodeProxy
from ..stores.redis_server import RedisServer
from .supervisor import Supervisor

NAME = "store_server"
NODE_ENV = "DFH_STORE_NODE"


def nodes_of(world_size: int) -> List[str]:
    """The client nodes of a run: the producer, the consumer (group), and each rank of a group."""
    return ["producer", "consumer"] + ([f"consumer.rank{r}" for r in range(world_size)] if world_size > 1 else [])


class RunRedisServer:
    """One run's Redis server under `sup`, with a proxy per client node."""

    def __init__(self, workdir: str, sup: Supervisor, *, persistence: str, world_size: int, seed: int) -> None:
        self.sup = sup
        self.server = RedisServer(workdir, persistence)
        # The server's files exist before the power-loss tracer takes its baseline of the work dir.
        self.server.prepare()
        self.proxies = {n: NodeProxy(n, ("127.0.0.1", self.server.port), seed=seed) for n in nodes_of(world_size)}
        self.server.write_connection({n: p.address for n, p in self.proxies.items()})
        self.starts = 0

    def start(self) -> None:
        """First start (then the ledger is created) or a restart after a kill or a power cut."""
        p = self.sup.spawn(NAME, "harness.stores.redis_server", self.server.argv())
        self.starts += 1
        self.server.wait_ready(lambda: p.poll() is None)
        if self.starts == 1:
            self.server.create_ledger()

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

    def landed(self) -> List[tuple]:
        """(fault id, how it was seen) for every network fault that took effect so far."""
        return [(x.fault, x.detail) for p in self.proxies.values() for x in p.landed if x.fault is not None]

    def summary(self) -> Dict[str, Any]:
        return {"server": self.server.describe(), "starts": self.starts,
                "proxies": [p.summary() for p in self.proxies.values()]}

    def close(self) -> None:
        for p in self.proxies.values():
            p.close()


def close(server: Optional[RunRedisServer]) -> None:
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
            seed: int) -> Optional[RunRedisServer]:
    """The networked store server a run with `backend` needs, or None."""
    if server_kind(backend) is None:
        return None
    persistence = store.get("persistence", "always")
    if ":" in backend:  # a backend may name the persistence it is meant to run on
        from reference_impl.stores import load_factory

        persistence = getattr(load_factory(backend), "store_persistence", persistence)
    return RunRedisServer(workdir, sup, persistence=persistence, world_size=world_size, seed=seed)
