"""Checker speed: `python -m harness.checkers.bench [n_events ...]`.

Builds a synthetic history (not timed) and times `check_all` on it. The
budget is 10 s for a million events on one core.
"""

from __future__ import annotations

import gc
import sys
import time

from . import check_all
from .synthetic import synthetic_history


def bench_check(n_events: int, *, seed: int = 0) -> float:
    """Seconds `check_all` takes on a synthetic history of about `n_events` events."""
    was_enabled = gc.isenabled()
    gc.disable()  # building a million dicts with the collector on is needlessly slow
    try:
        history, final = synthetic_history(n_events, seed=seed)
    finally:
        if was_enabled:
            gc.enable()
    t0 = time.perf_counter()
    c0 = time.process_time()
    results = check_all(history, final)
    elapsed = time.perf_counter() - t0
    bench_check.last_cpu_s = time.process_time() - c0
    bad = [r.prop for r in results if r.valid is False]
    if bad:
        raise AssertionError(f"synthetic history of {n_events} events is invalid under {bad}")
    return elapsed


bench_check.last_cpu_s = 0.0


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    sizes = [int(a) for a in args] or [10_000, 100_000, 1_000_000]
    for n in sizes:
        secs = bench_check(n)
        print(f"check_all on {n:>9,} events: {secs:7.3f} s wall, {bench_check.last_cpu_s:7.3f} s cpu "
              f"({secs / n * 1e6:.2f} us/event)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
