"""Resolve `module:attr` to a store factory and open stores from it.

`attr` is a MetadataStore class or any callable taking a working directory:

* a class whose constructor needs a positional argument gets a fresh file
  `<workdir>/store.db` (the same convention `reference_impl.stores.open_store`
  uses for third-party backends, so tier 4 opens the store the same way);
* a class whose constructor needs nothing is called bare;
* any other callable is called with the working directory.

Every failure is a `LoadError` whose message names the cause; the CLI turns it
into exit code 2.
"""

from __future__ import annotations

import inspect
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from harness.exit_codes import UsageError
from reference_impl.resolve import ResolveError
from reference_impl.resolve import resolve as resolve_spec
from reference_impl.stores.base import MetadataStore

from ..stores import shared_server
from .store_calls import READ_METHODS, close_store, missing_methods  # noqa: F401 (re-exported)

PROFILES = ("durable", "volatile")


class LoadError(UsageError):
    """Bad input: the factory cannot be resolved, built, or is not a store (exit 2)."""


class OneByOneAdapter(MetadataStore):
    """Drives an older store that has only `commit_sample` through the batch API.

    `commit_samples` becomes one `commit_sample` call per ref, in order (so a
    repeated id inside a batch is fresh once if the store is correct). Every
    other call goes to the store unchanged.
    """

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.profile = getattr(inner, "profile", None)

    def commit_sample(self, ref):
        return self._inner.commit_sample(ref)

    def commit_samples(self, refs):
        return [self._inner.commit_sample(r) for r in list(refs)]

    def is_committed(self, sample_id):
        return self._inner.is_committed(sample_id)

    def get_committed(self, sample_id):
        return self._inner.get_committed(sample_id)

    def committed_count(self):
        return self._inner.committed_count()

    def all_committed_ids(self):
        return self._inner.all_committed_ids()

    def record_train_ack(self, sample_ids, *, global_step, optimizer_durable):
        return self._inner.record_train_ack(sample_ids, global_step=global_step, optimizer_durable=optimizer_durable)

    def durable_marker(self):
        return self._inner.durable_marker()

    def close(self) -> None:
        fn = getattr(self._inner, "close", None)
        if callable(fn):
            fn()

    def __getattr__(self, name: str) -> Any:
        if name == "_inner":
            raise AttributeError(name)
        return getattr(self._inner, name)


def _required_positional(cls: Any) -> int:
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError):
        return 0
    return sum(
        1
        for p in sig.parameters.values()
        if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    )


@dataclass
class StoreTarget:
    """A resolved store factory plus how to call it."""

    factory: Any
    label: str
    spec: Optional[str] = None  # module:attr when the factory has one
    kind: str = "callable-dir"  # class-path | class-bare | callable-dir
    adapter: Optional[str] = None  # description of the adapter, if one is used
    declared_profile: Optional[str] = None
    notes: List[str] = field(default_factory=list)

    @property
    def takes_path(self) -> bool:
        return self.kind in ("class-path", "callable-dir")

    def default_profile(self) -> (str, str):
        """(profile, where the choice came from)."""
        if self.declared_profile in PROFILES:
            return self.declared_profile, "declared by the store (profile attribute)"
        if self.takes_path:
            return "durable", "default: the factory takes a path"
        return "volatile", "default: the factory takes no path"

    #: the record types certification builds refs from (harness.certify.records)
    records: Any = None
    #: the server started for a networked backend (harness.stores.shared_server), described
    store_server: Optional[Dict[str, Any]] = None
    #: what the first calls found (harness.certify.probe): "hang", "retains_nothing", ...
    probe: Dict[str, Any] = field(default_factory=dict)

    def construct_call(self) -> str:
        return {
            "class-path": f"{self.label}(<workdir>/store.db)",
            "class-bare": f"{self.label}()",
            "callable-dir": f"{self.label}(<workdir>)",
        }[self.kind]

    def open_raw(self, workdir: str) -> Any:
        from .guard import watch

        os.makedirs(workdir, exist_ok=True)
        if shared_server.declared_server(self.factory):  # a networked backend: its own ledger on the server
            shared_server.provision(workdir)
        with watch("constructor", (), None, raw=("constructor", (), {})):
            if self.kind == "class-path":
                return self.factory(os.path.join(workdir, "store.db"))
            if self.kind == "class-bare":
                return self.factory()
            return self.factory(workdir)

    def open(self, workdir: str) -> Any:
        """A store whose calls are bounded by the call timeout (guard.TimedStore)."""
        from .guard import TimedStore

        store = self.open_raw(workdir)
        if self.adapter is not None and not callable(getattr(store, "commit_samples", None)):
            store = OneByOneAdapter(store)
        return TimedStore(store)


def resolve(spec: str) -> Any:
    """`module:attr` (attr may be dotted) to the object; LoadError names the cause."""
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return resolve_spec(spec, "store factory", example="reference_impl.stores.sqlite:SQLiteMetadataStore")
    except ResolveError as e:
        raise LoadError(str(e)) from e


def classify(factory: Any, spec: Optional[str] = None) -> StoreTarget:
    """A StoreTarget for a factory without building a store (no checks)."""
    if inspect.isclass(factory):
        kind = "class-path" if _required_positional(factory) >= 1 else "class-bare"
    else:
        kind = "callable-dir"
    return StoreTarget(factory=factory, label=spec or repr(factory), spec=spec, kind=kind)


def from_factory(
    factory: Any,
    *,
    spec: Optional[str] = None,
    label: Optional[str] = None,
    probe_dir: Optional[str] = None,
    records: Optional[str] = None,
) -> StoreTarget:
    """Classify a factory; in a child process bounded by the call timeout, build one store,
    check it is one, find its record types and make the first calls (harness.certify.probe)."""
    from . import probe as _probe
    from .records import RecordsError, discover

    if spec is None:
        spec = importable_spec(factory)
    name = label or spec or getattr(factory, "__qualname__", None) or repr(factory)
    if not callable(factory):
        raise LoadError(
            f"store factory {name!r}: not a store: {type(factory).__name__} object is neither "
            "a MetadataStore class nor a callable taking a working directory"
        )
    if inspect.isclass(factory):
        kind = "class-path" if _required_positional(factory) >= 1 else "class-bare"
    else:
        kind = "callable-dir"
    target = StoreTarget(factory=factory, label=name, spec=spec, kind=kind)
    target.store_server = shared_server.start(factory)  # a networked backend's server, before any store opens
    declared = getattr(factory, "profile", None) if inspect.isclass(factory) else None
    try:
        if records:
            target.records = discover(explicit=records)
    except RecordsError as e:
        raise LoadError(str(e)) from e

    own_dir = probe_dir is None
    d = probe_dir or tempfile.mkdtemp(prefix="certify-probe-")
    try:
        found = _probe.run(target, d)
    finally:
        if own_dir:
            shutil.rmtree(d, ignore_errors=True)
    if found.get("construct_error"):
        raise LoadError(f"store factory {name!r}: constructor failed: {target.construct_call()} "
                        f"raised {found['construct_error']}")
    if found.get("not_a_store"):
        raise LoadError(f"store factory {name!r}: not a store: {found['not_a_store']}")
    if found.get("adapter"):
        target.adapter = (
            "one-by-one adapter: the store has only commit_sample (older contract); "
            "commit_samples was driven as one commit_sample call per ref"
        )
    if declared is None:
        declared = found.get("declared")
    if isinstance(declared, str) and declared in PROFILES:
        target.declared_profile = declared
    if target.records is None:
        target.records = _probe.records_in_parent(found, factory)
    if found.get("rejects"):
        raise LoadError(f"store factory {name!r}: {found['rejects']}")
    if found.get("build_error"):
        raise LoadError(f"store factory {name!r}: {found['build_error']}")
    target.probe = found
    return target


def load(spec: str, probe_dir: Optional[str] = None, records: Optional[str] = None) -> StoreTarget:
    return from_factory(resolve(spec), spec=spec, probe_dir=probe_dir, records=records)


def importable_spec(obj: Any) -> Optional[str]:
    """`module:qualname` when that name imports back to `obj`, else None."""
    mod = getattr(obj, "__module__", None)
    qual = getattr(obj, "__qualname__", None)
    if not mod or not qual or "<" in qual or mod == "__main__":
        return None
    try:
        found = resolve(f"{mod}:{qual}")
    except LoadError:
        return None
    return f"{mod}:{qual}" if found is obj else None


def describe_call(target: StoreTarget) -> str:
    return {
        "class-path": "class called with a fresh file <workdir>/store.db",
        "class-bare": "class called with no arguments",
        "callable-dir": "callable called with a working directory",
    }[target.kind]


Factory = Callable[[str], Any]
