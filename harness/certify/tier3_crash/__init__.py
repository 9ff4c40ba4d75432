"""Tier 3, crash: SIGKILL inside commit batches and acks, many times, then reopen.

Each trial starts up to two worker processes on the same store: a committer
(batches of new and already-committed ids) and an acker (commits a batch, then
acks it; sometimes acks older committed ids; `global_step` sometimes None; the
`optimizer_durable` flag flips on every ack so that every ack changes the
marker). Before each store call a worker fsyncs "began op k" to its own log,
after the call returns it fsyncs "op k returned <result>". The parent kills the
workers with SIGKILL at random moments (some while the store is still being
opened), then a fresh process reopens the store and reads its whole state:

* every commit and ack whose return was logged is there (P6);
* the marker equals the state before or after the ack in flight, never a mix
  (P5); an ack that never began left no trace;
* freshness stays exact across incarnations (P4), nothing that never began is
  committed, `all_committed_ids` keeps first-commit order;
* the store always reopens.

A batch in flight that is partly present after the crash is a warning (DESIGN
section 2), not a failure.
"""

from __future__ import annotations

import random
import time
from typing import Dict

from ..certificate import FAILED, PASSED, Counterexample, TierResult
from ..children import raise_if_harness_died
from ..common import Context, in_child
from ..model import Violation
from .check import check_trial
from .trials import TRIALS_PER_STORE, FreshStores, Trial, run_trial, snapshot, trial_refs

PROPERTIES = ["P6 durability", "P5 ack atomicity", "P4 dedup", "reopenable", "all_committed_ids order"]


def run(ctx: Context) -> TierResult:
    """The tier here, or as task shares on another executor (`--executor ray`)."""
    executor = ctx.overrides.get("executor") or "local"
    if executor != "local" and ctx.target.spec:
        from .shares import run_on

        return run_on(executor, ctx)
    return run_in_this_process(ctx)


def run_in_this_process(ctx: Context) -> TierResult:
    t0 = time.monotonic()
    res = TierResult(tier=3, status=PASSED, properties=list(PROPERTIES))
    crashes = int(ctx.overrides.get("crashes") or ctx.budget.t3_crashes)
    rng = random.Random(ctx.seed * 31 + 3)
    seed = rng.randrange(1 << 30)
    counters: Dict[str, int] = {"trials": 0, "kills": 0, "kills_during_open": 0, "kills_inside_op": 0, "stores": 0}
    ctx.progress(f"tier 3 crash: {crashes} trials of SIGKILL inside commits and acks")
    stores = FreshStores(ctx, seed, counters, TRIALS_PER_STORE)
    try:
        for no in range(crashes):
            d, open_time, op_time, model = stores.for_trial(no)
            trial = Trial(no, rng, model, seed, ops_per_worker=rng.randint(2, 8))
            logs = run_trial(ctx, d, trial, rng, op_time, open_time)
            counters["trials"] += 1
            for lg in logs.values():
                if lg["killed"]:
                    counters["kills"] += 1
                    if not lg["ready"]:
                        counters["kills_during_open"] += 1
                    elif lg["began"] - set(lg["done"]):
                        counters["kills_inside_op"] += 1
            ids = sorted(set(trial_refs(trial)))
            old = [s for s in model.order if s in model.refs]
            last_on_store = (no + 1) % TRIALS_PER_STORE == 0 or no + 1 == crashes
            sample = old if last_on_store else rng.sample(old, min(len(old), 20))
            snap = in_child(snapshot, ctx.target, d, ids + sample, workdir=d, timeout=120, name="reopen")
            raise_if_harness_died(snap)
            if not snap["ok"]:
                prop = snap.get("prop") or "reopenable"
                raise Violation(prop, f"after trial {no}: {snap['error']}")
            bad = check_trial(trial, logs, snap["value"], model, res.warnings, counters)
            if bad:
                for prop, text, context in bad[:4]:
                    res.counterexamples.append(
                        Counterexample(
                            tier=3,
                            property=prop,
                            message=f"trial {no}: {text}",
                            steps=[f"{len(model.order)} ids committed and verified in earlier trials on this store"]
                            + context
                            + ["SIGKILL " + ", ".join(f"worker {w}" for w, lg in logs.items() if lg["killed"]),
                               "reopen in a new process and read the state"],
                            reproduce=ctx.reproduce(3, f"--crashes {no + 1}") + "  (kill timing varies between runs)",
                        )
                    )
                break
            if (no + 1) % max(1, crashes // 4) == 0:
                ctx.progress(f"tier 3 crash: {no + 1}/{crashes} trials, {counters['kills']} kills, "
                             f"{counters['kills_inside_op']} inside an operation")
    except Violation as e:
        res.counterexamples.append(
            Counterexample(tier=3, property=e.prop, message=e.message, reproduce=ctx.reproduce(3))
        )
    if res.counterexamples:
        res.status = FAILED
    res.counters = counters
    if counters.get("torn_batches", 0) > 3:
        res.warnings.append(f"{counters['torn_batches']} commit batches in all were torn by crashes")
    stores.remove()
    res.duration_s = time.monotonic() - t0
    return res
