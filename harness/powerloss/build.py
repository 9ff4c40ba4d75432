"""Build (once) and locate the durability tracer, and the environment of a traced process.

Model: the tracer is `tracer.c` (with `tracer_calls.c`), shipped in this package. At first use it is
compiled with the system C compiler into a shared library cached under
`$XDG_CACHE_HOME/dataflow-harness/` (default `~/.cache/...`), named by the
hash of its source, so an edited source gets a new library and a stale one is
never loaded.

Rules:
1. The compiler is `$CC` or `cc`; without one, power-loss faults are refused
   with `UsageError` (exit 2), never silently skipped.
2. The library is installed atomically (compiled to a temp name, renamed), so
   concurrent first uses from several processes are safe.
3. `tracer_env` appends the library to any `LD_PRELOAD` already set and names
   the traced root and the journal; the journal must lie outside the root.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from typing import Dict, Mapping, Optional, Sequence

from harness.exit_codes import HarnessError, UsageError

_HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(_HERE, "tracer.c")  # includes tracer_calls.c
SOURCES = (SOURCE, os.path.join(_HERE, "tracer_calls.c"))
ENV_ROOT = "DFH_TRACE_ROOT"
ENV_JOURNAL = "DFH_TRACE_JOURNAL"
ENV_EXCLUDE = "DFH_TRACE_EXCLUDE"

_cached: Optional[str] = None


def cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "dataflow-harness")


def compiler() -> Optional[str]:
    cc = os.environ.get("CC") or "cc"
    return shutil.which(cc)


def tracer_library() -> str:
    """Path of the compiled tracer; builds it on first use (UsageError without a compiler)."""
    global _cached
    if _cached is not None and os.path.exists(_cached):
        return _cached
    h = hashlib.sha256()
    for path in SOURCES:
        try:
            with open(path, "rb") as f:
                h.update(f.read())
        except OSError as e:
            raise HarnessError(f"the tracer source {path} cannot be read: {e}") from e
    digest = h.hexdigest()[:16]
    out_dir = cache_dir()
    lib = os.path.join(out_dir, f"dfh-tracer-{digest}.so")
    if os.path.exists(lib):
        _cached = lib
        return lib
    cc = compiler()
    if cc is None:
        raise UsageError(
            "power-loss faults need a C compiler (cc) to build the tracer: none found on PATH "
            f"(set CC to one); the tracer source is {SOURCE}"
        )
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise HarnessError(f"cannot create the tracer cache directory {out_dir}: {e}") from e
    fd, tmp = tempfile.mkstemp(prefix=".dfh-tracer-", suffix=".so", dir=out_dir)
    os.close(fd)
    try:
        proc = subprocess.run(
            [cc, "-shared", "-fPIC", "-O2", "-o", tmp, SOURCE, "-ldl"],
            capture_output=True, text=True, timeout=120, check=False,
        )
        if proc.returncode != 0:
            raise UsageError(
                f"power-loss faults need the tracer, and {cc} failed to build it from {SOURCE} "
                f"(exit {proc.returncode}): {proc.stderr.strip()[-2000:]}"
            )
        os.chmod(tmp, 0o755)
        os.replace(tmp, lib)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _cached = lib
    return lib


def preload_with_tracer(base: Optional[Mapping[str, str]] = None) -> str:
    """`base`'s (default: this process's) LD_PRELOAD with the tracer appended once."""
    lib = tracer_library()
    env = os.environ if base is None else base
    parts = [p for p in env.get("LD_PRELOAD", "").replace(":", " ").split() if p and p != lib]
    return " ".join(parts + [lib])


def tracer_env(root: str, journal: str, base: Optional[Mapping[str, str]] = None,
               exclude: Sequence[str] = ()) -> Dict[str, str]:
    """Variables to add to a traced process's environment (LD_PRELOAD appended to `base`'s).
    Paths under `exclude` (at most 8, inside the root: the harness's own files) are not traced."""
    r = os.path.realpath(root)
    j = os.path.realpath(journal)
    if j == r or j.startswith(r.rstrip("/") + "/"):
        raise UsageError(f"the power-loss journal {journal} must lie outside the traced work dir {root}")
    out = {"LD_PRELOAD": preload_with_tracer(base), ENV_ROOT: r, ENV_JOURNAL: j}
    ex = [os.path.realpath(x) for x in exclude]
    if len(ex) > 8 or any(":" in x for x in ex):
        raise UsageError(f"power-loss trace exclusions {list(exclude)}: at most 8 paths, none containing ':'")
    if ex:
        out[ENV_EXCLUDE] = ":".join(ex)
    return out


def reconfigure_in_process() -> bool:
    """In a process forked from a preloaded parent (a zygote) after it set DFH_TRACE_ROOT and
    DFH_TRACE_JOURNAL in os.environ: make the tracer re-read them. True if now tracing;
    False if the tracer is not loaded in this process (its parent was not started preloaded)."""
    import ctypes

    try:
        fn = ctypes.CDLL(None).dfh_tracer_reconfigure
    except AttributeError:
        return False
    return bool(fn())


def tracing_active() -> bool:
    """Whether the tracer is loaded in this process and journaling."""
    import ctypes

    try:
        return bool(ctypes.CDLL(None).dfh_tracer_active())
    except AttributeError:
        return False


def traced_environ(root: str, journal: str, exclude: Sequence[str] = ()) -> Dict[str, str]:
    """A full environment (a copy of os.environ) for a traced child process."""
    env = dict(os.environ)
    env.pop(ENV_EXCLUDE, None)
    env.update(tracer_env(root, journal, env, exclude))
    return env
