"""Soak: one long campaign of small trials, and whether anything it holds grows.

`bench --only soak` runs one campaign (`harness.campaign.run_campaign`, the
local executor, `--jobs` workers) of 2,000 trials (`--trials N` to change it)
of a small scenario (SOAK_SCENARIO: 4 samples, the consumer crashed once at
a failpoint and restarted, SQLite), with its temp dir under the bench's
scratch dir, and samples the campaign every `SAMPLE_S` from /proc:

* the long-lived processes (the driver, its workers and their zygotes: the
  pids seen in nine samples of ten): open file descriptors, threads, RSS;
* the whole process tree (transient trial processes included): processes;
* disk used (allocated bytes) under the campaign's folder (but its summary,
  which holds a row per trial by design) and the temp dir.

The start is the median of the samples from 5% to 15% of the campaign (its
warm-up past), the end the median of its last 10%. A figure grows when its
end exceeds its start by more than its slack (`SLACK`: a few descriptors or
threads, 10% of RSS, 1 MiB of disk).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from typing import Any, Dict, List

from .procfs import descendants, fd_count, rss_kb
from .registry import BenchRun, section

SOAK_TRIALS = 2000
SAMPLE_S = 1.0
SOAK_SCENARIO = """name = "soak"
description = "A small trial for the soak: 4 samples, the consumer crashed at one failpoint and restarted."
[store]
backend = "sqlite"
[workload]
samples = 4
publish_batch = 4
train_batch = 2
accumulation = 1
[[faults.explicit]]
kind = "failpoint"
target = "consumer"
point = "consumer.after_train_before_checkpoint"
action = "crash"
[expect]
outcome = ["completed"]
timeout_s = 120.0
"""
#: figure -> (absolute slack, relative slack)
SLACK = {"fds": (4, 0.0), "threads": (4, 0.0), "rss_kb": (0, 0.10), "processes": (2, 0.0), "disk_bytes": (1 << 20, 0.0)}


def _call(fn, args, q) -> None:
    try:
        q.put(("ok", fn(*args)))
    except BaseException as e:  # reported by the parent
        q.put(("error", f"{type(e).__name__}: {e}"))


def in_fresh_parent(fn, *args):
    """`fn(*args)` in a fresh interpreter that may start processes of its own (a pool's worker may not)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_call, args=(fn, args, q))
    p.start()
    try:
        kind, value = q.get()
    finally:
        p.join()
    if kind != "ok":
        raise RuntimeError(f"the soak's driver failed: {value}")
    return value


def _threads(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


def _disk_bytes(*dirs: str) -> int:
    """Allocated bytes under `dirs`, but the campaign's summary (its output, one row per trial)."""
    total = 0
    for d in dirs:
        for root, _dirs, files in os.walk(d):
            for name in files:
                if name.startswith("summary."):
                    continue
                try:
                    total += os.lstat(os.path.join(root, name)).st_blocks * 512
                except OSError:
                    pass
    return total


class _Sampler:
    def __init__(self, dirs: List[str]) -> None:
        self.dirs = dirs
        self.samples: List[Dict[str, Any]] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, name="soak-sampler", daemon=True)
        self._t.start()

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.wait(SAMPLE_S):
            pids = [me] + descendants(me)
            self.samples.append({
                "t": time.monotonic(),
                "per_pid": {p: (fd_count(p), _threads(p), rss_kb(p)) for p in pids},
                "processes": len(pids),
                "disk_bytes": _disk_bytes(*self.dirs),
            })

    def stop(self) -> List[Dict[str, Any]]:
        self._stop.set()
        self._t.join()
        return self.samples


def summarize(samples: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Start and end figures of the samples, and which grew (see the module doc)."""
    n = len(samples)
    if n < 10:
        return {"samples": n, "error": "too few samples to tell (the campaign was shorter than 10 samples)"}
    counts: Dict[int, int] = {}
    for s in samples:
        for p in s["per_pid"]:
            counts[p] = counts.get(p, 0) + 1
    long_lived = {p for p, c in counts.items() if c >= 0.9 * n}
    first, last = samples[n // 20:max(n // 20 + 1, n * 3 // 20)], samples[n - max(1, n // 10):]

    def figure(window, key):
        if key in ("processes", "disk_bytes"):
            return statistics.median(s[key] for s in window)
        i = {"fds": 0, "threads": 1, "rss_kb": 2}[key]
        return statistics.median(sum(s["per_pid"][p][i] for p in long_lived if p in s["per_pid"]) for s in window)

    out: Dict[str, Any] = {"samples": n, "long_lived_processes": len(long_lived), "start": {}, "end": {},
                           "grew": []}
    for key, (abs_slack, rel_slack) in SLACK.items():
        a, b = figure(first, key), figure(last, key)
        out["start"][key], out["end"][key] = a, b
        if b > a + abs_slack + rel_slack * a:
            out["grew"].append(key)
    out["no_growth"] = not out["grew"]
    return out


def soak_worker(trials: int, jobs: int, base: str) -> Dict[str, Any]:
    """The campaign and its samples, in a fresh interpreter (this process is the campaign's driver)."""
    tmp = os.path.join(base, "soak-tmp")
    reports = os.path.join(base, "soak-reports")
    os.makedirs(tmp)
    os.environ["TMPDIR"] = tmp  # (the campaign's temp files, to be counted)
    tempfile.tempdir = None
    path = os.path.join(base, "soak.toml")
    with open(path, "w") as f:
        f.write(SOAK_SCENARIO)
    from ..campaign import run_campaign
    from ..scenario import load_scenario

    sampler = _Sampler([reports, tmp])
    t0 = time.monotonic()
    try:
        summary = run_campaign([load_scenario(path)], list(range(trials)), jobs=jobs, reports_dir=reports,
                               progress=False)
    finally:
        samples = sampler.stop()
    wall = time.monotonic() - t0
    out = summarize(samples)
    out.update(trials=summary["runs"], as_expected=summary["as_expected"], wall_s=round(wall, 1),
               trials_per_min=round(summary["runs"] / wall * 60, 1),
               not_as_expected=summary["runs"] - summary["as_expected"], jobs=jobs)
    return out


@section("soak", 90)
def soak_section(run: BenchRun) -> None:
    trials = getattr(run.args, "trials", None) or SOAK_TRIALS
    jobs = getattr(run.args, "jobs", None) or 2
    s = in_fresh_parent(soak_worker, trials, jobs, run.base)
    run.out["soak"] = s
    if "error" in s:
        run.say(f"soak: {s['error']}")
        return
    figures = ", ".join(f"{k} {s['start'][k]} -> {s['end'][k]}" for k in SLACK)
    run.say(f"soak: {s['trials']} trials ({s['as_expected']} as expected) in {s['wall_s']} s "
            f"({s['trials_per_min']}/min, {jobs} workers); {s['long_lived_processes']} long-lived processes, "
            f"start -> end (medians of the first and last tenth, {s['samples']} samples): {figures}; "
            f"{'nothing grew' if s['no_growth'] else 'GREW: ' + ', '.join(s['grew'])}")
