"""Campaigns: many (scenario, seed) runs in parallel, with a summary table.

Each run is the same `run_scenario` call the CLI and the CI lane make. Runs go
to `<reports>/campaign-<time>/`; a run that matches its expected verdict is
removed unless `keep_all`, so every directory left there is a failing seed
with its full report. The summary (`summary.json`, `summary.md`) has one row
per scenario: seeds, as expected, unexpected, outcomes, median trial time.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from datetime import datetime
from typing import Any, Dict, List, Optional, Sequence


def parse_seeds(spec: str) -> List[int]:
    """`A..B` (inclusive), `A,B,C`, or `N` (seeds 0..N-1)."""
    spec = spec.strip()
    try:
        if ".." in spec:
            a, b = spec.split("..", 1)
            lo, hi = int(a), int(b)
            if hi < lo:
                raise ValueError
            return list(range(lo, hi + 1))
        if "," in spec:
            return [int(x) for x in spec.split(",") if x.strip()]
        return list(range(int(spec)))
    except ValueError:
        raise ValueError(f"bad --seeds {spec!r}; allowed: A..B (inclusive), A,B,C, or N for 0..N-1") from None


def _one(args) -> Dict[str, Any]:
    scenario, seed, reports, backend, keep_all = args
    from .process_engine.runner import run_scenario

    t = time.monotonic()
    try:
        # Rendering (matplotlib) costs more CPU than checking a trial; render
        # only the reports that are kept.
        r = run_scenario(scenario, seed, reports_dir=reports, backend=backend, quiet=True, render=False)
        if keep_all or not r.as_expected:
            from .reports.render import render_report

            render_report(r.report_dir)
    except Exception as e:  # a harness error is a failing seed, reported, not a lost campaign
        return {"scenario": scenario, "seed": seed, "as_expected": False, "outcome": "harness_error",
                "violated": [], "wall_s": time.monotonic() - t, "report_dir": None, "error": repr(e)}
    if r.as_expected and not keep_all:
        shutil.rmtree(r.report_dir, ignore_errors=True)
    return {"scenario": r.scenario, "seed": seed, "as_expected": r.as_expected, "outcome": r.outcome,
            "violated": r.verdict.get("violated", []), "wall_s": r.wall_s,
            "report_dir": None if (r.as_expected and not keep_all) else r.report_dir}


def run_campaign(scenarios: Sequence[str], seeds: Sequence[int], *, jobs: int = 2, reports_dir: str = "reports",
                 backend: Optional[str] = None, keep_all: bool = False, progress: bool = True) -> Dict[str, Any]:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    cdir = os.path.join(reports_dir, f"campaign-{stamp}")
    os.makedirs(cdir, exist_ok=True)
    work = [(s, seed, cdir, backend, keep_all) for s in scenarios for seed in seeds]
    rows: List[Dict[str, Any]] = []
    t0 = time.monotonic()
    with ProcessPoolExecutor(max_workers=max(1, jobs)) as ex:
        futs = {ex.submit(_one, w) for w in work}
        while futs:
            done, futs = wait(futs, timeout=1.0, return_when=FIRST_COMPLETED)
            for f in done:
                rows.append(f.result())
            if progress:
                _bar(len(rows), len(work), rows, time.monotonic() - t0)
    if progress:
        print(file=sys.stderr)
    summary = summarize(rows)
    summary.update({"campaign_dir": cdir, "wall_s": round(time.monotonic() - t0, 1), "jobs": jobs})
    with open(os.path.join(cdir, "summary.json"), "w") as f:
        json.dump({"summary": summary, "runs": sorted(rows, key=lambda r: (r["scenario"], r["seed"]))}, f, indent=2)
    with open(os.path.join(cdir, "summary.md"), "w") as f:
        f.write(summary_table(summary))
    return summary


_LAST = {"n": -1}


def _bar(n: int, total: int, rows, elapsed: float) -> None:
    bad = sum(1 for r in rows if not r["as_expected"])
    if not sys.stderr.isatty():  # a log file: one line per finished run, no redraws
        if n != _LAST["n"]:
            _LAST["n"] = n
            last = rows[-1] if rows else None
            tail = (f" last: {last['scenario']} seed {last['seed']} {last['outcome']}"
                    f"{'' if last['as_expected'] else ' UNEXPECTED'}") if last else ""
            sys.stderr.write(f"{n}/{total} runs, {bad} unexpected, {elapsed:.0f} s{tail}\n")
        return
    width = 30
    fill = int(width * n / max(1, total))
    eta = (elapsed / n * (total - n)) if n else 0
    sys.stderr.write(f"\r[{'#' * fill}{'.' * (width - fill)}] {n}/{total} runs, {bad} unexpected, "
                     f"{elapsed:.0f} s elapsed, ~{eta:.0f} s left ")
    sys.stderr.flush()


def summarize(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    by: Dict[str, List[Dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(r["scenario"], []).append(r)
    table = []
    for name, rs in sorted(by.items()):
        outcomes: Dict[str, int] = {}
        for r in rs:
            outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
        table.append({
            "scenario": name,
            "seeds": len(rs),
            "as_expected": sum(r["as_expected"] for r in rs),
            "unexpected": sum(not r["as_expected"] for r in rs),
            "outcomes": outcomes,
            "violated": sorted({p for r in rs for p in r["violated"]}),
            "median_s": round(statistics.median(r["wall_s"] for r in rs), 2),
            "failing_seeds": sorted(r["seed"] for r in rs if not r["as_expected"]),
        })
    return {"rows": table, "runs": len(rows), "unexpected": sum(t["unexpected"] for t in table)}


def summary_table(summary: Dict[str, Any]) -> str:
    out = ["| scenario | seeds | as expected | unexpected | outcomes | violated | median trial s | failing seeds |",
           "|---|---|---|---|---|---|---|---|"]
    for t in summary["rows"]:
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(t["outcomes"].items()))
        out.append(f"| {t['scenario']} | {t['seeds']} | {t['as_expected']} | {t['unexpected']} | {outcomes} | "
                   f"{', '.join(t['violated']) or '-'} | {t['median_s']} | "
                   f"{', '.join(map(str, t['failing_seeds'][:10])) or '-'} |")
    return "\n".join(out) + "\n"
