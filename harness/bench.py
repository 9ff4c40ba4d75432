"""`python -m harness bench [--json FILE] [--quick]`: the harness's performance figures.

Every figure is printed next to its baseline measured in the same run and the
goal it is held to:

* restart: SIGKILL of a consumer to its replacement's first channel event
  (`read` or `skip`), zygote launcher vs cold spawn (`python -m`);
* trials per minute: the default scenario (kill-random: 3 kills, 300 samples)
  on a pool of 2 worker processes, with CPU seconds per trial (the worker, its
  zygote and every process they started); baseline: the same with spawn;
* checkers: `check_all` on synthetic histories of 10k, 100k and 1M events, on
  one core (harness.checkers.bench);
* SQLite: `commit_samples` per second at batch 1 divided by the raw
  append+fsync rate of the same directory, measured interleaved; batch 16, 64,
  256 and `record_train_ack`;
* memory and hygiene: peak memory of a campaign worker on a 4-rank scenario;
  processes, open descriptors and temp directories before and after N
  consecutive trials (N = 200, 20 with --quick);
* harness overhead: the default scenario with history logging on and off.

This is a measurement, not a test: nothing here is run by CI. Figures depend
on the machine and on whatever else runs on it (the load average is recorded).
Each section runs in a fresh interpreter (multiprocessing "spawn"), so no
section inherits another's imports or memory.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional

GOALS = {
    "restart_ms_median": ("<=", 100.0),
    "trials_per_min": (">=", 60.0),
    "check_1m_events_s": ("<=", 10.0),
    "sqlite_batch1_vs_fsync": (">=", 0.5),
}
DEFAULT_SCENARIO = "kill-random"
MEMORY_SCENARIO = "dp4-rank-kills"  # the 4-rank CPU (gloo) data-parallel scenario
_CLK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


# --------------------------------------------------------------------------
# /proc helpers
# --------------------------------------------------------------------------

def _stat(pid: int) -> Optional[List[str]]:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().decode().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _cpu_of(pid: int, with_children: bool = True) -> float:
    """utime+stime (+ cutime+cstime of reaped children) of `pid`, seconds."""
    s = _stat(pid)
    if s is None:
        return 0.0
    # after "pid (comm)": state=0 ppid=1 ... utime=11 stime=12 cutime=13 cstime=14
    ticks = int(s[11]) + int(s[12]) + ((int(s[13]) + int(s[14])) if with_children else 0)
    return ticks / _CLK


def _children_map() -> Dict[int, List[int]]:
    kids: Dict[int, List[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            s = _stat(int(name))
            if s is not None:
                kids.setdefault(int(s[1]), []).append(int(name))
    return kids


def _descendants(pid: int) -> List[int]:
    kids = _children_map()
    out, todo = [], [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * _PAGE // 1024
    except (OSError, IndexError, ValueError):
        return 0


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def _zygote_pids() -> List[int]:
    from . import zygote

    return [c.pid for c in zygote._CLIENTS.values() if not c.closed]


def _tree_cpu() -> float:
    """CPU seconds of this process, its reaped children and its zygotes (with theirs)."""
    import resource

    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime + sum(_cpu_of(z) for z in _zygote_pids())


def _in_fresh_process(fn, *args):
    """Run `fn(*args)` in a fresh interpreter and return its result."""
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(fn, args)


def _median(xs: List[float]) -> Optional[float]:
    return statistics.median(xs) if xs else None


# --------------------------------------------------------------------------
# 1. restart latency
# --------------------------------------------------------------------------

def _read_events(path: str) -> List[Dict[str, Any]]:
    out = []
    try:
        with open(path, "rb") as f:
            for line in f.read().split(b"\n"):
                if line.strip():
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        pass
    except FileNotFoundError:
        pass
    return out


KILLS_PER_RUN = 5


def restart_worker(launcher: str, kills: int, base: str, seed: int = 0) -> Dict[str, Any]:
    """SIGKILL the consumer `kills` times in runs of the default scenario's workload; restart as the runner does.

    A run takes at most KILLS_PER_RUN kills, so the channel and the run stay the
    size of the default scenario's (300 samples): a restarted consumer's start
    cost grows with the channel it re-reads.
    """
    import random

    os.environ["DFH_LAUNCHER"] = launcher
    from reference_impl.config import write_config

    from .runner import POLL_S, config_for
    from .scenario import load_scenario

    if launcher == "zygote":
        from . import zygote

        zygote.get_client()  # started before the clock, as in a campaign worker after its first trial
    rng = random.Random(seed)
    rows: List[Dict[str, Any]] = []
    run = 0
    while len(rows) < kills and run < kills:
        work = tempfile.mkdtemp(prefix=f"restart-{launcher}-", dir=base)
        os.makedirs(os.path.join(work, "history"))
        cfg = config_for(load_scenario(DEFAULT_SCENARIO), seed + run, work)
        write_config(cfg)
        rows += _restart_run(cfg, launcher, min(KILLS_PER_RUN, kills - len(rows)), rng, POLL_S)
        shutil.rmtree(work, ignore_errors=True)
        run += 1
    return {"launcher": launcher, "kills": rows, "runs": run,
            "median_ms": _median([r["read_ms"] for r in rows]),
            "median_start_ms": _median([r["start_ms"] for r in rows if r["start_ms"] is not None]),
            "median_exited_ms": _median([r["exited_ms"] for r in rows if r["exited_ms"] is not None])}


def _restart_run(cfg, launcher: str, kills: int, rng, poll_s: float) -> List[Dict[str, Any]]:
    from .supervisor import Supervisor

    conf = cfg.path("config.json")
    sup = Supervisor(cfg.workdir, launcher=launcher)
    hist = cfg.path("history", "consumer.jsonl")

    def channel_event_of(inc: int) -> bool:
        return any(e.get("inc") == inc and e.get("ev") in ("read", "skip") for e in _read_events(hist))

    try:
        sup.spawn("producer", "reference_impl.producer", ["--config", conf])
        sup.spawn("consumer", "reference_impl.consumer", ["--config", conf])
        deadline = time.monotonic() + 60 + kills * 30
        for _ in range(kills):
            inc = sup.procs["consumer"].inc
            while not channel_event_of(inc) and time.monotonic() < deadline:
                if sup.procs["consumer"].poll() is not None:
                    break
                time.sleep(poll_s)
            if sup.procs["consumer"].poll() is not None:
                break  # finished (or failed): this run is over
            time.sleep(rng.uniform(0.02, 0.1))  # let it get into its work
            if not sup.kill("consumer"):
                break
            while True:  # the runner's loop: reap, restart with --resume
                if [p for p in sup.reap() if p.name == "consumer"]:
                    sup.spawn("consumer", "reference_impl.consumer", ["--config", conf, "--resume"])
                    break
                time.sleep(poll_s)
        inc = sup.procs["consumer"].inc
        while not channel_event_of(inc) and time.monotonic() < deadline and sup.procs["consumer"].poll() is None:
            time.sleep(poll_s)
    finally:
        sup.shutdown()
    sev = _read_events(cfg.path("history", "supervisor.jsonl"))
    cev = _read_events(hist)
    rows = []
    for k in (e for e in sev if e["ev"] == "kill" and e["target"] == "consumer"):
        i = k["target_inc"]
        exited = next((e["mono"] for e in sev if e["ev"] == "exited" and e["target"] == "consumer"
                       and e["target_inc"] == i), None)
        spawn = next((e["mono"] for e in sev if e["ev"] == "spawn" and e["target"] == "consumer"
                      and e["target_inc"] == i + 1), None)
        start = next((e["mono"] for e in cev if e["inc"] == i + 1 and e["ev"] == "start"), None)
        first = next((e["mono"] for e in cev if e["inc"] == i + 1 and e["ev"] in ("read", "skip")), None)
        if first is None:
            continue
        ms = lambda t: None if t is None else round((t - k["mono"]) * 1000, 1)  # noqa: E731
        rows.append({"exited_ms": ms(exited), "spawn_ms": ms(spawn), "start_ms": ms(start), "read_ms": ms(first)})
    return rows


# --------------------------------------------------------------------------
# 2. trials per minute, CPU per trial, hygiene after N trials
# --------------------------------------------------------------------------

def _hygiene_snapshot(tmpdir: str, reports: str) -> Dict[str, Any]:
    me = os.getpid()
    desc = _descendants(me)
    zyg = _zygote_pids()
    zombies = sum(1 for p in desc if (_stat(p) or ["?"])[0] == "Z")
    return {
        "processes": len(desc),
        "zombies": zombies,
        "fds": _fd_count(me),
        "zygote_fds": sum(_fd_count(z) for z in zyg),
        "zygote_rss_kb": sum(_rss_kb(z) for z in zyg),
        "worker_rss_kb": _rss_kb(me),
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
    from .campaign import _one

    before = None
    n = 0
    while True:
        seed = tasks.get()
        if seed is None:
            break
        c0, t0 = _tree_cpu(), time.monotonic()
        row = _one((scenario, seed, reports, None, False))
        row["cpu_s"] = round(_tree_cpu() - c0, 3)
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
        "cpu_s_first_trial": _median([r["cpu_s"] for r in rows if r["first"]]),
        # How much of the machine the campaign got (the rest went to other tenants
        # or stayed idle), and the rate 2 cores would give if CPU were the only limit.
        "cores_used": round(cpu / wall, 2),
        "cpu_bound_trials_per_min_2_cores": round(2 * 60 / per, 1) if per else None,
        "launcher": launcher, "trials": len(rows), "jobs": jobs, "wall_s": round(wall, 2),
        "trials_per_min": round(len(rows) / wall * 60, 1),
        "cpu_s_per_trial": round(cpu / max(1, len(rows)), 3),
        "median_trial_s": _median([r["trial_s"] for r in rows]),
        "as_expected": sum(1 for r in rows if r["as_expected"]),
        "unexpected": [(r["seed"], r["outcome"], r.get("violated"), r.get("error"))
                       for r in rows if not r["as_expected"]],
        "workers": sorted(workers, key=lambda w: w["worker"]),
    }


# --------------------------------------------------------------------------
# 3. checkers
# --------------------------------------------------------------------------

def check_worker(sizes: List[int]) -> Dict[str, Dict[str, float]]:
    cpu = sorted(os.sched_getaffinity(0))[-1]
    os.sched_setaffinity(0, {cpu})  # one core
    from .checkers import bench as cb

    out = {}
    for n in sizes:
        wall = cb.bench_check(n)
        cpu_s = getattr(cb.bench_check, "last_cpu_s", None)
        out[str(n)] = {"wall_s": round(wall, 3), "cpu_s": None if cpu_s is None else round(cpu_s, 3)}
    return out


# --------------------------------------------------------------------------
# 4. SQLite vs the disk's fsync rate
# --------------------------------------------------------------------------

def _ref(i: int):
    from reference_impl.contracts import FeatureSpec, SampleRef

    sid = f"b{i:08d}"
    return SampleRef(sample_id=sid, run_id="bench", source_task_id=f"prompt-{i}",
                     feature_store_uri=f"file:///bench/features/{sid}",
                     feature_keys={k: f"{sid}/{k}" for k in ("input_ids", "hidden_states", "target")},
                     feature_specs={"input_ids": FeatureSpec("input_ids", (8,), "int64"),
                                    "hidden_states": FeatureSpec("hidden_states", (8, 16), "float32"),
                                    "target": FeatureSpec("target", (8,), "int64")},
                     strategy="eagle3", target_model_version="tiny-target-seed0", num_tokens=8, estimated_bytes=704,
                     metadata={"index": i})


def _rate(fn, secs: float) -> float:
    """Calls of fn per second over about `secs` seconds."""
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        el = time.perf_counter() - t0
        if el >= secs:
            return n / el


def sqlite_worker(base: str, rounds: int, secs: float) -> Dict[str, Any]:
    from reference_impl.stores.sqlite import SQLiteMetadataStore

    d = tempfile.mkdtemp(prefix="sqlite-", dir=base)
    raw = os.open(os.path.join(d, "raw.bin"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    record = b"x" * 200 + b"\n"

    def append_fsync():
        os.write(raw, record)
        os.fsync(raw)

    store = SQLiteMetadataStore(os.path.join(d, "store.sqlite"))
    counter = [0]

    def commit(b):
        def go():
            i = counter[0]
            counter[0] += b
            store.commit_samples([_ref(i + k) for k in range(b)])
        return go

    # Short interleaved slices: the disk's rate drifts by 2-5x within seconds
    # here (other tenants, writeback), so each ratio compares two rates taken
    # a fraction of a second apart; the figure is the median ratio.
    fs, c1, ratios = [], [], []
    for _ in range(rounds):
        a = _rate(append_fsync, secs / 2)
        b = _rate(commit(1), secs)
        a2 = _rate(append_fsync, secs / 2)
        fs += [a, a2]
        c1.append(b)
        ratios.append(b / ((a + a2) / 2))
    batches = {}
    for b in (16, 64, 256):
        batches[str(b)] = round(_rate(commit(b), secs) * b, 1)
    acked = [0]
    window = 8  # the default scenario's optimizer window (train_batch 4 x accumulation 2)

    def ack():
        i = acked[0]
        acked[0] += window
        store.record_train_ack([f"b{j:08d}" for j in range(i, i + window)], global_step=i // window + 1,
                               optimizer_durable=True)

    ack_rate = _rate(ack, secs)
    fs_after = _rate(append_fsync, secs / 2)
    store.close()
    os.close(raw)
    shutil.rmtree(d, ignore_errors=True)
    return {
        "fsync_per_s": round(statistics.median(fs), 1), "fsync_per_s_range": [round(min(fs), 1), round(max(fs), 1)],
        "batch1_samples_per_s": round(statistics.median(c1), 1),
        "batch1_vs_fsync": round(statistics.median(ratios), 3),
        "batch1_vs_fsync_rounds": [round(r, 3) for r in ratios],
        "batch1_vs_fsync_quartiles": [round(x, 3) for x in statistics.quantiles(ratios, n=4)],
        "commit_samples_per_s": {"1": round(statistics.median(c1), 1), **batches},
        "record_train_ack_per_s": round(ack_rate, 1), "record_train_ack_ids_per_s": round(ack_rate * window, 1),
        "record_train_ack_vs_fsync": round(ack_rate / fs_after, 3), "fsync_per_s_at_ack": round(fs_after, 1),
    }


# --------------------------------------------------------------------------
# 5. memory of a campaign worker on a 4-rank scenario
# --------------------------------------------------------------------------

def memory_worker(trials: int, base: str) -> Dict[str, Any]:
    import resource

    from .runner import run_scenario
    from .scenario import load_scenario

    sc = load_scenario(MEMORY_SCENARIO)
    me = os.getpid()
    peak = {"tree_pss_kb": 0, "tree_rss_kb": 0, "max_proc_rss_kb": 0, "processes": 0}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            pids = [me] + _descendants(me)
            rss = [_rss_kb(p) for p in pids]
            peak["tree_rss_kb"] = max(peak["tree_rss_kb"], sum(rss))
            peak["max_proc_rss_kb"] = max(peak["max_proc_rss_kb"], max(rss))
            peak["tree_pss_kb"] = max(peak["tree_pss_kb"], sum(_pss_kb(p) for p in pids))
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
    peak["zygote_rss_kb"] = sum(_rss_kb(z) for z in _zygote_pids())
    peak["outcomes"] = outcomes
    peak["scenario"] = sc.name
    return peak


# --------------------------------------------------------------------------
# 6. harness overhead: history on / off
# --------------------------------------------------------------------------

def overhead_worker(seeds: List[int], base: str) -> Dict[str, Any]:
    from . import zygote
    from .runner import run_scenario

    zygote.get_client()  # warm, as in a campaign worker
    run_scenario(DEFAULT_SCENARIO, 999, reports_dir=os.path.join(base, "warm"), render=False)
    reports = os.path.join(base, "reports-overhead")
    wall: Dict[bool, List[float]] = {True: [], False: []}
    cpu: Dict[bool, List[float]] = {True: [], False: []}
    after: List[float] = []
    for seed in seeds:
        for hist in ((True, False) if seed % 2 else (False, True)):  # alternate the order
            c0, t0 = _tree_cpu(), time.monotonic()
            r = run_scenario(DEFAULT_SCENARIO, seed, reports_dir=reports, history=hist, render=False)
            c1 = _tree_cpu()
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


# --------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------

def _goal(key: str, value: Optional[float]) -> str:
    if value is None:
        return "n/a"
    op, lim = GOALS[key]
    ok = value <= lim if op == "<=" else value >= lim
    return f"goal {op} {lim:g}: {'met' if ok else 'NOT MET'}"


def _goal_met(key: str, value: Optional[float]) -> Optional[bool]:
    if value is None:
        return None
    op, lim = GOALS[key]
    return value <= lim if op == "<=" else value >= lim


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (about 2 minutes instead of 8)")
    ap.add_argument("--only", default="restart,trials,check,sqlite,memory,overhead",
                    help="comma-separated sections (default: all)")
    ap.add_argument("--trials", type=int, help="trials in the throughput/hygiene campaign (default 200, quick 20)")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes of the trial campaign (default 2)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    try:
        args = ap.parse_args(argv)
    except SystemExit as e:
        return 2 if e.code else 0
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    q = args.quick
    base = tempfile.mkdtemp(prefix="dfh-bench-")
    out: Dict[str, Any] = {"mode": "quick" if q else "full", "cpus": os.cpu_count(),
                           "loadavg_start": [round(x, 2) for x in os.getloadavg()]}
    say = lambda *a: print(*a, flush=True)  # noqa: E731
    say(f"harness bench ({out['mode']}), {out['cpus']} CPUs, load average {out['loadavg_start']}")
    try:
        if "restart" in sections:
            z = _in_fresh_process(restart_worker, "zygote", 8 if q else 20, base)
            c = _in_fresh_process(restart_worker, "spawn", 3 if q else 5, base)
            out["restart_ms_median"] = z["median_ms"]
            out["restart_cold_ms_median"] = c["median_ms"]
            out["restart_ratio_cold_over_zygote"] = (round(c["median_ms"] / z["median_ms"], 1)
                                                     if z["median_ms"] and c["median_ms"] else None)
            out["restart"] = {"zygote": z, "spawn": c}
            say(f"restart (SIGKILL -> replacement reads the channel), median of {len(z['kills'])}: "
                f"{z['median_ms']} ms zygote vs {c['median_ms']} ms cold spawn ({len(c['kills'])} kills), "
                f"{out['restart_ratio_cold_over_zygote']}x; {_goal('restart_ms_median', z['median_ms'])}")
            say(f"    zygote: reaped {z['median_exited_ms']} ms, process start event {z['median_start_ms']} ms; "
                f"cold: start event {c['median_start_ms']} ms")
        if "trials" in sections:
            n = args.trials or (20 if q else 200)
            tz = run_trials("zygote", n, base, jobs=args.jobs)
            ts = run_trials("spawn", 2 if q else 4, base, jobs=args.jobs)
            out["trials_per_min"] = tz["trials_per_min"]
            out["trials_per_min_spawn"] = ts["trials_per_min"]
            out["cpu_s_per_trial"] = tz["cpu_s_per_trial"]
            out["cpu_s_per_trial_spawn"] = ts["cpu_s_per_trial"]
            out["trials"] = {"zygote": tz, "spawn": ts}
            say(f"trials/min ({DEFAULT_SCENARIO}, {args.jobs} workers, {tz['trials']} trials): {tz['trials_per_min']} "
                f"vs {ts['trials_per_min']} with spawn ({ts['trials']} trials); CPU s/trial "
                f"{tz['cpu_s_per_trial']} vs {ts['cpu_s_per_trial']}; median trial {tz['median_trial_s']} s; "
                f"{tz['as_expected']}/{tz['trials']} as expected; {_goal('trials_per_min', tz['trials_per_min'])}")
            say(f"    the campaign used {tz['cores_used']} of {out['cpus']} cores on average (load average "
                f"{[round(x, 2) for x in os.getloadavg()]}); 2 otherwise "
                f"idle cores bound the rate at {tz['cpu_bound_trials_per_min_2_cores']} trials/min "
                f"(steady {tz['cpu_s_per_trial_steady']} CPU s/trial; a worker's first trial "
                f"{tz['cpu_s_first_trial']} s)")
            if tz["unexpected"]:
                say(f"    unexpected: {tz['unexpected'][:5]}")
            hyg = []
            for w in tz["workers"]:
                b, a = w["before"] or {}, w["after"]
                keys = ("processes", "zombies", "fds", "zygote_fds", "temp_entries", "report_entries", "threads")
                growth = {k: a[k] - b.get(k, a[k]) for k in keys}
                hyg.append({"worker": w["worker"], "trials": w["trials"], "before": b, "after": a, "growth": growth,
                            "maxrss_kb": w["maxrss_kb"]})
                say(f"hygiene worker {w['worker']} after {w['trials']} trials (before -> after): "
                    + ", ".join(f"{k} {b.get(k)} -> {a[k]}" for k in keys)
                    + f"; zygote RSS {b.get('zygote_rss_kb', 0) // 1024} -> {a['zygote_rss_kb'] // 1024} MB"
                    + f"; worker peak RSS {w['maxrss_kb'] // 1024} MB")
            out["hygiene"] = {"trials": tz["trials"], "workers": hyg,
                              "no_growth": all(v <= 0 for h in hyg for v in h["growth"].values())}
        if "check" in sections:
            sizes = [10_000, 100_000, 1_000_000]
            ch = _in_fresh_process(check_worker, sizes)
            # The goal is one core's work: CPU seconds (wall seconds include what
            # other tenants of a shared machine take from that core).
            fig = {k: (v["cpu_s"] if v["cpu_s"] is not None else v["wall_s"]) for k, v in ch.items()}
            out["check_10k_events_s"] = fig["10000"]
            out["check_100k_events_s"] = fig["100000"]
            out["check_1m_events_s"] = fig["1000000"]
            out["check_wall_s"] = {k: v["wall_s"] for k, v in ch.items()}
            per = {k: round(v / int(k) * 1e6, 2) for k, v in fig.items()}
            out["check_us_per_event"] = per
            say(f"check_all P1-P8 on one core, CPU s: 10k {fig['10000']}, 100k {fig['100000']}, 1M {fig['1000000']} "
                f"(us/event {per['10000']}, {per['100000']}, {per['1000000']}; wall "
                f"{ch['10000']['wall_s']}, {ch['100000']['wall_s']}, {ch['1000000']['wall_s']} s); "
                f"{_goal('check_1m_events_s', fig['1000000'])}")
        if "sqlite" in sections:
            sq = _in_fresh_process(sqlite_worker, base, 15 if q else 40, 0.2)
            out["sqlite_batch1_vs_fsync"] = sq["batch1_vs_fsync"]
            out["sqlite"] = sq
            cs = sq["commit_samples_per_s"]
            say(f"sqlite commit_samples/s at batch 1: {cs['1']} vs raw append+fsync {sq['fsync_per_s']}/s "
                f"(range {sq['fsync_per_s_range']}) = {sq['batch1_vs_fsync']} "
                f"(median of {len(sq['batch1_vs_fsync_rounds'])} interleaved rounds, quartiles "
                f"{sq['batch1_vs_fsync_quartiles']}); {_goal('sqlite_batch1_vs_fsync', sq['batch1_vs_fsync'])}")
            say(f"    batch 16: {cs['16']}/s, 64: {cs['64']}/s, 256: {cs['256']}/s; record_train_ack: "
                f"{sq['record_train_ack_per_s']}/s ({sq['record_train_ack_ids_per_s']} ids/s, "
                f"{sq['record_train_ack_vs_fsync']} of fsync {sq['fsync_per_s_at_ack']}/s)")
        if "memory" in sections:
            m = _in_fresh_process(memory_worker, 1 if q else 2, base)
            out["memory"] = m
            say(f"memory, campaign worker on {m['scenario']}: worker peak RSS {m['worker_maxrss_kb'] // 1024} MB, "
                f"zygote {m['zygote_rss_kb'] // 1024} MB, largest process {m['max_proc_rss_kb'] // 1024} MB; "
                f"whole tree peak PSS {m['tree_pss_kb'] // 1024} MB (RSS sum {m['tree_rss_kb'] // 1024} MB, "
                f"{m['processes']} processes); {m['outcomes']}")
        if "overhead" in sections:
            o = _in_fresh_process(overhead_worker, list(range(100, 103 if q else 108)), base)
            out["history_overhead"] = o
            say(f"harness overhead ({DEFAULT_SCENARIO}, median of {o['runs_each']} seeds each): run wall "
                f"{o['wall_s_history_on']} s with history vs {o['wall_s_history_off']} s without "
                f"({o['wall_overhead_pct']:+}%); CPU of the whole tree {o['cpu_s_history_on']} vs "
                f"{o['cpu_s_history_off']} s ({o['cpu_overhead_pct']:+}%, includes checking the history); "
                f"merge + check after the run {o['merge_check_s']} s")
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    out["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    out["goals"] = {k: _goal_met(k, out.get(k)) for k in GOALS}
    if "hygiene" in out:
        out["goals"]["hygiene_no_growth"] = out["hygiene"]["no_growth"]
    say(f"load average at the end {out['loadavg_end']}; goals: "
        + ", ".join(f"{k} {'met' if v else ('n/a' if v is None else 'NOT MET')}" for k, v in out["goals"].items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, sort_keys=True)
        say(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
