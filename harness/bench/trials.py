"""Trials per minute of the default scenario on a pool of workers, with CPU per trial
and the hygiene of the workers (processes, descriptors, temp entries) before and after.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import tempfile
import time
from typing import Any, Dict

from reference_impl.procutil import proc_state

from .procfs import descendants, fd_count, median, rss_kb, tree_cpu, zygote_pids
from .registry import DEFAULT_SCENARIO, BenchRun, goal, section


def _hygiene_snapshot(tmpdir: str, reports: str) -> Dict[str, Any]:
    me = os.getpid()
    desc = descendants(me)
    zyg = zygote_pids()
    zombies = sum(1 for p in desc if proc_state(p) == "Z")
    return {
        "processes": len(desc),
        "zombies": zombies,
        "fds": fd_count(me),
        "zygote_fds": sum(fd_count(z) for z in zyg),
        "zygote_rss_kb": sum(rss_kb(z) for z in zyg),
        "worker_rss_kb": rss_kb(me),
        "threads": len(os.listdir("/proc/self/task")),
        "temp_entries": len(os.listdir(tmpdir)),
        "report_entries": sum(len(fs) + len(ds) for _, ds, fs in os.walk(reports)),
    }


def trial_worker(wid: int, launcher: str, scenario: str, tasks, results, base: str) -> None:
    """One campaign worker: the campaign's own per-trial call, with CPU and hygiene accounting."""
    os.environ["DFH_LAUNCHER"] = launcher
    tmpdir = os.path.join(base, f"tmp-{launcher}-{wid}")
    os.makedirs(tmpdir, exist_ok=True)
    os.environ["TMPDIR"] = tmpdir  # temp files of this worker and its processes land here, to be counted
    tempfile.tempdir = None
    reports = os.path.join(base, f"reports-{launcher}-{wid}")
    os.makedirs(reports, exist_ok=True)
    from ..campaign import run_trial

    before = None
    n = 0
    while True:
        seed = tasks.get()
        if seed is None:
            break
        c0, t0 = tree_cpu(), time.monotonic()
        row = run_trial({"scenario": scenario, "seed": seed, "reports": reports})
        row["cpu_s"] = round(tree_cpu() - c0, 3)
        row["trial_s"] = round(time.monotonic() - t0, 3)
        row["worker"] = wid
        row["first"] = n == 0  # pays the worker's imports and its zygote's start
        n += 1
        results.put(("row", row))
        if before is None:
            # After the first trial (and the first put, which starts the queue's
            # feeder thread): zygote and imports are warm.
            before = _hygiene_snapshot(tmpdir, reports)
    import resource

    results.put(("worker", {"worker": wid, "trials": n, "before": before,
                            "after": _hygiene_snapshot(tmpdir, reports),
                            "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


def run_trials(launcher: str, n: int, base: str, jobs: int = 2, scenario: str = DEFAULT_SCENARIO) -> Dict[str, Any]:
    ctx = mp.get_context("spawn")
    tasks, results = ctx.Queue(), ctx.Queue()
    for seed in range(n):
        tasks.put(seed)
    for _ in range(jobs):
        tasks.put(None)
    t0 = time.monotonic()
    procs = [ctx.Process(target=trial_worker, args=(w, launcher, scenario, tasks, results, base)) for w in range(jobs)]
    for p in procs:
        p.start()
    rows, workers = [], []
    while len(workers) < jobs:
        kind, item = results.get(timeout=3600)
        (rows if kind == "row" else workers).append(item)
    wall = time.monotonic() - t0
    for p in procs:
        p.join(timeout=60)
    cpu = sum(r["cpu_s"] for r in rows)
    steady = [r["cpu_s"] for r in rows if not r["first"]]
    per = statistics.mean(steady) if steady else cpu / max(1, len(rows))
    return {
        "cpu_s_per_trial_steady": round(per, 3),
        "cpu_s_first_trial": median([r["cpu_s"] for r in rows if r["first"]]),
        # How much of the machine the campaign got (the rest went to other tenants
        # or stayed idle), and the rate 2 cores would give if CPU were the only limit.
        "cores_used": round(cpu / wall, 2),
        "cpu_bound_trials_per_min_2_cores": round(2 * 60 / per, 1) if per else None,
        "launcher": launcher, "trials": len(rows), "jobs": jobs, "wall_s": round(wall, 2),
        "trials_per_min": round(len(rows) / wall * 60, 1),
        "cpu_s_per_trial": round(cpu / max(1, len(rows)), 3),
        "median_trial_s": median([r["trial_s"] for r in rows]),
        "as_expected": sum(1 for r in rows if r["as_expected"]),
        "unexpected": [(r["seed"], r["outcome"], r.get("violated"), r.get("error"))
                       for r in rows if not r["as_expected"]],
        "workers": sorted(workers, key=lambda w: w["worker"]),
    }


@section("trials", order=2)
def trials_section(run: BenchRun) -> None:
    n = run.args.trials or (20 if run.quick else 200)
    tz = run_trials("zygote", n, run.base, jobs=run.args.jobs)
    ts = run_trials("spawn", 2 if run.quick else 4, run.base, jobs=run.args.jobs)
    run.out["trials_per_min"] = tz["trials_per_min"]
    run.out["trials_per_min_spawn"] = ts["trials_per_min"]
    run.out["cpu_s_per_trial"] = tz["cpu_s_per_trial"]
    run.out["cpu_s_per_trial_spawn"] = ts["cpu_s_per_trial"]
    run.out["trials"] = {"zygote": tz, "spawn": ts}
    run.say(f"trials/min ({DEFAULT_SCENARIO}, {run.args.jobs} workers, {tz['trials']} trials): {tz['trials_per_min']} "
            f"vs {ts['trials_per_min']} with spawn ({ts['trials']} trials); CPU s/trial "
            f"{tz['cpu_s_per_trial']} vs {ts['cpu_s_per_trial']}; median trial {tz['median_trial_s']} s; "
            f"{tz['as_expected']}/{tz['trials']} as expected; {goal('trials_per_min', tz['trials_per_min'])}")
    run.say(f"    the campaign used {tz['cores_used']} of {run.out['cpus']} cores on average (load average "
            f"{[round(x, 2) for x in os.getloadavg()]}); 2 otherwise "
            f"idle cores bound the rate at {tz['cpu_bound_trials_per_min_2_cores']} trials/min "
            f"(steady {tz['cpu_s_per_trial_steady']} CPU s/trial; a worker's first trial "
            f"{tz['cpu_s_first_trial']} s)")
    if tz["unexpected"]:
        run.say(f"    unexpected: {tz['unexpected'][:5]}")
    hyg = []
    for w in tz["workers"]:
        b, a = w["before"] or {}, w["after"]
        keys = ("processes", "zombies", "fds", "zygote_fds", "temp_entries", "report_entries", "threads")
        growth = {k: a[k] - b.get(k, a[k]) for k in keys}
        hyg.append({"worker": w["worker"], "trials": w["trials"], "before": b, "after": a, "growth": growth,
                    "maxrss_kb": w["maxrss_kb"]})
        run.say(f"hygiene worker {w['worker']} after {w['trials']} trials (before -> after): "
                + ", ".join(f"{k} {b.get(k)} -> {a[k]}" for k in keys)
                + f"; zygote RSS {b.get('zygote_rss_kb', 0) // 1024} -> {a['zygote_rss_kb'] // 1024} MB"
                + f"; worker peak RSS {w['maxrss_kb'] // 1024} MB")
    run.out["hygiene"] = {"trials": tz["trials"], "workers": hyg,
                          "no_growth": all(v <= 0 for h in hyg for v in h["growth"].values())}
