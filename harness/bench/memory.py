"""Peak memory of a campaign worker on the 4-rank data-parallel scenario.
"""

from __future__ import annotations

import os
import shutil
import threading
from typing import Any, Dict

from .procfs import descendants, in_fresh_process, pss_kb, rss_kb, zygote_pids
from .registry import MEMORY_SCENARIO, BenchRun, section


def memory_worker(trials: int, base: str) -> Dict[str, Any]:
    import resource

    from ..process_engine.runner import run_scenario
    from ..scenario import load_scenario

    sc = load_scenario(MEMORY_SCENARIO)
    me = os.getpid()
    peak = {"tree_pss_kb": 0, "tree_rss_kb": 0, "max_proc_rss_kb": 0, "processes": 0}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            pids = [me] + descendants(me)
            rss = [rss_kb(p) for p in pids]
            peak["tree_rss_kb"] = max(peak["tree_rss_kb"], sum(rss))
            peak["max_proc_rss_kb"] = max(peak["max_proc_rss_kb"], max(rss))
            peak["tree_pss_kb"] = max(peak["tree_pss_kb"], sum(pss_kb(p) for p in pids))
            peak["processes"] = max(peak["processes"], len(pids))
            stop.wait(0.05)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    outcomes = []
    try:
        for seed in range(trials):
            r = run_scenario(sc, seed, reports_dir=os.path.join(base, "reports-mem"), render=False)
            outcomes.append(r.outcome if r.as_expected else f"UNEXPECTED {r.outcome}")
            shutil.rmtree(r.report_dir, ignore_errors=True)
    finally:
        stop.set()
        t.join()
    peak["worker_maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak["zygote_rss_kb"] = sum(rss_kb(z) for z in zygote_pids())
    peak["outcomes"] = outcomes
    peak["scenario"] = sc.name
    return peak


@section("memory", order=5)
def memory_section(run: BenchRun) -> None:
    m = in_fresh_process(memory_worker, 1 if run.quick else 2, run.base)
    run.out["memory"] = m
    run.say(f"memory, campaign worker on {m['scenario']}: worker peak RSS {m['worker_maxrss_kb'] // 1024} MB, "
            f"zygote {m['zygote_rss_kb'] // 1024} MB, largest process {m['max_proc_rss_kb'] // 1024} MB; "
            f"whole tree peak PSS {m['tree_pss_kb'] // 1024} MB (RSS sum {m['tree_rss_kb'] // 1024} MB, "
            f"{m['processes']} processes); {m['outcomes']}")
