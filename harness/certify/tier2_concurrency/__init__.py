"""Tier 2, concurrency: processes and threads at once on one store.

Scenarios (durable profile: processes, each with threads, plus threads sharing
one instance; volatile profile: threads sharing the one instance):

* **dedup race** (P4): workers commit the same ids at the same moment, in
  batches and one by one; exactly one commit per id returns fresh, the stored
  ref is that commit's ref, and each worker's fresh ids appear in
  `all_committed_ids` in the order its calls returned.
* **acks under readers** (P5, no lost update): ackers record acks whose ids are
  tagged by (writer, ack number) and whose `global_step` names the ack, in tight
  loops, while a committer commits and readers (other processes, or other
  threads) poll `durable_marker`. Every read must be a whole state: each ack
  all or nothing, each writer's acks a prefix, `global_step` the step of the
  newest ack of its writer and `optimizer_durable` that ack's flag. Reads never
  go backwards and include every ack that returned before the read began. At
  the end every ack and commit that returned is there (no lost update).
* **long-lived instances** (visibility): two processes open the store first and
  read everything (warming any cache), then take turns writing; each checks,
  through its old instance, that the other's commits, acks and dedup state are
  visible exactly.

The same store and seed get the same verdict on an idle or a loaded machine:
the committers of a dedup race start every round together (a round barrier,
one decision for all of them to go on), and the ackers go on past the
scenario's seconds until the readers have begun enough reads while an ack was
in flight (`roles.Shared`), so load makes the tier slower, not blinder.

Lock/busy/timeout errors are retried with a generous deadline and reported as
warnings, so a correct store is not failed for the load this tier creates; an
operation that raised counts as "may or may not have happened".

`plan` holds the ack plan and the marker checker, `roles` the workers and
their hosting, `analysis` the judging of what they returned, `scenarios` the
scenarios; `run` here is the tier.
"""

from __future__ import annotations

import time
from typing import Dict, List, Tuple

from ..certificate import FAILED, PASSED, Counterexample, TierResult
from ..common import Context
from ..model import Violation
from .analysis import Findings
from .plan import AckPlan, MarkerChecker
from .scenarios import scenario_acks_processes, scenario_dedup_processes, scenario_pingpong, scenario_threads

__all__ = ["PROPERTIES", "AckPlan", "MarkerChecker", "run"]

PROPERTIES = ["P4 dedup", "P5 ack atomicity", "lost-update", "visibility", "all_committed_ids order"]


def run(ctx: Context) -> TierResult:
    t0 = time.monotonic()
    res = TierResult(tier=2, status=PASSED, properties=list(PROPERTIES))
    f = Findings()
    secs = float(ctx.overrides.get("t2_seconds") or 1.5 * ctx.budget.t2_scale)
    stop_early = bool(ctx.overrides.get("stop_at_first_failure"))
    if ctx.profile == "durable":
        res.notes.append("several processes (one instance each), plus threads sharing one instance")
        plan = [
            ("dedup race across processes (lock-step order)",
             lambda: scenario_dedup_processes(ctx, f, 0, procs=6, seconds=secs)),
            ("dedup race across processes (shuffled order)",
             lambda: scenario_dedup_processes(ctx, f, 1, procs=6, seconds=secs)),
            ("acks under readers in other processes (one writer)",
             lambda: scenario_acks_processes(ctx, f, [1], readers=2, seconds=secs, tag="a1")),
            ("acks under readers in other processes (three writers)",
             lambda: scenario_acks_processes(ctx, f, [1, 1, 1], readers=1, seconds=secs, tag="a3")),
            ("long-lived instances in two processes",
             lambda: scenario_pingpong(ctx, f, rounds=max(6, int(6 * ctx.budget.t2_scale)))),
            ("threads sharing one instance",
             lambda: scenario_threads(ctx, f, n_dedup=4, ackers=2, readers=2, seconds=secs)),
        ]
    else:
        res.notes.append("volatile profile: threads sharing one instance; several processes not applicable")
        plan = [
            ("threads sharing one instance (dedup race, two ackers, readers)",
             lambda: scenario_threads(ctx, f, n_dedup=4, ackers=2, readers=2, seconds=secs)),
            ("threads sharing one instance (one acker of large acks, readers)",
             lambda: scenario_threads(ctx, f, n_dedup=0, ackers=1, readers=2, seconds=secs, max_ids=48)),
        ]
    try:
        for title, fn in plan:
            ctx.progress(f"tier 2 concurrency: {title}")
            fn()
            if f.died:
                res.notes.append("stopped after the scenario in which the process running the store died")
                break
            if stop_early and f.items:
                res.notes.append("stopped at the first failing scenario")
                break
    except Violation as e:
        f.add("setup", e.prop, e.message)
    res.counters = dict(f.counters)
    res.counters["seconds_per_scenario"] = secs
    if f.counters.get("transient_errors"):
        res.warnings.append(
            f"the store raised {f.counters['transient_errors']} lock/busy/timeout error(s) under concurrent load; "
            "they were retried, each such operation counted as maybe-applied"
        )
    res.warnings.extend(f.warnings)
    if f.items:
        res.status = FAILED
        by_prop: Dict[str, List[Tuple[str, str]]] = {}
        for scen, prop, text in f.items:
            by_prop.setdefault(prop, []).append((scen, text))
        for prop, items in by_prop.items():
            scen, text = items[0]
            res.counterexamples.append(
                Counterexample(
                    tier=2,
                    property=prop,
                    message=f"{scen}: {text}",
                    steps=[f"{s}: {t}" for s, t in items],
                    reproduce=ctx.reproduce(2) + "  (timing-dependent: may need a few runs)",
                )
            )
    res.duration_s = time.monotonic() - t0
    return res
