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
from multiprocessing.managers import BaseManager
from typing import Any, Dict, Iterable, List, Optional, Sequence

from ..contracts import SampleRef
from ..private_files import write_secret_json
from .base import CONTRACT_METHODS, MetadataStore, StoreUnavailable
from .memory import InMemoryMetadataStore

_EXPOSED = CONTRACT_METHODS

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
    """Client of the store server; every transport failure is StoreUnavailable."""

    profile = "volatile"

    def __init__(self, address_file: str) -> None:
        try:
            with open(address_file) as f:
                info = json.load(f)
        except FileNotFoundError as e:
            raise StoreUnavailable(f"store server address file {address_file} is missing") from e
        self.address_file = address_file
        self.expected_ledger_id = info["ledger_id"]
        try:
            mgr = _ClientManager(address=tuple(info["address"]), authkey=bytes.fromhex(info["authkey"]))
            mgr.connect()
            self._proxy = mgr.store()
        except (OSError, EOFError) as e:
            raise StoreUnavailable(f"cannot reach the store server at {info['address']}: {e}") from e

    def _call(self, name: str, *args, **kwargs):
        try:
            return getattr(self._proxy, name)(*args, **kwargs)
        except (OSError, EOFError) as e:
            raise StoreUnavailable(f"store server connection lost during {name}: {e}") from e

    def ledger_id(self) -> str:
        return self._call("ledger_id")

    def commit_sample(self, ref: SampleRef) -> bool:
        return self._call("commit_sample", ref)

    def commit_samples(self, refs: Sequence[SampleRef]) -> List[bool]:
        return self._call("commit_samples", list(refs))

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
        self._call(
            "record_train_ack", list(sample_ids), global_step=global_step, optimizer_durable=optimizer_durable
        )

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
