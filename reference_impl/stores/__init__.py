"""MetadataStore backends and `open_store`, which picks one from a run config."""

from __future__ import annotations

import inspect
import os
from typing import Any

from ..fileio import makedirs_durable
from ..resolve import resolve
from .base import MetadataStore, StoreUnavailable
from .memory import InMemoryMetadataStore
from .noop import NoOpMetadataStore
from .sqlite import SQLiteMetadataStore

BUILTIN_BACKENDS = ("sqlite", "inmemory", "redis", "private", "noop")

__all__ = [
    "MetadataStore",
    "StoreUnavailable",
    "InMemoryMetadataStore",
    "NoOpMetadataStore",
    "SQLiteMetadataStore",
    "open_store",
    "load_factory",
    "BUILTIN_BACKENDS",
]


def load_factory(spec: str):
    """Resolve `package.module:Attr` to the attribute; errors (ValueError) name the cause."""
    return resolve(spec, "store factory")


def build_from_factory(factory: Any, workdir: str) -> Any:
    """Call a class or callable with a working directory, as certification does.

    A class whose constructor takes no argument is called bare; one that takes
    a path gets `<workdir>/store.db`; any other callable gets the directory.
    """
    if inspect.isclass(factory):
        params = [
            p
            for p in inspect.signature(factory).parameters.values()
            if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        if not params:
            return factory()
        return factory(os.path.join(workdir, "store.db"))
    return factory(workdir)


def open_store(backend: str, workdir: str) -> MetadataStore:
    """The store one process of a run opens.

    * `sqlite`  - the shared WAL file `<workdir>/store.sqlite`;
    * `inmemory` - the store server whose address is in `<workdir>/store.addr`;
    * `redis`   - RedisMetadataStore on the Redis server named by `<workdir>/store.redis.json`
      (through this process's node endpoint, `$DFH_STORE_NODE`);
    * `private` - a fresh in-process InMemoryMetadataStore (the pre-O1.1 layout:
      nothing is shared between processes or restarts; known bad);
    * `noop`    - NoOpMetadataStore;
    * `pkg.mod:Factory` - a third-party backend built on `<workdir>`.
    """
    if backend == "sqlite":
        return SQLiteMetadataStore(os.path.join(workdir, "store.sqlite"))
    if backend == "inmemory":
        from .server import RemoteMetadataStore

        return RemoteMetadataStore(os.path.join(workdir, "store.addr"))
    if backend == "redis":
        from .redis import RedisMetadataStore

        return RedisMetadataStore(workdir)
    if backend == "private":
        return InMemoryMetadataStore()
    if backend == "noop":
        return NoOpMetadataStore()
    if ":" in backend:
        d = os.path.join(workdir, "store-backend")
        makedirs_durable(d)  # the backend's directory itself must survive a power cut
        return build_from_factory(load_factory(backend), d)
    raise ValueError(
        f"unknown store backend {backend!r}; allowed: {', '.join(BUILTIN_BACKENDS)} or package.module:Factory"
    )
