"""Power-loss bench figures (not timed tests).

    python -m harness bench --only powerloss [--quick] [--json FILE]

1. Tracing overhead: the same scenario run untraced and traced (every process of
   the run preloaded with the tracer, the reports dir as the traced root: an upper
   bound, the harness's own report files are traced too), alternating, `--runs`
   of each; the ratio of the medians (goal: at most 1.3x).
2. Rebuild time: the model replay (`durable_state`, median of 5) and one full
   `powercut` of the last traced run's journal (goal: at most 50 ms).
3. Power-cut trials per minute: `--jobs` processes running the certify power-cut
   trials on the reference SQLite store at once (goal: at least 40 on 2 cores).
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Dict

from harness.powerloss import journal as J
from harness.powerloss.build import tracer_env
from harness.powerloss.rebuild import durable_state, powercut, snapshot_baseline

from .registry import BenchRun, goal, section

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(scenario: str, seed: int, reports: str, env) -> float:
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "harness", "run", scenario, "--seed", str(seed), "--reports", reports,
                        "--quiet"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                       check=False)
    wall = time.monotonic() - t0
    if p.returncode != 0:
        raise SystemExit(f"bench run of {scenario} seed {seed} failed ({p.returncode}): {p.stderr[-2000:]}")
    return wall


def overhead(scenario: str, runs: int, tmp: str):
    plain, traced = [], []
    base_env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    journal = os.path.join(tmp, "journal.bin")
    last = None
    for i in range(runs):
        r1 = os.path.join(tmp, f"plain-{i}")
        os.makedirs(r1)
        plain.append(_run(scenario, i, r1, base_env))
        shutil.rmtree(r1)
        r2 = os.path.join(tmp, f"traced-{i}")
        os.makedirs(r2)
        if os.path.exists(journal):
            os.unlink(journal)
        base = snapshot_baseline(r2)
        env = dict(base_env)
        env.update(tracer_env(r2, journal, env))
        traced.append(_run(scenario, i, r2, env))
        if last is not None:
            shutil.rmtree(last[0])
        last = (r2, base)
        print(f"  run {i}: untraced {plain[-1]:.2f} s, traced {traced[-1]:.2f} s", file=sys.stderr)
    return plain, traced, last, journal


def rebuild(root: str, base, journal: str):
    st = J.JournalStats()
    with open(journal, "rb") as f:
        buf = f.read()
    recs = list(J.parse(buf, st))
    times, cpu = [], []
    for _ in range(5):
        t0, c0 = time.perf_counter(), time.process_time()
        durable_state(J.parse(buf), base)
        times.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    c0 = time.process_time()
    cut = powercut(root, journal, baseline=base)
    return {"journal_records": len(recs), "journal_mb": round(len(buf) / 1e6, 2),
            "model_ms_median": round(statistics.median(times), 1),
            "model_cpu_ms_median": round(statistics.median(cpu), 1),
            "powercut_ms": round(cut.rebuild_ms, 1), "powercut_cpu_ms": round((time.process_time() - c0) * 1000, 1),
            "powercut": cut.summary(), "load_average": os.getloadavg()[0]}


def _trials(args):
    spec, n, seed = args
    from harness.certify.tier5_power_loss import run_powercut_trials

    d = tempfile.mkdtemp(prefix="bench-powercut-")
    try:
        t0 = time.monotonic()
        findings = run_powercut_trials(spec, d, n, seed)
        return n, time.monotonic() - t0, len(findings)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def trials_per_minute(trials: int, jobs: int):
    spec = "reference_impl.stores.sqlite:SQLiteMetadataStore"
    per = max(1, trials // jobs)
    t0 = time.monotonic()
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        out = list(pool.map(_trials, [(spec, per, s) for s in range(jobs)]))
    wall = time.monotonic() - t0
    done = sum(o[0] for o in out)
    return {"trials": done, "jobs": jobs, "wall_s": round(wall, 1), "per_minute": round(done / wall * 60, 1),
            "findings": sum(o[2] for o in out)}


@section("powerloss", 70)
def powerloss_section(run: BenchRun) -> None:
    runs, trials, jobs = (3, 20, 2) if run.quick else (8, 40, 2)
    tmp = tempfile.mkdtemp(prefix="powerloss-", dir=run.base)
    res: Dict[str, Any] = {}
    t = trials_per_minute(trials, jobs)
    plain, traced, (root, base), journal = overhead("kill-random", runs, tmp)
    mp, mt = statistics.median(plain), statistics.median(traced)
    res["overhead"] = {"scenario": "kill-random", "runs": runs, "untraced_median_s": round(mp, 2),
                       "traced_median_s": round(mt, 2), "ratio": round(mt / mp, 3)}
    res["rebuild"] = r = rebuild(root, base, journal)
    res["trials"] = t
    o = res["overhead"]
    run.out["powerloss"] = res
    run.out["tracing_overhead_ratio"] = o["ratio"]
    run.out["powercut_rebuild_ms"] = r["powercut_ms"]
    run.out["powercut_trials_per_min"] = t["per_minute"]
    run.say(f"tracing overhead (kill-random, median of {runs}): untraced {o['untraced_median_s']} s, "
            f"traced {o['traced_median_s']} s, ratio {o['ratio']}x ({goal('tracing_overhead_ratio', o['ratio'])})")
    run.say(f"rebuild of a whole run's journal ({r['journal_records']} records, {r['journal_mb']} MB): model "
            f"{r['model_ms_median']} ms ({r['model_cpu_ms_median']} ms CPU), powercut {r['powercut_ms']} ms "
            f"({r['powercut_cpu_ms']} ms CPU) ({goal('powercut_rebuild_ms', r['powercut_ms'])})")
    run.say(f"power-cut trials: {t['per_minute']} per minute ({t['trials']} trials, {t['jobs']} jobs, "
            f"{t['wall_s']} s; {t['findings']} findings on the reference store) "
            f"({goal('powercut_trials_per_min', t['per_minute'])})")
