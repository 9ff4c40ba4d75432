"""`check_all` on synthetic histories of 10k, 100k and 1M events, on one core.
"""

from __future__ import annotations

import os
from typing import Dict, List

from .procfs import in_fresh_process
from .registry import BenchRun, goal, section


def check_worker(sizes: List[int]) -> Dict[str, Dict[str, float]]:
    cpu = sorted(os.sched_getaffinity(0))[-1]
    os.sched_setaffinity(0, {cpu})  # one core
    from ..checkers import bench as cb

    out = {}
    for n in sizes:
        wall = cb.bench_check(n)
        cpu_s = getattr(cb.bench_check, "last_cpu_s", None)
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
