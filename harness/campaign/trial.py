"""One campaign trial: run one (scenario, seed), classify it, and package its kept report.

`run_trial(spec)` is the one function every executor runs (a local pool worker
or a Ray task), so the same seed gives the same schedule and the same verdict
whatever the executor. It never raises for a failure of the run itself: an
exception becomes a `harness_error` row, reported like any other seed.

A row's `status` is one of STATUSES. With `ship` set (the Ray executor, whose
workers may not share the driver's file system) the trial runs in a scratch
directory on its own node and hands its kept report back as a gzipped tar
(`row["archive"]`), which `unpack_report` extracts into the campaign dir and
re-points (result.json, report.md, report.html name their own directory).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import tarfile
import tempfile
import time
from typing import Any, Dict, Optional

STATUSES = ("as_expected", "unexpected", "inconclusive", "harness_error", "incomplete")
#: Statuses that are a finding of the harness, not of the system under test (exit 3).
HARNESS_STATUSES = ("inconclusive", "harness_error", "incomplete")
INCOMPLETE_MARKER = "INCOMPLETE.json"


def scratch_root(campaign_id: str) -> str:
    """Where shipped trials run on a node: one folder per campaign, removed by the driver when local."""
    return os.path.join(tempfile.gettempdir(), f"dfh-trials-{campaign_id}")


def _faults(report_dir: Optional[str], r: Any) -> Dict[str, int]:
    """Planned/landed fault counts of a finished run (new `faults` dict, or the older counters)."""
    f = getattr(r, "faults", None)
    if not isinstance(f, dict) and report_dir:
        try:
            with open(os.path.join(report_dir, "result.json")) as fh:
                res = json.load(fh)
        except (OSError, ValueError):
            res = {}
        f = res.get("faults")
        if not isinstance(f, dict):
            f = {"planned": res.get("faults", 0), "landed": res.get("faults_fired", getattr(r, "faults_fired", 0))}
    f = f or {}
    missed = f.get("missed") or []
    return {"planned": int(f.get("planned") or 0), "landed": int(f.get("landed") or 0),
            "missed": len(missed) if isinstance(missed, list) else int(missed or 0)}


def status_of(r: Any) -> str:
    if getattr(r, "inconclusive", False) or (getattr(r, "verdict", None) or {}).get("inconclusive"):
        return "inconclusive"
    return "as_expected" if r.as_expected else "unexpected"


def error_row(scenario: str, seed: int, error: str, wall_s: float = 0.0,
              status: str = "harness_error") -> Dict[str, Any]:
    return {"scenario": scenario, "seed": seed, "status": status, "as_expected": False, "outcome": status,
            "violated": [], "wall_s": round(wall_s, 3), "report_dir": None, "error": error,
            "faults": {"planned": 0, "landed": 0, "missed": 0}}


def run_trial(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Run `spec` = {scenario (name, path or Scenario), name, seed, reports, backend, keep_all, ship, campaign_id}."""
    from ..process_engine.runner import run_scenario

    scenario, seed = spec["scenario"], int(spec["seed"])
    name = spec.get("name") or (scenario if isinstance(scenario, str) else scenario.name)
    keep_all, ship = bool(spec.get("keep_all")), bool(spec.get("ship"))
    reports = spec["reports"]
    if ship:
        os.makedirs(scratch_root(spec.get("campaign_id", "none")), exist_ok=True)
        reports = tempfile.mkdtemp(prefix=f"{name}-{seed}-", dir=scratch_root(spec.get("campaign_id", "none")))
    t = time.monotonic()
    worker = f"{socket.gethostname()}:{os.getpid()}"
    if ship:
        try:
            import ray

            worker += f":{ray.get_runtime_context().get_node_id()[:12]}"  # host:pid:ray node
        except Exception:
            pass
    try:
        try:
            # Rendering (matplotlib) costs more CPU than checking a trial; render
            # only the reports that are kept.
            r = run_scenario(scenario, seed, reports_dir=reports, backend=spec.get("backend"), quiet=True,
                             render=False)
            status = status_of(r)
            keep = keep_all or status != "as_expected"
            if keep:
                from ..reports.render import render_report

                render_report(r.report_dir)
        except Exception as e:  # a harness error is a failing seed, reported, not a lost campaign
            row = error_row(name, seed, repr(e), time.monotonic() - t)
            row["worker"] = worker
            return row
        faults = _faults(r.report_dir, r)
        if not keep:
            shutil.rmtree(r.report_dir, ignore_errors=True)
        row = {"scenario": r.scenario, "seed": seed, "status": status, "as_expected": status == "as_expected",
               "outcome": r.outcome, "violated": (r.verdict or {}).get("violated", []), "wall_s": r.wall_s,
               "report_dir": r.report_dir if keep else None, "faults": faults, "worker": worker,
               "niceness": os.nice(0),  # what its processes inherited (a Ray worker's: 15 by default)
               "coverage": getattr(r, "coverage", None) or None}
        if ship and keep:
            row["archive"] = pack_report(r.report_dir)
        return row
    finally:
        if ship:
            shutil.rmtree(reports, ignore_errors=True)


def pack_report(report_dir: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(report_dir, arcname=os.path.basename(report_dir))
    return buf.getvalue()


_REPOINTED = ("result.json", "report.md", "report.html")


def unpack_report(row: Dict[str, Any], campaign_dir: str) -> None:
    """Extract a shipped report into `campaign_dir` and make it name its new place."""
    data = row.pop("archive", None)
    if data is None:
        return
    old = row.get("report_dir") or ""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        names = tar.getnames()
        top = names[0].split("/", 1)[0] if names else os.path.basename(old)
        if hasattr(tarfile, "data_filter"):
            tar.extractall(campaign_dir, filter="data")
        else:  # pragma: no cover - Python < 3.11.4
            tar.extractall(campaign_dir)
    new = os.path.join(campaign_dir, top)
    if old:
        for fn in _REPOINTED:
            p = os.path.join(new, fn)
            try:
                with open(p, encoding="utf-8", errors="surrogateescape") as f:
                    text = f.read()
            except OSError:
                continue
            if old in text:
                with open(p, "w", encoding="utf-8", errors="surrogateescape") as f:
                    f.write(text.replace(old, new))
    row["report_dir"] = new
