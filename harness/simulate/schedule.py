"""Schedules of the simulation engine: the operations, their validation and text.

A schedule is a list of operations (tuples, as JSON reads them back):

    ("step",  target, n)      step the target n times
    ("kill",  target)         crash between two steps
    ("fail",  target, point)  crash inside an operation, at failpoint `point`
    ("pause", target, n)      freeze the target while the other side takes n steps
    ("kill", "store_server")  the in-memory store server dies (its ledger too)
    ("powercut", mode, seed)  every process crashes at once, the work dir reverts to what
                              a disk could hold (mode "clean" or "torn"; seed: the torn tails)
    ("powercut", mode, seed, target, point)   the same, while `target` is at failpoint `point`

`target` is "producer" or "consumer"; see `harness.simulate.engine` for what
each operation does.
"""

from __future__ import annotations

from typing import Any, List, Sequence, Tuple

from reference_impl.failpoints import POINTS

TARGETS = ("producer", "consumer")
OP_KINDS = ("step", "kill", "fail", "pause")
POWERCUT_MODES = ("clean", "torn")

Op = Tuple[Any, ...]


def points_for(target: str, backend: str) -> List[str]:
    """The failpoints a simulated `target` process reaches.

    With the in-memory backend the store code (and `store.mid_ack_txn`) runs
    in the store server, not in the consumer, so it is not a consumer point.
    """
    if target == "producer":
        return [p for p in POINTS if p.startswith(("producer.", "channel.", "features."))]
    pts = [p for p in POINTS if p.startswith("consumer.")]
    if backend != "inmemory":
        pts += [p for p in POINTS if p.startswith("store.")]
    return pts



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


def check_ops(ops: Sequence[Op], backend: str = "sqlite", powercuts: bool = False) -> List[Op]:
    """Validate a schedule (as read back from JSON); returns it as tuples. A power cut is
    allowed only with `powercuts` (the simulation must run traced)."""
    out = []
    for i, op in enumerate(ops):
        op = tuple(op)
        if op and op[0] == "powercut":
            if len(op) not in (3, 5) or op[1] not in POWERCUT_MODES or not isinstance(op[2], int) or op[2] < 0:
                raise ValueError(f"schedule op {i}: {op!r} is not ('powercut', mode, seed[, target, point]) with "
                                 f"mode in {POWERCUT_MODES} and seed an integer >= 0")
            if len(op) == 5 and (op[3] not in TARGETS or op[4] not in points_for(op[3], backend)):
                raise ValueError(f"schedule op {i}: {op!r}: target not in {TARGETS} or point not reached by it")
            if not powercuts:
                raise ValueError(f"schedule op {i}: {op!r}: a power cut needs --powercuts")
            out.append(op)
            continue
        bad = ValueError(f"schedule op {i}: {op!r} is not one of ('step', T, n), ('kill', T), "
                         f"('fail', T, point), ('pause', T, n) with T in {TARGETS}")
        if op[:2] == ("kill", "store_server") and len(op) == 2:
            if backend != "inmemory":
                raise ValueError(f"schedule op {i}: {op!r}: only the in-memory backend has a store server")
            out.append(op)
            continue
        if not op or op[0] not in OP_KINDS or len(op) < 2 or op[1] not in TARGETS:
            raise bad
        if op[0] in ("step", "pause") and (len(op) != 3 or not isinstance(op[2], int) or op[2] < 1):
            raise bad
        if op[0] == "kill" and len(op) != 2:
            raise bad
        if op[0] == "fail" and (len(op) != 3 or op[2] not in points_for(op[1], backend)):
            raise ValueError(f"schedule op {i}: {op!r}: point not reached by {op[1]} "
                             f"(allowed: {', '.join(points_for(op[1], backend))})")
        out.append(op)
    return out

