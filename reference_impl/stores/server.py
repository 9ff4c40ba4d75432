"""The in-memory store served to other processes (a volatile ledger).

`python -m reference_impl.stores.server --address-file FILE` starts one
InMemoryMetadataStore behind a `multiprocessing` manager on loopback, writes
`{"address", "authkey", "ledger_id", "pid"}` to FILE atomically (mode 0600: the
authkey lets a client in, and the manager speaks pickle), and serves
until killed. Producer and consumer connect with `RemoteMetadataStore`.
Killing this process loses the ledger: clients then get `StoreUnavailable`,
and a restarted server has a new `ledger_id`, so the loss is detectable.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import sys
import time
import uuid
from multiprocessing.managers import BaseManager
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

from ..contracts import SampleRef
from ..private_files import write_secret_json
from .base import CONTRACT_METHODS, MetadataStore, StoreUnavailable
from .memory import InMemoryMetadataStore

_EXPOSED = CONTRACT_METHODS + ("commit_samples_once",)
NODE_ENV = "DFH_STORE_NODE"
#: One call retries network failures for at most this long, then fails closed.
DEFAULT_RETRY_BUDGET_S = 60.0

_STORE: Optional[InMemoryMetadataStore] = None


def _get_store() -> InMemoryMetadataStore:
    return _STORE


class _ServerManager(BaseManager):
    pass


_ServerManager.register("store", callable=_get_store, exposed=_EXPOSED)


class _ClientManager(BaseManager):
    pass


_ClientManager.register("store", exposed=_EXPOSED)


def serve(address_file: str) -> None:
    global _STORE
    _STORE = InMemoryMetadataStore()
    authkey = secrets.token_bytes(16)
    mgr = _ServerManager(address=("127.0.0.1", 0), authkey=authkey)
    server = mgr.get_server()
    # The authkey is the only way in: the file is the run owner's alone (mode 0600).
    write_secret_json(
        address_file,
        {
            "address": list(server.address),
            "authkey": authkey.hex(),
            "ledger_id": _STORE.ledger_id(),
            "pid": os.getpid(),
        },
    )
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    server.serve_forever()


class RemoteMetadataStore(MetadataStore):
    """Client of the store server.

    A call that fails on the network (its reply lost, the connection reset or
    hung by a partition) is retried on a new connection, read from the address
    file again, until `retry_budget_s` runs out (then StoreUnavailable). A
    server that came back with another ledger (it was restarted: the volatile
    ledger is gone) is StoreUnavailable at once. Retries are idempotent: a
    commit carries one token per call, so a retry answers fresh for the ids its
    own lost attempt committed. `DFH_STORE_NODE` picks this node's endpoint
    (its network proxy) when the address file lists one.
    """

    profile = "volatile"

    def __init__(self, address_file: str, *, retry_budget_s: float = DEFAULT_RETRY_BUDGET_S) -> None:
        self.address_file = address_file
        self.retry_budget_s = float(retry_budget_s)
        self.node = os.environ.get(NODE_ENV, "")
        info = self._read()
        self.expected_ledger_id = info["ledger_id"]
        self.on_network_event: Optional[Callable[..., None]] = None
        self._proxy = None
        try:
            self._connect(info)
        except (OSError, EOFError) as e:
            raise StoreUnavailable(f"cannot reach the store server at {info['address']}: {e}") from e

    def _read(self) -> Dict[str, Any]:
        try:
            with open(self.address_file) as f:
                return json.load(f)
        except (FileNotFoundError, ValueError) as e:
            raise StoreUnavailable(f"store server address file {self.address_file} is missing") from e

    def _connect(self, info: Dict[str, Any]) -> None:
        if info["ledger_id"] != self.expected_ledger_id:
            raise StoreUnavailable(f"store server ledger lost: the server now holds ledger {info['ledger_id']}, "
                                   f"not {self.expected_ledger_id}")
        address = (info.get("endpoints") or {}).get(self.node) or info["address"]
        mgr = _ClientManager(address=tuple(address), authkey=bytes.fromhex(info["authkey"]))
        mgr.connect()
        self._proxy = mgr.store()

    def _call(self, name: str, *args, ids: Sequence[str] = (), **kwargs):
        deadline = time.monotonic() + self.retry_budget_s
        attempt = 0
        while True:
            attempt += 1
            try:
                if self._proxy is None:
                    self._connect(self._read())
                out = getattr(self._proxy, name)(*args, **kwargs)
            except (OSError, EOFError, StoreUnavailable) as e:
                if isinstance(e, StoreUnavailable) and "ledger lost" in str(e):
                    raise
                self._proxy = None
                self._note(call=name, outcome="indeterminate", attempt=attempt, error=f"{type(e).__name__}: {e}",
                           ids=list(ids))
                if time.monotonic() > deadline:
                    self._note(call=name, outcome="failed", attempts=attempt, ids=list(ids))
                    raise StoreUnavailable(f"store server connection lost during {name}: {e}") from e
                time.sleep(min(0.5, 0.02 * attempt))
                continue
            if attempt > 1:
                self._note(call=name, outcome="ok", attempts=attempt, ids=list(ids))
            return out

    def _note(self, **fields: Any) -> None:
        if self.on_network_event is not None:
            self.on_network_event(**fields)

    def ledger_id(self) -> str:
        return self._call("ledger_id")

    def commit_sample(self, ref: SampleRef) -> bool:
        return self.commit_samples([ref])[0]

    def commit_samples(self, refs: Sequence[SampleRef]) -> List[bool]:
        refs = list(refs)
        token = uuid.uuid4().hex  # one per call: every retry of this call carries it
        return self._call("commit_samples_once", token, refs, ids=[r.sample_id for r in refs])

    def is_committed(self, sample_id: str) -> bool:
        return self._call("is_committed", sample_id)

    def get_committed(self, sample_id: str) -> Optional[SampleRef]:
        return self._call("get_committed", sample_id)

    def committed_count(self) -> int:
        return self._call("committed_count")

    def all_committed_ids(self) -> List[str]:
        return self._call("all_committed_ids")

    def record_train_ack(
        self, sample_ids: Iterable[str], *, global_step: Optional[int], optimizer_durable: bool
    ) -> None:
        ids = list(sample_ids)
        self._call("record_train_ack", ids, global_step=global_step, optimizer_durable=optimizer_durable, ids=ids)

    def durable_marker(self) -> Dict[str, Any]:
        return self._call("durable_marker")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reference_impl.stores.server")
    ap.add_argument("--address-file", required=True)
    ap.add_argument("--incarnation", type=int, default=0, help="restart count (informational)")
    args = ap.parse_args(argv)
    serve(args.address_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
