"""Checks of a run's inputs that go beyond one scenario file, done before anything starts.

* `check_seed`: a seed is an integer in 0..2**63-1 (it seeds torch, which
  takes a signed 64-bit value);
* `check_backend`: `--backend` names a built-in store or resolves to a
  MetadataStore (a subclass, or a callable whose result has its methods);
* `check_variant`: `topology.variant` imports and names a callable;
* `check_for_run`: all of the above for a scenario about to run, plus its
  fault targets against its topology and backend (after a `--backend`
  override), plus, for a scenario with power cuts, the durability tracer
  (`check_powerloss`: no C compiler to build it is a UsageError, exit 2).

Each failure is a `UsageError` naming the option, key or value at fault.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
import tempfile
from typing import Any, Iterator

from .exit_codes import UsageError

MAX_SEED = 2 ** 63 - 1
BUILTIN_BACKENDS = ("sqlite", "inmemory", "private", "noop")
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def check_seed(seed: Any, where: str = "seed") -> int:
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise UsageError(f"{where} {seed!r}: allowed an integer 0..2**63-1 ({MAX_SEED})")
    return seed


@contextlib.contextmanager
def _import_path() -> Iterator[None]:
    """Import from the working directory and the repository, as a run's processes do."""
    saved = list(sys.path)
    for p in (_REPO_ROOT, os.getcwd()):
        if p not in sys.path:
            sys.path.insert(0, p)
    try:
        yield
    finally:
        sys.path[:] = saved


def _store_methods():
    from reference_impl.stores.base import MetadataStore

    return MetadataStore, sorted(MetadataStore.__abstractmethods__)


def check_backend(backend: str, where: str = "--backend") -> None:
    if backend in BUILTIN_BACKENDS:
        return
    if not isinstance(backend, str) or backend.count(":") != 1:
        raise UsageError(f"{where} {backend!r}: allowed {' | '.join(BUILTIN_BACKENDS)} | package.module:Factory")
    from reference_impl.stores import build_from_factory, load_factory

    with _import_path():
        try:
            factory = load_factory(backend)
        except ValueError as e:
            raise UsageError(f"{where}: {e}") from None
        except Exception as e:  # the module itself failed to import
            raise UsageError(f"{where} {backend!r}: importing it failed: {type(e).__name__}: {e}") from None
    base, methods = _store_methods()
    if inspect.isclass(factory):
        missing = [m for m in methods if not callable(getattr(factory, m, None))]
        if missing:
            raise UsageError(f"{where} {backend!r}: class {factory.__name__} is not a MetadataStore "
                             f"(missing {', '.join(missing)})")
        return
    if not callable(factory):
        raise UsageError(f"{where} {backend!r}: {type(factory).__name__} object is neither a MetadataStore class "
                         f"nor a factory callable")
    with tempfile.TemporaryDirectory(prefix="dfh-backend-check-") as d:
        try:
            store = build_from_factory(factory, d)
        except Exception as e:
            raise UsageError(f"{where} {backend!r}: calling the factory with a directory failed: "
                             f"{type(e).__name__}: {e}") from None
        try:
            missing = [m for m in methods if not callable(getattr(store, m, None))]
            if missing:
                raise UsageError(f"{where} {backend!r}: the factory returned a {type(store).__name__}, not a "
                                 f"MetadataStore (missing {', '.join(missing)})")
        finally:
            close = getattr(store, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:
                    pass


def check_variant(spec: str, where: str = "topology.variant") -> None:
    if not spec:
        return
    from reference_impl.variant import load_variant

    with _import_path():
        try:
            load_variant(spec)
        except ValueError as e:
            raise UsageError(f"{where}: {e}") from None
        except Exception as e:
            raise UsageError(f"{where} {spec!r}: loading it failed: {type(e).__name__}: {e}") from None


def check_for_run(sc, seed: Any) -> None:
    """Everything about (scenario, seed) that can be said wrong before a run starts."""
    from .scenario import check_fault_targets

    source = sc.path or sc.name
    check_seed(seed, "seed")
    check_backend(sc.backend, f"{source}: store.backend")
    check_variant(sc.topology.get("variant") or "", f"{source}: topology.variant")
    check_fault_targets(sc, "the backend")
    check_powerloss(sc)


def check_powerloss(sc) -> None:
    """A scenario with power cuts needs the tracer: built here (once), or refused naming why."""
    if not getattr(sc, "has_powercut", False):
        return
    from .powerloss.build import tracer_library

    try:
        tracer_library()
    except UsageError as e:
        raise UsageError(f"{sc.path or sc.name}: this scenario cuts power (faults of kind or action 'powercut'), "
                         f"which is refused here: {e}") from None


def check_against_topology(sc) -> None:
    """The scenario (after any --backend override) can run: targets, backend, variant."""
    from .scenario import check_fault_targets

    source = sc.path or sc.name
    check_fault_targets(sc, "the backend")
    check_variant(sc.topology.get("variant") or "", f"{source}: topology.variant")
