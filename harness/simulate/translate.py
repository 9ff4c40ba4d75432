"""A simulated schedule as a process-engine scenario (`python -m harness run FILE --seed 0`).

The faults a simulated run actually fired (`SimResult.faults`) are already in
scenario syntax:

* a crash inside an operation -> `kind = "failpoint"` with the point, the
  target, `hit` (the how-manyth time that incarnation reached the point) and
  the incarnation: replayed exactly where the simulation crashed;
* a crash between steps -> `kind = "kill"` triggered by the progress at the
  crash (`at_published` for the producer, `at_consumed` for the consumer);
* a pause -> `kind = "pause"` at the same kind of trigger;
* a power cut -> `kind = "powercut"` with the trigger a kill would have (the
  consumer's `at_consumed` while it ran, else the producer's `at_published`)
  and the scenario's `faults.powercut_mode` ("clean" or "torn"; "torn" when the
  schedule mixed both: a clean cut is one of the states a torn cut can leave).
  The torn tails are drawn from the process engine's seed, not the schedule's.
  Where `harness.scenario` does not know the fault kind yet, `scenario_text`
  still writes it (the rest of the file validated), and says so in a comment.

The interleaving between the faults is not replayed: the real processes run
at their own speed, so a counterexample that depends on a precise race may
need `python -m harness campaign` over several seeds to show again.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Sequence, Tuple

from harness.exit_codes import HarnessError
from harness.scenario import FAULT_KEYS, WORKLOAD_KEYS, Scenario, scenario_from_dict, tomllib

from .engine import DEFAULT_WORKLOAD, SimResult, format_op


def scenario_workload(workload: Dict[str, Any]) -> Dict[str, Any]:
    w = dict(DEFAULT_WORKLOAD)
    w.update(workload or {})
    return {k: w[k] for k in WORKLOAD_KEYS if k in w}


def to_scenario(result: SimResult, *, name: str, workload: Dict[str, Any], backend: str,
                variant: Optional[str] = None, expect: Optional[Sequence[str]] = None,
                outcomes: Sequence[str] = ("completed",), seed: int = 0, source: str = "") -> Scenario:
    """The scenario (validated by `harness.scenario`; a power cut needs its `powercut` fault kind)."""
    return scenario_from_dict(_data(result, name=name, workload=workload, backend=backend, variant=variant,
                                    expect=expect, outcomes=outcomes, seed=seed, source=source),
                              source=f"simulation:{name}")


def powercut_mode(result: SimResult) -> Optional[str]:
    modes = {f.get("powercut_mode", "clean") for f in result.faults if f["kind"] == "powercut"}
    return None if not modes else (modes.pop() if len(modes) == 1 else "torn")


def scenario_text(result: SimResult, **kw) -> Tuple[List[Dict[str, Any]], str]:
    """(process-engine faults, scenario file text): `to_scenario`'s file; with power cuts where
    `harness.scenario` does not validate them yet, the rest validated and the cuts added."""
    data = _data(result, **kw)
    mode = data["faults"].get("powercut_mode")
    src = f"simulation:{kw.get('name')}"
    try:
        sc = scenario_from_dict(data, source=src)
        text = sc.to_toml()
    except ValueError:
        if mode is None:
            raise
        bare = dict(data, faults={"explicit": [f for f in data["faults"]["explicit"] if f["kind"] != "powercut"]})
        sc = dataclasses.replace(scenario_from_dict(bare, source=src), explicit_faults=data["faults"]["explicit"])
        text = ("# harness.scenario does not accept kind = \"powercut\" yet: this file needs the power-cut fault\n"
                + sc.to_toml())
    if mode is not None and "powercut_mode" not in text:
        head, sep, rest = text.partition("\n[[faults.explicit]]")
        text = f"{head}\n[faults]\npowercut_mode = \"{mode}\"\n{sep}{rest}"
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:  # a bug here, never a file that cannot be read back
        raise HarnessError(f"the scenario written for {kw.get('name')} is not valid TOML: {e}") from None
    return sc.explicit_faults, text


def _data(result: SimResult, *, name: str, workload: Dict[str, Any], backend: str, variant: Optional[str] = None,
          expect: Optional[Sequence[str]] = None, outcomes: Sequence[str] = ("completed",), seed: int = 0,
          source: str = "") -> Dict[str, Any]:
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
    mode = powercut_mode(result)
    if mode is not None:
        data["faults"]["powercut_mode"] = mode
    if variant:
        data["topology"] = {"variant": variant}
    return data
