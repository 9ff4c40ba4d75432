"""Harness overhead: the default scenario with history logging on and off.
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
from typing import Any, Dict, List

from .procfs import in_fresh_process, tree_cpu
from .registry import DEFAULT_SCENARIO, BenchRun, section


def overhead_worker(seeds: List[int], base: str) -> Dict[str, Any]:
    from ..process_engine import zygote
    from ..process_engine.runner import run_scenario

    zygote.get_client()  # warm, as in a campaign worker
    run_scenario(DEFAULT_SCENARIO, 999, reports_dir=os.path.join(base, "warm"), render=False)
    reports = os.path.join(base, "reports-overhead")
    wall: Dict[bool, List[float]] = {True: [], False: []}
    cpu: Dict[bool, List[float]] = {True: [], False: []}
    after: List[float] = []
    for seed in seeds:
        for hist in ((True, False) if seed % 2 else (False, True)):  # alternate the order
            c0, t0 = tree_cpu(), time.monotonic()
            r = run_scenario(DEFAULT_SCENARIO, seed, reports_dir=reports, history=hist, render=False)
            c1 = tree_cpu()
            wall[hist].append(r.wall_s)
            cpu[hist].append(c1 - c0)
            if hist:
                after.append(time.monotonic() - t0 - r.wall_s)
            shutil.rmtree(r.report_dir, ignore_errors=True)
    med = statistics.median
    return {"wall_s_history_on": round(med(wall[True]), 3), "wall_s_history_off": round(med(wall[False]), 3),
            "wall_overhead_pct": round((med(wall[True]) / med(wall[False]) - 1) * 100, 1),
            "cpu_s_history_on": round(med(cpu[True]), 3), "cpu_s_history_off": round(med(cpu[False]), 3),
            "cpu_overhead_pct": round((med(cpu[True]) / med(cpu[False]) - 1) * 100, 1),
            "merge_check_s": round(med(after), 3), "runs_each": len(seeds)}


@section("overhead", order=6)
def overhead_section(run: BenchRun) -> None:
    o = in_fresh_process(overhead_worker, list(range(100, 103 if run.quick else 108)), run.base)
    run.out["history_overhead"] = o
    run.say(f"harness overhead ({DEFAULT_SCENARIO}, median of {o['runs_each']} seeds each): run wall "
            f"{o['wall_s_history_on']} s with history vs {o['wall_s_history_off']} s without "
            f"({o['wall_overhead_pct']:+}%); CPU of the whole tree {o['cpu_s_history_on']} vs "
            f"{o['cpu_s_history_off']} s ({o['cpu_overhead_pct']:+}%, includes checking the history); "
            f"merge + check after the run {o['merge_check_s']} s")
