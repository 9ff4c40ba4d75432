"""Checks of a run's inputs that go beyond one scenario file, done before anything starts.

* `check_seed`: a seed is an integer in 0..2**63-1 (it seeds torch, which
  takes a signed 64-bit value);
* `check_backend`: `--backend` names a built-in store or resolves to a
  MetadataStore (a subclass, or a callable whose result has its methods);
* `check_variant`: `topology.variant` imports and names a callable;
* `check_output_names`: the names a run derives from its scenario's name and
  seed (its run dir, a shrunk scenario's file) fit the file system under the
  reports dir: each at most NAME_MAX bytes, and the deepest path a run writes
  at most PATH_MAX (`fs_limits`);
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
from typing import Any, Iterator, Optional, Sequence, Tuple

from .exit_codes import UsageError

MAX_SEED = 2 ** 63 - 1
BUILTIN_BACKENDS = ("sqlite", "inmemory", "redis", "private", "noop")  # as reference_impl.stores names them
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


#: "-%Y%m%d-%H%M%S-%f": the time stamp that ends a run dir's name.
RUN_DIR_STAMP_BYTES = len("-20260101-000000-000000")
#: The longest path a run writes below its run dir (work/history/consumer.rank0.jsonl, a temp file
#: next to it: under 64 bytes measured), with room to spare; kept clear of PATH_MAX.
RUN_DIR_TAIL_BYTES = 128
_DEFAULT_LIMITS = (255, 4096)


def fs_limits(path: str) -> Tuple[int, int]:
    """(NAME_MAX, PATH_MAX) of the file system that holds `path` (or would: its nearest existing ancestor)."""
    p = os.path.abspath(path or ".")
    while not os.path.exists(p) and os.path.dirname(p) != p:
        p = os.path.dirname(p)
    try:
        return int(os.pathconf(p, "PC_NAME_MAX")), int(os.pathconf(p, "PC_PATH_MAX"))
    except (OSError, ValueError):
        return _DEFAULT_LIMITS


def check_output_names(name: str, seed: int, reports_dir: str, where: str,
                       parents: Sequence[str] = (), reports_option: str = "--reports") -> None:
    """The run dir `<name>-<seed>-<stamp>` under `reports_dir` (below `parents`, e.g. a campaign's
    folder), and the shrunk scenario `<name>-shrunk-<seed>.toml` in it, can be created: UsageError
    naming `where` (the scenario's name) or `reports_option` otherwise."""
    if "\0" in name:
        raise UsageError(f"{where} {name!r}: a file name cannot hold a NUL character")
    name_max, path_max = fs_limits(reports_dir)
    n = len(name.encode("utf-8", "surrogateescape"))
    own = [n + len(f"-{seed}") + RUN_DIR_STAMP_BYTES, n + len(f"-shrunk-{seed}.toml")]
    if max(own) > name_max:
        raise UsageError(f"{where} {name[:40]!r}... ({n} bytes): too long for a file name here: the run dir named "
                         f"after it would be {own[0]} bytes, and this file system allows {name_max} per name "
                         f"(NAME_MAX); allowed: a name of at most {n - (max(own) - name_max)} bytes")
    depth = (len(os.path.abspath(reports_dir).encode("utf-8", "surrogateescape"))
             + sum(1 + len(p.encode()) for p in parents) + 1 + max(own) + RUN_DIR_TAIL_BYTES)
    if depth > path_max:
        raise UsageError(f"{reports_option} {reports_dir[:60]!r}...: too deep: the files a run writes under it would "
                         f"have paths of up to {depth} bytes, and this file system allows {path_max} (PATH_MAX)")


def check_for_run(sc, seed: Any, reports_dir: Optional[str] = None) -> None:
    """Everything about (scenario, seed) that can be said wrong before a run starts (and, given
    `reports_dir`, the names of its output under it)."""
    from .scenario import check_fault_targets

    source = sc.path or sc.name
    check_seed(seed, "seed")
    if reports_dir is not None:
        check_output_names(sc.name, seed, reports_dir, f"{source}: name")
    check_backend(sc.backend, f"{source}: store.backend")
    check_variant(sc.topology.get("variant") or "", f"{source}: topology.variant")
    check_fault_targets(sc, "the backend")
    check_powerloss(sc, reports_dir)


def check_powerloss(sc, reports_dir: Optional[str] = None) -> None:
    """A scenario with power cuts needs the tracer (built here, once) and, under `reports_dir`, room
    for its journal (`harness.powerloss.compactor.JOURNAL_SPACE_BYTES` free); else refused naming why."""
    if not getattr(sc, "has_powercut", False):
        return
    from .powerloss.build import tracer_library

    try:
        tracer_library()
    except UsageError as e:
        raise UsageError(f"{sc.path or sc.name}: this scenario cuts power (faults of kind or action 'powercut'), "
                         f"which is refused here: {e}") from None
    if reports_dir is not None:
        check_journal_space(reports_dir, f"{sc.path or sc.name}")


def check_journal_space(reports_dir: str, source: str) -> None:
    """The file system of `reports_dir` has room for a power-loss journal (its bound)."""
    from .powerloss.compactor import JOURNAL_SPACE_BYTES

    p = os.path.abspath(reports_dir)
    while not os.path.exists(p) and os.path.dirname(p) != p:
        p = os.path.dirname(p)
    st = os.statvfs(p)
    free = st.f_bavail * st.f_frsize
    if free < JOURNAL_SPACE_BYTES:
        raise UsageError(f"--reports {reports_dir}: {source} cuts power, and its power-loss journal may take up to "
                         f"{JOURNAL_SPACE_BYTES >> 20} MiB there; only {free >> 20} MiB are free")


def check_against_topology(sc) -> None:
    """The scenario (after any --backend override) can run: targets, backend, variant."""
    from .scenario import check_fault_targets

    source = sc.path or sc.name
    check_fault_targets(sc, "the backend")
    check_variant(sc.topology.get("variant") or "", f"{source}: topology.variant")
