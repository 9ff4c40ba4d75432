"""A simulated schedule as a process-engine scenario (`python -m harness run FILE --seed 0`).

The faults a simulated run actually fired (`SimResult.faults`) are already in
scenario syntax:

* a crash inside an operation -> `kind = "failpoint"` with the point, the
  target, `hit` (the how-manyth time that incarnation reached the point) and
  the incarnation: replayed exactly where the simulation crashed;
* a crash between steps -> `kind = "kill"` triggered by the progress at the
  crash (`at_published` for the producer, `at_consumed` for the consumer);
* a pause -> `kind = "pause"` at the same kind of trigger.

The interleaving between the faults is not replayed: the real processes run
at their own speed, so a counterexample that depends on a precise race may
need `python -m harness campaign` over several seeds to show again.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from harness.scenario import FAULT_KEYS, WORKLOAD_KEYS, Scenario, scenario_from_dict

from .engine import DEFAULT_WORKLOAD, SimResult, format_op


def scenario_workload(workload: Dict[str, Any]) -> Dict[str, Any]:
    w = dict(DEFAULT_WORKLOAD)
    w.update(workload or {})
    return {k: w[k] for k in WORKLOAD_KEYS if k in w}


def to_scenario(result: SimResult, *, name: str, workload: Dict[str, Any], backend: str,
                variant: Optional[str] = None, expect: Optional[Sequence[str]] = None,
                outcomes: Sequence[str] = ("completed",), seed: int = 0, source: str = "") -> Scenario:
    faults: List[Dict[str, Any]] = [{k: v for k, v in f.items() if k in FAULT_KEYS} for f in result.faults]
    sched = "; ".join(format_op(o) for o in result.ops) or "no operation (the drain alone)"
    what = ", ".join(result.violated) or result.outcome
    desc = (f"Found by the simulation engine{(' (' + source + ')') if source else ''}, seed {seed}: "
            f"{what}. Shrunk schedule: {sched}.")
    data: Dict[str, Any] = {
        "name": name,
        "description": desc,
        "tags": ["simulation"],
        "store": {"backend": backend},
        "workload": scenario_workload(workload),
        "faults": {"explicit": faults},
        "expect": ({"violates": list(expect)} if expect else
                   {"outcome": [o for o in ("completed", "fail_closed", "failed", "timeout")
                                if o in outcomes or o in result.acceptable_outcomes]}),
    }
    if variant:
        data["topology"] = {"variant": variant}
    return scenario_from_dict(data, source=f"simulation:{name}")
