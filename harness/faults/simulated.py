"""The simulation engine's schedules, and a simulated run's faults as a process-engine scenario.

A simulation schedule is a list of operations (tuples, as JSON reads them back):

    ("step",  target, n)      step the target n times
    ("kill",  target)         crash between two steps
    ("fail",  target, point)  crash inside an operation, at failpoint `point`
    ("pause", target, n)      freeze the target while the other side takes n steps
    ("duplicate", "producer", point)   at `point`, the producer is asked to write its last
                              records again at its next publish (an impolite channel)
    ("replay", "consumer", point)      at `point`, the consumer's read position moves back
    ("kill", "store_server")  the in-memory store server dies (its ledger too)
    ("powercut", mode, seed)  every process crashes at once, the work dir reverts to what
                              a disk could hold (mode in POWERCUT_MODES; seed: the torn tails)
    ("powercut", mode, seed, target, point)   the same, while `target` is at failpoint `point`

`target` is a process of `PIPELINE`; see `harness.simulate.engine` for what
each operation does. The faults a simulated run fired (`SimResult.faults`)
are typed faults (`harness.faults.kinds`): a crash inside an operation is a
`Failpoint` (replayed exactly where the simulation crashed), a crash between
steps a `Kill` at the progress it happened (`at_published` for the producer,
`at_consumed` for the consumer; right after a step that ended at a failpoint,
with nothing recorded since, that failpoint's crash instead, which replays
exactly), a pause a `Pause`, a duplicate or a replay a `Duplicate` or a `Replay`
at the failpoint hit it landed on (`impolite_fault`), a power cut a
`Powercut` at the progress of the process that ran (or, inside an operation,
a `Failpoint` with action `powercut`). `scenario_text` writes them as a
scenario with the mode of the schedule's cuts ("torn" when it mixed both: a
clean cut is one of the states a torn cut can leave; the torn tails are drawn
from the process engine's seed). The interleaving between the faults is not
replayed: a counterexample that depends on a precise race may need
`python -m harness campaign` over several seeds to show again.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..exit_codes import HarnessError
from ..scenario import WORKLOAD_KEYS, Scenario, scenario_from_dict, tomllib
from .kinds import Duplicate, Impolite, Replay
from .points import POINT_ROLE, points_for
from .vocabulary import CONSUMER, PIPELINE, POWERCUT_MODES, PRODUCER, STORE_SERVER

OP_KINDS = ("step", "kill", "fail", "pause", "duplicate", "replay")
Op = Tuple[Any, ...]

#: The impolite operations and the one process each targets.
IMPOLITE_TARGET = {"duplicate": PRODUCER, "replay": CONSUMER}
#: How many records an impolite fault writes again (`duplicate`) or moves back (`replay`), in
#: every simulation (the search's operations, the exhaustive enumerator's planted faults).
IMPOLITE_RECORDS = {"duplicate": 3, "replay": 8}


def impolite_points(target: str, backend: str = "sqlite") -> List[str]:
    """The failpoints of `target` an impolite fault may land on: those of its role (the
    producer's channel and feature writes included), not the store code the consumer runs."""
    return [p for p in points_for(target, backend) if POINT_ROLE.get(p) == target]


def impolite_fault(action: str, target: str, point: str, hit: int, incarnation: int) -> Impolite:
    """The process-engine fault of a duplicate or a replay at that failpoint hit."""
    cls = Duplicate if action == "duplicate" else Replay
    return cls(target=target, point=point, hit=hit, incarnation=incarnation, records=IMPOLITE_RECORDS[action])


def format_op(op: Op) -> str:
    kind = op[0]
    if kind == "step":
        return f"step {op[1]} x{op[2]}"
    if kind == "kill":
        return f"kill {op[1]}"
    if kind == "fail":
        return f"crash {op[1]} at {op[2]}"
    if kind == "pause":
        return f"pause {op[1]} while the other takes {op[2]} steps"
    if kind == "duplicate":
        return f"duplicate at {op[2]} ({op[1]}'s last {IMPOLITE_RECORDS[kind]} records written again)"
    if kind == "replay":
        return f"replay at {op[2]} ({op[1]}'s read position {IMPOLITE_RECORDS[kind]} records back)"
    if kind == "powercut":
        return f"power cut ({op[1]}, seed {op[2]})" + (f" while {op[3]} is at {op[4]}" if len(op) == 5 else "")
    return repr(op)


def normalize(ops: Sequence[Op]) -> List[Op]:
    """The same schedule with consecutive steps of one target merged (same behaviour)."""
    out: List[Op] = []
    for op in ops:
        op = tuple(op)
        if op[0] == "step" and out and out[-1][0] == "step" and out[-1][1] == op[1]:
            out[-1] = ("step", op[1], out[-1][2] + op[2])
        else:
            out.append(op)
    return out


def _check_powercut(i: int, op: Op, backend: str, powercuts: bool) -> Op:
    if len(op) not in (3, 5) or op[1] not in POWERCUT_MODES or not isinstance(op[2], int) or op[2] < 0:
        raise ValueError(f"schedule op {i}: {op!r} is not ('powercut', mode, seed[, target, point]) with "
                         f"mode in {POWERCUT_MODES} and seed an integer >= 0")
    if len(op) == 5 and (op[3] not in PIPELINE or op[4] not in points_for(op[3], backend)):
        raise ValueError(f"schedule op {i}: {op!r}: target not in {PIPELINE} or point not reached by it")
    if not powercuts:
        raise ValueError(f"schedule op {i}: {op!r}: a power cut needs --powercuts")
    return op


def check_ops(ops: Sequence[Op], backend: str = "sqlite", powercuts: bool = False) -> List[Op]:
    """Validate a schedule (as read back from JSON); returns it as tuples. A power cut is
    allowed only with `powercuts` (the simulation must run traced)."""
    out = []
    for i, op in enumerate(ops):
        op = tuple(op)
        if op and op[0] == "powercut":
            out.append(_check_powercut(i, op, backend, powercuts))
            continue
        bad = ValueError(f"schedule op {i}: {op!r} is not one of ('step', T, n), ('kill', T), "
                         f"('fail', T, point), ('pause', T, n) with T in {PIPELINE}, "
                         f"('duplicate', 'producer', point), ('replay', 'consumer', point)")
        if op[:2] == ("kill", STORE_SERVER) and len(op) == 2:
            if backend != "inmemory":
                raise ValueError(f"schedule op {i}: {op!r}: only the in-memory backend has a store server")
            out.append(op)
            continue
        if not op or op[0] not in OP_KINDS or len(op) < 2 or op[1] not in PIPELINE:
            raise bad
        if op[0] in ("step", "pause") and (len(op) != 3 or not isinstance(op[2], int) or op[2] < 1):
            raise bad
        if op[0] == "kill" and len(op) != 2:
            raise bad
        if op[0] == "fail" and (len(op) != 3 or op[2] not in points_for(op[1], backend)):
            raise ValueError(f"schedule op {i}: {op!r}: point not reached by {op[1]} "
                             f"(allowed: {', '.join(points_for(op[1], backend))})")
        if op[0] in IMPOLITE_TARGET and (len(op) != 3 or op[1] != IMPOLITE_TARGET[op[0]]
                                         or op[2] not in impolite_points(op[1], backend)):
            raise ValueError(f"schedule op {i}: {op!r}: a {op[0]} targets {IMPOLITE_TARGET[op[0]]} at one of "
                             f"{', '.join(impolite_points(IMPOLITE_TARGET[op[0]], backend))}")
        out.append(op)
    return out


# -- a simulated run as a process-engine scenario ------------------------------------------


def powercut_mode(ops: Sequence[Op]) -> Optional[str]:
    """The scenario's `faults.powercut_mode` for a schedule's power cuts (None: it has none)."""
    modes = {op[1] for op in ops if op and op[0] == "powercut"}
    return None if not modes else (modes.pop() if len(modes) == 1 else "torn")


def to_scenario(result, *, name: str, workload: Dict[str, Any], backend: str, variant: Optional[str] = None,
                expect: Optional[Sequence[str]] = None, outcomes: Sequence[str] = ("completed",), seed: int = 0,
                source: str = "") -> Scenario:
    """The scenario (validated by `harness.scenario`) that replays `result`'s faults in the process engine."""
    data = _scenario_data(result, name=name, workload=workload, backend=backend, variant=variant, expect=expect,
                          outcomes=outcomes, seed=seed, source=source)
    return scenario_from_dict(data, source=f"simulation:{name}")


def scenario_text(result, **kw) -> Tuple[List[Dict[str, Any]], str]:
    """(the process-engine faults as dicts, the scenario file's text) of `to_scenario`."""
    sc = to_scenario(result, **kw)
    text = sc.to_toml()
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:  # a bug here, never a file that cannot be read back
        raise HarnessError(f"the scenario written for {kw.get('name')} is not valid TOML: {e}") from None
    return [f.to_dict() for f in sc.explicit_faults], text


def _scenario_data(result, *, name: str, workload: Dict[str, Any], backend: str, variant: Optional[str],
                   expect: Optional[Sequence[str]], outcomes: Sequence[str], seed: int,
                   source: str) -> Dict[str, Any]:
    sched = "; ".join(format_op(o) for o in result.ops) or "no operation (the drain alone)"
    what = ", ".join(result.violated) or result.outcome
    desc = (f"Found by the simulation engine{(' (' + source + ')') if source else ''}, seed {seed}: "
            f"{what}. Shrunk schedule: {sched}.")
    w = {**result.workload, **(workload or {})}
    data: Dict[str, Any] = {
        "name": name,
        "description": desc,
        "tags": ["simulation"],
        "store": {"backend": backend},
        "workload": {k: w[k] for k in WORKLOAD_KEYS if k in w},
        "faults": {"explicit": [f.to_dict() for f in result.faults]},
        "expect": ({"violates": list(expect)} if expect else
                   {"outcome": [o for o in ("completed", "fail_closed", "failed", "timeout")
                                if o in outcomes or o in result.acceptable_outcomes]}),
    }
    mode = powercut_mode(result.ops)
    if mode is not None:
        data["faults"]["powercut_mode"] = mode
    if variant:
        data["topology"] = {"variant": variant}
    return data
