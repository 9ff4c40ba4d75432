"""Tier 4, end to end: the reference producer and consumer on this backend.

Runs the harness's crash scenarios through `harness.process_engine.runner.run_scenario` with
`backend=<module:attr>` and requires every run to be valid (P1 to P8). If the
runner is not importable, or the factory has no importable `module:attr`
name, the tier is "not run", which fails certification (never a pass).
"""

from __future__ import annotations

import base64
import os
import time
import traceback
from typing import Any, Dict, List, Optional

from .certificate import FAILED, NOT_RUN, PASSED, Counterexample, TierResult
from .common import Context

SCENARIOS = ("baseline", "kill-random", "failpoints-consumer")
PROPERTIES = ["P1", "P2", "P3", "P4", "P5", "P6", "P7", "P8"]


def backend_spec(ctx: Context) -> Optional[str]:
    """The backend string a run's processes can open; wraps older stores in the adapter."""
    spec = ctx.target.spec
    if spec is None:
        return None
    if ctx.target.adapter:
        token = base64.b32encode(spec.encode()).decode().rstrip("=").lower()
        return f"harness.certify.adapted:one_by_one_{token}"
    return spec


def _invalid_props(result: Any) -> List[str]:
    props = getattr(result, "properties", None) or {}
    out = []
    for name, val in props.items():
        ok = val.get("valid", True) if isinstance(val, dict) else bool(val)
        if not ok:
            out.append(str(name))
    return out


def run(ctx: Context) -> TierResult:
    """The crash scenarios on the backend; their run reports go to `<certificate>/tier4/`."""
    reports_dir = os.path.join(ctx.report_dir, "tier4") if ctx.report_dir else None
    t0 = time.monotonic()
    res = TierResult(tier=4, status=PASSED, properties=list(PROPERTIES))
    try:
        from harness.process_engine.runner import run_scenario  # type: ignore
    except Exception as e:  # noqa: BLE001 - any import failure means the tier cannot run
        res.status = NOT_RUN
        res.reason = "not run (harness runner unavailable)"
        res.notes.append(f"importing harness.process_engine.runner failed: {type(e).__name__}: {e}")
        res.duration_s = time.monotonic() - t0
        return res
    spec = backend_spec(ctx)
    if spec is None:
        res.status = NOT_RUN
        res.reason = "not run (the factory has no importable module:attr name for the run's processes)"
        res.duration_s = time.monotonic() - t0
        return res
    if ctx.target.adapter:
        res.notes.append(f"processes open the store through the one-by-one adapter ({spec})")
    out_dir = reports_dir or os.path.join(ctx.workroot, "tier4")
    os.makedirs(out_dir, exist_ok=True)
    seeds = int(ctx.overrides.get("t4_seeds") or ctx.budget.t4_seeds)
    runs: List[Dict[str, Any]] = []
    for scenario in SCENARIOS:
        for i in range(seeds):
            seed = ctx.seed + i
            ctx.progress(f"tier 4 end-to-end: scenario {scenario} seed {seed}")
            t1 = time.monotonic()
            try:
                r = run_scenario(scenario, seed, backend=spec, reports_dir=out_dir, quiet=True)
            except Exception as e:  # noqa: BLE001
                res.counterexamples.append(
                    Counterexample(
                        tier=4,
                        property="harness",
                        message=f"scenario {scenario} seed {seed} could not run: {type(e).__name__}: {e}",
                        steps=traceback.format_exc().splitlines()[-6:],
                        reproduce=ctx.reproduce(4),
                    )
                )
                runs.append({"scenario": scenario, "seed": seed, "valid": False, "error": str(e),
                             "seconds": round(time.monotonic() - t1, 1)})
                continue
            entry = {
                "scenario": scenario,
                "seed": seed,
                "valid": bool(getattr(r, "valid", False)),
                "outcome": str(getattr(r, "outcome", "")),
                "report_dir": str(getattr(r, "report_dir", "")),
                "seconds": round(time.monotonic() - t1, 1),
            }
            runs.append(entry)
            if not entry["valid"]:
                bad = _invalid_props(r) or ["run"]
                for prop in bad:
                    detail = (getattr(r, "properties", {}) or {}).get(prop, {})
                    anomalies = detail.get("anomalies", []) if isinstance(detail, dict) else []
                    res.counterexamples.append(
                        Counterexample(
                            tier=4,
                            property=prop,
                            message=f"scenario {scenario} seed {seed}: {prop} violated (outcome {entry['outcome']}); "
                            f"report {entry['report_dir']}",
                            steps=[str(a)[:300] for a in anomalies[:5]],
                            reproduce=str(getattr(r, "replay_command", "") or ctx.reproduce(4)),
                        )
                    )
    res.counters = {"runs": len(runs), "valid": sum(1 for x in runs if x["valid"])}
    res.notes.extend(
        f"{x['scenario']} seed {x['seed']}: {'valid' if x['valid'] else 'INVALID'} in {x['seconds']} s"
        + (f" ({x['report_dir']})" if x.get("report_dir") else "")
        for x in runs
    )
    if res.counterexamples:
        res.status = FAILED
    res.duration_s = time.monotonic() - t0
    return res
