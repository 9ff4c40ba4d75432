"""A run's report directory read back: what `replay`, `shrink` and `report` take from disk.

Anyone may have edited these files (a fault tried by hand, a trimmed report),
so each is validated like a scenario before it is used, and anything wrong is
a `UsageError` (exit 2) that names the file and the field:

* `result.json`: a JSON object; `seed` an integer 0..2**63-1; `outcome` a
  string; `scenario`, `backend` and `replay_command` strings, `wall_s` a
  number and `properties` when there (required for `report`, which renders
  them); `verdict` an object with `violated` a list of strings and (when
  there; for `report` required) `as_expected` a boolean, `expected` an
  object with lists `violates` and `outcome`, `reasons` a list of strings;
  `properties` an object of objects, each with `valid` true, false or null
  and (when there) `anomalies`, a list of objects with string `kind` and
  `message`; `faults`, `final` and `powerloss` objects when there;
* `scenario.toml`: a scenario (`harness.scenario.load_scenario`);
* `schedule.json`: a fault schedule (`harness.faults.read_schedule`: each
  fault checked by its kind), every fault aimed at a process the scenario's
  topology has;
* `history.jsonl` (`report` only): one JSON object per line.

`load_run_dir(d)` reads all but the history; `check_history(d)` the history.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict

from .exit_codes import UsageError
from .paths import read_json_file
from .validation import check_seed

RESULT, SCHEDULE, SCENARIO, HISTORY = "result.json", "schedule.json", "scenario.toml", "history.jsonl"


def need_report_dir(d: str) -> str:
    """`d` is a run's report directory (it has a result.json)."""
    if not os.path.isdir(d):
        raise UsageError(f"report directory {d} does not exist" if not os.path.exists(d)
                         else f"{d} is not a directory (a report directory was expected)")
    if not os.path.isfile(os.path.join(d, RESULT)):
        raise UsageError(f"{d} is not a report directory (no {RESULT})")
    return d


# -- result.json ------------------------------------------------------------------------


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


#: key -> (required, check, what is allowed)
_RESULT_FIELDS: Dict[str, tuple] = {
    "scenario": (False, _is_str, "a string"),
    "outcome": (True, _is_str, "a string"),
    "backend": (False, _is_str, "a string"),
    "replay_command": (False, _is_str, "a string"),
    "wall_s": (False, _is_number, "a finite number"),
    "verdict": (True, lambda v: isinstance(v, dict), "an object"),
    "properties": (False, lambda v: isinstance(v, dict), "an object"),
    "faults": (False, lambda v: isinstance(v, dict), "an object"),
    "final": (False, lambda v: isinstance(v, dict), "an object"),
    "powerloss": (False, lambda v: isinstance(v, dict), "an object"),
}
_VERDICT_FIELDS: Dict[str, tuple] = {
    "as_expected": (False, lambda v: isinstance(v, bool), "true or false"),
    "violated": (True, _is_str_list, "a list of property names (strings)"),
    "reasons": (False, _is_str_list, "a list of strings"),
}


def _check_fields(obj: Dict[str, Any], fields: Dict[str, tuple], where: str, prefix: str = "") -> None:
    for key, (required, ok, allowed) in fields.items():
        if key not in obj:
            if required:
                raise UsageError(f"{where}: key {prefix + key!r} is missing; allowed: {allowed}")
            continue
        if not ok(obj[key]):
            raise UsageError(f"{where}: key {prefix + key!r} has value {_short(obj[key])}; allowed: {allowed}")


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_properties(props: Dict[str, Any], where: str) -> None:
    for name, p in props.items():
        key = f"properties.{name}"
        if not isinstance(p, dict):
            raise UsageError(f"{where}: key {key!r} has value {_short(p)}; allowed: an object")
        if p.get("valid") not in (True, False, None):
            raise UsageError(f"{where}: key {key + '.valid'!r} has value {_short(p['valid'])}; "
                             f"allowed: true, false or null")
        anomalies = p.get("anomalies")
        if anomalies is None:
            continue
        if not isinstance(anomalies, list):
            raise UsageError(f"{where}: key {key + '.anomalies'!r} has value {_short(anomalies)}; allowed: a list")
        for i, a in enumerate(anomalies):
            if not isinstance(a, dict) or not _is_str(a.get("kind")) or not _is_str(a.get("message")):
                raise UsageError(f"{where}: key {f'{key}.anomalies[{i}]'!r} has value {_short(a)}; allowed: "
                                 f"an object with string 'kind' and 'message'")


_VERDICT_RENDERED: Dict[str, tuple] = {
    "as_expected": (True, lambda v: isinstance(v, bool), "true or false"),
    "expected": (True, lambda v: isinstance(v, dict) and _is_str_list(v.get("violates"))
                 and _is_str_list(v.get("outcome")), "an object with lists of strings 'violates' and 'outcome'"),
}
#: What rendering a report needs besides: these keys are required for `report`.
_RENDERED = ("scenario", "backend", "wall_s", "replay_command", "properties")


def read_result(d: str, render: bool = False) -> Dict[str, Any]:
    """`d`/result.json, validated (UsageError naming the file and the key); `render`: it is to be
    rendered (`report`), which needs the keys of `_RENDERED` too."""
    path = os.path.join(d, RESULT)
    result = read_json_file(path, "result")
    if not isinstance(result, dict):
        raise UsageError(f"{path}: not a run's result (a JSON object was expected, found {type(result).__name__})")
    if "seed" not in result:
        raise UsageError(f"{path}: key 'seed' is missing; allowed: an integer 0..2**63-1")
    check_seed(result["seed"], f"{path}: key 'seed' has value")
    _check_fields(result, _RESULT_FIELDS, path)
    _check_fields(result["verdict"], _VERDICT_FIELDS, path, "verdict.")
    _check_properties(result.get("properties") or {}, path)
    if render:
        _check_fields(result, {k: (True,) + _RESULT_FIELDS[k][1:] for k in _RENDERED}, path)
        _check_fields(result["verdict"], _VERDICT_RENDERED, path, "verdict.")
    return result


# -- schedule.json and the scenario ------------------------------------------------------


def read_checked_schedule(d: str, sc) -> Any:
    """`d`/schedule.json, each fault valid and aimed at a process the scenario `sc` has."""
    from .faults import read_schedule

    path = os.path.join(d, SCHEDULE)
    if not os.path.isfile(path):
        raise UsageError(f"{path}: does not exist (a report directory holds its schedule)")
    schedule = read_schedule(path)
    _check_targets(schedule, sc, path)
    return schedule


def _check_targets(schedule, sc, path: str) -> None:
    """Each fault aimed at a process of the scenario's topology (`harness.scenario.check_fault_targets`,
    its messages naming the schedule's `faults[i]`)."""
    from .scenario import ScenarioError, check_fault_targets

    copy = sc.with_backend(sc.backend)
    copy.explicit_faults = list(schedule.faults)
    copy.random_faults = dict(copy.random_faults, count=0)
    copy.path = path
    try:
        check_fault_targets(copy, f"{os.path.join(os.path.dirname(path), SCENARIO)}: store.backend")
    except ScenarioError as e:
        raise UsageError(str(e).replace("'faults.explicit[", "'faults[")) from None


@dataclass
class RunDir:
    path: str
    result: Dict[str, Any]
    scenario: Any
    schedule: Any

    @property
    def seed(self) -> int:
        return self.result["seed"]


def load_run_dir(d: str) -> RunDir:
    """A report directory's result, scenario and schedule, each validated."""
    from .scenario import load_scenario

    need_report_dir(d)
    result = read_result(d)
    sc = load_scenario(os.path.join(d, SCENARIO))
    return RunDir(d, result, sc, read_checked_schedule(d, sc))


# -- history.jsonl -------------------------------------------------------------------------


def check_history(d: str, line_ok: Callable[[Any], bool] = lambda e: isinstance(e, dict)) -> int:
    """Every line of `d`/history.jsonl is a JSON object (a missing file is no history); the count."""
    path = os.path.join(d, HISTORY)
    n = 0
    try:
        with open(path, "rb") as f:
            for i, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    e = json.loads(raw)
                except (ValueError, UnicodeDecodeError) as err:
                    raise UsageError(f"{path}: line {i} is not valid JSON: {err}") from None
                if not line_ok(e):
                    raise UsageError(f"{path}: line {i} is not an event (a JSON object): {_short(e)}")
                n += 1
    except FileNotFoundError:
        return 0
    return n
