"""Campaign summaries: per-scenario counts by status, the Markdown table, JUnit XML, atomic writes.

`summarize(rows)` counts each scenario's rows per status (as_expected,
unexpected, inconclusive, harness_error, incomplete) with the faults planned
and landed, and adds up the runs' coverage (`harness.coverage`): per
scenario and over the campaign, failpoints reached and fired, faults by
protocol phase, sometimes-conditions seen. With `require` (scenario ->
(sometimes-conditions, failpoints)), a scenario whose summed coverage lacks
one of them has `coverage_gaps`, and the campaign is inconclusive (exit 3).
`summary_table` renders it, `coverage_section` the coverage; `write_junit` writes one `testcase`
per (scenario, seed): a `failure` for an unexpected verdict, an `error` for an
inconclusive run, a harness error or an incomplete run. Every file is written
to a temp name and renamed, so a reader never sees half a summary.
"""

from __future__ import annotations

import os
import statistics
import sys
import xml.etree.ElementTree as ET
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..coverage import gaps, merge
from ..coverage.text import markdown as coverage_markdown
from .trial import HARNESS_STATUSES, STATUSES


def write_text_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def summarize(rows: List[Dict[str, Any]], require: Optional[Dict[str, Tuple[Sequence[str], Sequence[str]]]] = None
              ) -> Dict[str, Any]:
    by: Dict[str, List[Dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(r["scenario"], []).append(r)
    table = []
    for name, rs in sorted(by.items()):
        outcomes: Dict[str, int] = {}
        for r in rs:
            outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
        counts = {s: sum(1 for r in rs if r["status"] == s) for s in STATUSES}
        walls = [r["wall_s"] for r in rs if r["status"] != "incomplete"]
        table.append({
            "scenario": name,
            "seeds": len(rs),
            **counts,
            "faults_planned": sum((r.get("faults") or {}).get("planned", 0) for r in rs),
            "faults_landed": sum((r.get("faults") or {}).get("landed", 0) for r in rs),
            "outcomes": outcomes,
            "violated": sorted({p for r in rs for p in r.get("violated") or []}),
            "median_s": round(statistics.median(walls), 2) if walls else None,
            "failing_seeds": sorted(r["seed"] for r in rs if r["status"] != "as_expected"),
            "coverage": merge(r.get("coverage") for r in rs),
        })
        if require is not None and name in require:
            table[-1]["coverage_gaps"] = gaps(table[-1]["coverage"], *require[name])
    totals = {s: sum(t[s] for t in table) for s in STATUSES}
    return {"rows": table, "runs": len(rows), **totals,
            "faults_planned": sum(t["faults_planned"] for t in table),
            "faults_landed": sum(t["faults_landed"] for t in table),
            "coverage": merge(t["coverage"] for t in table),
            "coverage_required": require is not None,
            "coverage_inconclusive": sorted(t["scenario"] for t in table if t.get("coverage_gaps")),
            "niced": niced_trials(rows)}


def niced_trials(rows: List[Dict[str, Any]]) -> Dict[str, int]:
    """{"trials": how many ran at a niceness above 0, "niceness": the highest}: a Ray cluster starts its
    workers at nice 15 unless told otherwise, and a trial's processes inherit it."""
    niced = [int(r["niceness"]) for r in rows if (r.get("niceness") or 0) > 0]
    return {"trials": len(niced), "niceness": max(niced, default=0)}


def exit_code(summary: Dict[str, Any]) -> int:
    """0 all as expected; 1 any unexpected; 3 any harness error, inconclusive (a run, or a scenario's
    required coverage), incomplete or interrupted."""
    if summary.get("unexpected"):
        return 1
    if summary.get("interrupted") or any(summary.get(s) for s in HARNESS_STATUSES) or not summary.get("runs"):
        return 3
    if summary.get("coverage_inconclusive"):
        return 3
    return 0


def summary_table(summary: Dict[str, Any]) -> str:
    out = ["| scenario | seeds | as expected | unexpected | inconclusive | harness error | incomplete | "
           "faults landed/planned | outcomes | violated | median trial s | failing seeds |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in summary["rows"]:
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(t["outcomes"].items()))
        out.append(f"| {t['scenario']} | {t['seeds']} | {t['as_expected']} | {t['unexpected']} | "
                   f"{t['inconclusive']} | {t['harness_error']} | {t['incomplete']} | "
                   f"{t['faults_landed']}/{t['faults_planned']} | {outcomes} | "
                   f"{', '.join(t['violated']) or '-'} | {'-' if t['median_s'] is None else t['median_s']} | "
                   f"{', '.join(map(str, t['failing_seeds'][:10])) or '-'} |")
    out += coverage_section(summary)
    niced = summary.get("niced") or {}
    if niced.get("trials"):
        out.append("")
        out.append(f"NOTE: {niced['trials']} of {summary['runs']} trials ran at niceness {niced['niceness']} (Ray "
                   f"starts its workers at nice 15): on a busy node their runner polls late, a run can end before "
                   f"its planned faults and the trial is inconclusive. Start the cluster's nodes with "
                   f"RAY_worker_niceness=0 in their environment (a local instance is started so).")
    if summary.get("interrupted"):
        out.append("")
        out.append(f"INTERRUPTED ({summary.get('signal') or 'interrupt'}): partial summary; runs that had not "
                   f"finished are marked incomplete.")
    return "\n".join(out) + "\n"


def coverage_section(summary: Dict[str, Any]) -> List[str]:
    """The campaign's coverage, summed over every run: gaps first, then the tables."""
    cov = summary.get("coverage")
    if not cov or not cov.get("runs"):
        return []
    out = ["", "## Coverage (summed over the runs)", ""]
    for t in summary["rows"]:
        for g in t.get("coverage_gaps") or []:
            out.append(f"- INCONCLUSIVE {t['scenario']}: {g}")
    if summary.get("coverage_required") and not summary.get("coverage_inconclusive"):
        out.append("- every required sometimes-condition occurred and every aimed-at failpoint was reached")
    return out + [""] + coverage_markdown(cov)


def write_junit(path: str, rows: List[Dict[str, Any]], summary: Dict[str, Any]) -> None:
    suites = ET.Element("testsuites", name="dataflow-harness campaign", tests=str(len(rows)),
                        failures=str(summary.get("unexpected", 0)),
                        errors=str(sum(summary.get(s, 0) for s in HARNESS_STATUSES)),
                        time=f"{summary.get('wall_s', 0)}")
    by: Dict[str, List[Dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(r["scenario"], []).append(r)
    for name, rs in sorted(by.items()):
        fails = sum(1 for r in rs if r["status"] == "unexpected")
        errs = sum(1 for r in rs if r["status"] in HARNESS_STATUSES)
        suite = ET.SubElement(suites, "testsuite", name=name, tests=str(len(rs)), failures=str(fails),
                              errors=str(errs), time=f"{sum(r['wall_s'] for r in rs):.3f}")
        for r in sorted(rs, key=lambda r: r["seed"]):
            case = ET.SubElement(suite, "testcase", classname=f"campaign.{name}", name=f"{name} seed {r['seed']}",
                                 time=f"{r['wall_s']:.3f}")
            detail = (f"outcome {r['outcome']}; violated {', '.join(r.get('violated') or []) or '-'}; "
                      f"faults landed {(r.get('faults') or {}).get('landed', 0)}"
                      f"/{(r.get('faults') or {}).get('planned', 0)}; report {r.get('report_dir') or '-'}")
            if r.get("error"):
                detail += f"; error {r['error']}"
            if r["status"] == "unexpected":
                ET.SubElement(case, "failure", type="unexpected",
                              message=f"UNEXPECTED: {r['outcome']}").text = detail
            elif r["status"] in HARNESS_STATUSES:
                ET.SubElement(case, "error", type=r["status"], message=r["status"]).text = detail
            ET.SubElement(case, "system-out").text = detail
    ET.indent(suites) if hasattr(ET, "indent") else None
    write_text_atomic(path, ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n")


_LAST = {"n": -1}


def progress_bar(n: int, total: int, rows: List[Dict[str, Any]], elapsed: float) -> None:
    bad = sum(1 for r in rows if r["status"] != "as_expected")
    if not sys.stderr.isatty():  # a log file: one line per finished run, no redraws
        if n != _LAST["n"]:
            _LAST["n"] = n
            last = rows[-1] if rows else None
            tail = (f" last: {last['scenario']} seed {last['seed']} {last['outcome']}"
                    f"{'' if last['status'] == 'as_expected' else ' ' + last['status'].upper()}") if last else ""
            sys.stderr.write(f"{n}/{total} runs, {bad} not as expected, {elapsed:.0f} s{tail}\n")
        return
    width = 30
    fill = int(width * n / max(1, total))
    eta = (elapsed / n * (total - n)) if n else 0
    sys.stderr.write(f"\r[{'#' * fill}{'.' * (width - fill)}] {n}/{total} runs, {bad} not as expected, "
                     f"{elapsed:.0f} s elapsed, ~{eta:.0f} s left ")
    sys.stderr.flush()
