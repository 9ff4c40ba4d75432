"""P8 liveness: the run finishes within a bound after the last fault.

Model
-----
Faults are the nemesis's actions: supervisor `kill`, `pause` and `cont` events
and `failpoint` events whose action is `crash` or `pause` (a `cont` ends a
pause, so recovery is timed from it). After the last fault the system must
reach its end, the last event of the history, within `final["bound_s"]`
seconds of monotonic time. A run that the supervisor had to stop (`timeout`
event, or final outcome "timeout") is a hang: a reported violation carrying
the stuck state, never a hung test.

Operations read
---------------
* supervisor `kill`, `pause`, `cont`, `spawn`, `exited`, `timeout` (bound_s,
  state); `failpoint` (point, action) of any process; the last event of each
  process;
* final `outcome`, `bound_s`.

Anomalies
---------
1. `hang`: the run timed out; names the timeout line, its state, the last
   fault and the last event of every process incarnation still in the history
   (where each one stopped).
2. `slow_recovery`: the time from the last fault to the run's last event
   exceeds `bound_s`.
"""

from __future__ import annotations

from . import Anomaly, context, finish, incarnation

PROP = "P8"
NAME = "liveness"
FAULT_EVS = ("kill", "pause", "cont", "powercut")
FAULT_ACTIONS = ("crash", "pause", "powercut")


def _last_fault(ctx):
    best = None
    for e in ctx.events("supervisor", *FAULT_EVS):
        if best is None or e.get("line", 0) > best.get("line", 0):
            best = e
    for (r, ev), lst in ctx.index.items():
        if ev != "failpoint":
            continue
        for e in lst:
            if e.get("action") in FAULT_ACTIONS and (best is None or e.get("line", 0) > best.get("line", 0)):
                best = e
    return best


def _fault_inc(e):
    """The incarnation a fault hit: the supervisor's target, or the failpoint's own process."""
    if e.get("ev") == "failpoint":
        return incarnation(e)
    return f"{e.get('target')}#{e.get('target_inc')}"


def _describe_fault(e):
    if e is None:
        return "no fault"
    if e.get("ev") == "failpoint":
        return f"failpoint {e.get('point')} ({e.get('action')}) in {incarnation(e)} at line {e.get('line')}"
    return (f"{e.get('ev')} of {e.get('target')}#{e.get('target_inc')} ({e.get('fault', '')}) "
            f"at line {e.get('line')}")


def check(history, final, ctx=None):
    ctx = context(history, final, ctx)
    final = ctx.final
    anomalies = []
    timeouts = ctx.events("supervisor", "timeout")
    last_fault = _last_fault(ctx)
    end = history[-1] if history else None
    if final.get("outcome") == "timeout" or timeouts:
        last = {}
        for e in history:
            if e.get("proc") != "supervisor":
                last[e.get("proc")] = e
        train_steps = [e.get("step") for e in ctx.events("consumer", "train")[-1:]]
        stuck = "; ".join(f"{incarnation(e)} last did {e.get('ev')} at line {e.get('line')}"
                          for e in sorted(last.values(), key=lambda e: e.get("line", 0)))
        t = timeouts[-1] if timeouts else None
        state = t.get("state") if t else None
        bound = t.get("bound_s") if t else final.get("bound_s")
        ids = []
        if isinstance(state, dict):
            for k in ("unacked", "window", "ids", "pending"):
                if isinstance(state.get(k), list):
                    ids.extend(str(x) for x in state[k])
        anomalies.append(Anomaly(
            "hang",
            f"run timed out (bound {bound} s{', timeout at line ' + str(t.get('line')) if t else ''}); state "
            f"{state!r}; last fault: {_describe_fault(last_fault)}; "
            f"last train step {train_steps[0] if train_steps else None}; "
            f"{stuck or 'no process events'}",
            sample_ids=ids, steps=[int(s) for s in train_steps if s is not None],
            incarnations=[incarnation(e) for e in sorted(last.values(), key=lambda e: e.get("line", 0))],
            lines=([t.get("line", 0)] if t else []) + ([last_fault.get("line", 0)] if last_fault else [])))
    bound = final.get("bound_s")
    recovery = None
    if last_fault is not None and end is not None:
        recovery = float(end.get("mono", 0.0)) - float(last_fault.get("mono", 0.0))
        if bound is not None and recovery > float(bound):
            anomalies.append(Anomaly(
                "slow_recovery",
                f"{recovery:.3f} s from the last fault ({_describe_fault(last_fault)}) to the last event "
                f"({end.get('ev')} by {incarnation(end)} at line {end.get('line')}) exceeds the bound {bound} s",
                incarnations=list(dict.fromkeys([_fault_inc(last_fault), incarnation(end)])),
                lines=[last_fault.get("line", 0), end.get("line", 0)]))
    counts = {"outcome": final.get("outcome"), "timeouts": len(timeouts), "bound_s": bound,
              "recovery_s": recovery, "last_fault_line": last_fault.get("line") if last_fault else None}
    return finish(PROP, NAME, anomalies, counts)
