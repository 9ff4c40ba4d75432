"""The state of one simulated run: its processes, its store server, the run state object.

`RunState` holds everything one schedule's run changes (a new one per
`Simulation.run`); `SimProc` is one simulated process; `ServerStore` is the
in-memory store as the store server serves it, killable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from reference_impl.config import RunConfig
from reference_impl.process_loop import ProcessLoop
from reference_impl.stores.base import CONTRACT_METHODS

from .observation import EventLog, Invariants, SimHistory


class ServerStore:
    """The in-memory store as the store server serves it to one client connection.

    Every client of one server incarnation shares one InMemoryMetadataStore.
    When the simulation kills the server, the connections die: every later call
    on them raises StoreUnavailable (the reference's RemoteMetadataStore does
    the same on a lost connection), and a new server starts with an empty
    ledger (a new ledger_id).
    """

    _METHODS = CONTRACT_METHODS

    def __init__(self, store) -> None:
        self._store = store
        self.dead = False

    def __getattr__(self, name):
        if name not in self._METHODS:
            raise AttributeError(name)
        fn = getattr(self._store, name)

        def call(*args, **kwargs):
            if self.dead:
                from reference_impl.stores import StoreUnavailable

                raise StoreUnavailable(f"store server connection lost during {name}: server killed")
            return fn(*args, **kwargs)

        return call

    def close(self) -> None:
        pass


# -- one simulated process -------------------------------------------------------

class SimProc:
    """One simulated process: its incarnation, process loop, store connection, status."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.inc = -1
        self.loop: Optional[ProcessLoop] = None  # the process loop around the steppable object
        self.store = None
        self.h: Optional[SimHistory] = None
        self.status = "down"  # down | running | done | fail_closed | failed | peer_failed | error
        self.counts: Dict[str, int] = {}
        self.last_hit: Optional[Tuple[str, int, int]] = None  # (point, hit, events so far) in the current step
        self.tail_hit: Optional[Tuple[str, int]] = None  # the last step ended right at this failpoint hit

    @property
    def obj(self):
        """The steppable object (Producer or Consumer) while the process lives."""
        return self.loop.obj if self.loop is not None else None

    @property
    def terminal(self) -> bool:
        return self.status not in ("down", "running")


@dataclass
class RunState:
    """What one schedule's run holds; a new one per `Simulation.run`."""

    cfg: RunConfig
    shared_store: Optional[ServerStore]  # the store server's current incarnation (in-memory backend)
    observer: Any  # the engine's own store connection, for the marker checks
    inv: Invariants
    log: EventLog
    sup: SimHistory  # the supervisor's history: spawn, kill, exited, pause, cont, timeout
    procs: Dict[str, SimProc]
    server_inc: int = 0
    current: Optional[SimProc] = None  # the process being stepped (failpoint hits are its)
    armed: Optional[Tuple[str, str, str]] = None  # (target, point, action) of a running `fail`, `duplicate`, `replay`
    fired: Optional[Any] = None  # the fault the armed point fired (a Failpoint, or a Duplicate or Replay)
    vtime: float = 0.0  # virtual seconds (the consumer's clock)
    steps: int = 0
    faults: List[Any] = field(default_factory=list)  # the faults fired (harness.faults kinds)
    trace: List[str] = field(default_factory=list)
    error: Optional[str] = None  # a traceback: a process raised, or the engine has a bug
