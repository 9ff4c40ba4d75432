"""Tier 3's crash trials as task shares on another executor (Ray: `certify --executor ray`).

Each share loads the store from its import path where it runs, uses the records
of the certification, its own scratch dir and the seed `seed*1000+i`, and runs
tier 3 locally there; the shares' counterexamples, warnings and counters are
merged. A share that is lost (its worker or node died) is a harness error,
never a pass.
"""

from __future__ import annotations

import time
from typing import Dict

from .. import tier3_crash as tier3
from ..certificate import PASSED, TierResult
from ..common import Context


def _share(args) -> TierResult:
    """One share of the crash trials where it runs (a Ray worker): the store loaded from
    its import path, the records the certification uses, its own scratch dir and seed."""
    import shutil
    import tempfile

    from .. import records as _records
    from ..loader import load

    spec, records, profile, budget, seed, crashes, repro_prefix = args
    d = tempfile.mkdtemp(prefix="certify-tier3-")
    try:
        target = load(spec, probe_dir=d)
        target.records = records
        ctx = Context(target=target, profile=profile, budget=budget, seed=seed, workroot=d,
                      repro_prefix=repro_prefix, overrides={"crashes": crashes})
        with _records.using(records):
            return tier3.run_in_this_process(ctx)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def run_on(executor: str, ctx: Context) -> TierResult:
    """The crash trials split into `jobs` shares (seeds seed*1000+i) on `executor`
    (harness.executors.map_trials); a lost share is a harness error, never a pass."""
    from harness.executors import map_shares, split_shares

    t0 = time.monotonic()
    crashes = int(ctx.overrides.get("crashes") or ctx.budget.t3_crashes)
    shares = [(ctx.target.spec, ctx.target.records, ctx.profile, ctx.budget, s, n, ctx.repro_prefix)
              for n, s in split_shares(crashes, int(ctx.overrides.get("jobs") or 2), ctx.seed)]
    jobs = len(shares)
    res = TierResult(tier=3, status=PASSED, properties=list(tier3.PROPERTIES))
    counters: Dict[str, int] = {}
    ctx.progress(f"tier 3 crash: {crashes} trials in {jobs} shares on {executor}")
    for item, part in map_shares(_share, shares, executor, what="tier 3 crash trials", jobs=jobs,
                                 address=ctx.overrides.get("address")):
        res.counterexamples.extend(part.counterexamples)
        res.warnings.extend(part.warnings)
        for k, v in (part.counters or {}).items():
            counters[k] = counters.get(k, 0) + v
        if part.status != PASSED:
            res.status = part.status if res.status == PASSED else res.status
        ctx.progress(f"tier 3 crash: share seed {item[4]} {part.status} on {executor}")
    res.counters = counters
    res.duration_s = time.monotonic() - t0
    return res

