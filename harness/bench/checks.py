"""`check_all` on synthetic histories of 10k, 100k and 1M events, on one core.

The history is built first (not timed; `harness.synthetic_history`), then
`check_all` is timed on it. The goal is 10 s for a million events on one core.
"""

from __future__ import annotations

import gc
import os
import time
from typing import Dict, List

from .procfs import in_fresh_process
from .registry import BenchRun, goal, section


def bench_check(n_events: int, *, seed: int = 0) -> float:
    """Seconds `check_all` takes on a synthetic history of about `n_events` events."""
    from ..checkers import check_all
    from ..synthetic_history import synthetic_history

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


def check_worker(sizes: List[int]) -> Dict[str, Dict[str, float]]:
    cpu = sorted(os.sched_getaffinity(0))[-1]
    os.sched_setaffinity(0, {cpu})  # one core
    out = {}
    for n in sizes:
        wall = bench_check(n)
        cpu_s = bench_check.last_cpu_s
        out[str(n)] = {"wall_s": round(wall, 3), "cpu_s": None if cpu_s is None else round(cpu_s, 3)}
    return out


@section("check", order=3)
def check_section(run: BenchRun) -> None:
    sizes = [10_000, 100_000, 1_000_000]
    ch = in_fresh_process(check_worker, sizes)
    # The goal is one core's work: CPU seconds (wall seconds include what
    # other tenants of a shared machine take from that core).
    fig = {k: (v["cpu_s"] if v["cpu_s"] is not None else v["wall_s"]) for k, v in ch.items()}
    run.out["check_10k_events_s"] = fig["10000"]
    run.out["check_100k_events_s"] = fig["100000"]
    run.out["check_1m_events_s"] = fig["1000000"]
    run.out["check_wall_s"] = {k: v["wall_s"] for k, v in ch.items()}
    per = {k: round(v / int(k) * 1e6, 2) for k, v in fig.items()}
    run.out["check_us_per_event"] = per
    run.say(f"check_all P1-P8 on one core, CPU s: 10k {fig['10000']}, 100k {fig['100000']}, 1M {fig['1000000']} "
            f"(us/event {per['10000']}, {per['100000']}, {per['1000000']}; wall "
            f"{ch['10000']['wall_s']}, {ch['100000']['wall_s']}, {ch['1000000']['wall_s']} s); "
            f"{goal('check_1m_events_s', fig['1000000'])}")
