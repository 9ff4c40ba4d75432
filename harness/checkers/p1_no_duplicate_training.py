"""P1 no duplicate training.

Model
-----
The consumer's optimizer lineage is the chain of steps that leads to the final
checkpoint (see `lineage.py`): trains rolled back by a restart do not count.
In that lineage every sample id is trained at most once. Independently of any
log, the final checkpoint's witness vector `w` (one slot per planned sample,
`w[i]` = number of times sample `final["planned_ids"][i]` was trained in the
lineage) must hold 0 or 1 at every slot. This holds whatever the outcome: a
fail-closed run must still show no duplicate.

Operations read
---------------
* consumer `train` (step, ids), `checkpoint` (step), `reconcile`
  (checkpoint_step), via the lineage;
* final `checkpoint_step`, `witness`, `planned_ids`.

Anomalies
---------
1. `duplicate_in_lineage`: a sample with two or more surviving trains; names
   every surviving train (incarnation, step, line).
2. `witness_duplicate`: a witness slot > 1.5, i.e. the checkpoint shows the
   sample trained twice or more; names the sample, its value and the trains the
   history shows for it.
3. `witness_corrupt`: a witness slot that is not within 1e-3 of a non-negative
   integer (or is not finite), or a witness shorter than `planned_ids`; the
   witness cannot be trusted.

With `final["witness"]` None only the lineage check (1) runs.
"""

from __future__ import annotations

import math

from . import Anomaly, context, finish, fmt_items, train_anomaly
from .lineage import fmt_trains

PROP = "P1"
NAME = "no_duplicate_training"
TOLERANCE = 1e-3


def _lines(refs):
    return sorted({r[2] for r in refs})


def check(history, final, ctx=None):
    ctx = context(history, final, ctx)
    final = ctx.final
    lin = ctx.lineage
    anomalies = []
    for sid, refs in lin.trains.items():
        if len(refs) > 1:
            anomalies.append(train_anomaly(
                "duplicate_in_lineage",
                f"sample {sid} trained {len(refs)} times in the surviving lineage "
                f"(to checkpoint step {lin.end_step}): {fmt_trains(refs)}",
                sid, refs, _lines(refs)))
    witness = final.get("witness")
    planned = final.get("planned_ids") or []
    n_dup_w = 0
    if witness is not None:
        if len(witness) < len(planned):
            anomalies.append(Anomaly(
                "witness_corrupt",
                f"witness has {len(witness)} slots for {len(planned)} planned samples; samples without a slot: "
                f"{fmt_items(planned[len(witness):])}",
                sample_ids=list(planned[len(witness):])))
        for i, (sid, v) in enumerate(zip(planned, witness)):
            if v == 1.0 or v == 0.0:
                continue
            v = float(v)
            finite = math.isfinite(v)
            corrupt = not finite or v < -TOLERANCE or abs(v - round(v)) > TOLERANCE
            if not corrupt and not v > 1.5:
                continue
            refs = lin.all_trains(sid)
            where = (f"surviving trains: {fmt_trains(lin.trains.get(sid, []))}; "
                     f"rolled-back trains: {fmt_trains(lin.discarded.get(sid, []))}")
            if corrupt:
                anomalies.append(train_anomaly(
                    "witness_corrupt",
                    f"witness slot {i} (sample {sid}) is {v!r}, not an integer count; {where}",
                    sid, refs, _lines(refs)))
            if finite and v > 1.5:
                n_dup_w += 1
                anomalies.append(train_anomaly(
                    "witness_duplicate",
                    f"witness slot {i} (sample {sid}) is {v:g}: the final checkpoint (step {lin.end_step}) "
                    f"trained it {round(v)} times; {where}",
                    sid, refs, _lines(refs)))
    counts = {
        "samples_trained": len(lin.trains),
        "surviving_train_events": lin.surviving_train_events,
        "discarded_train_events": lin.discarded_train_events,
        "checkpoint_step": lin.end_step,
        "witness_checked": witness is not None,
        "witness_duplicates": n_dup_w,
    }
    if lin.unexplained:
        counts["lineage_unexplained"] = list(lin.unexplained)
    return finish(PROP, NAME, anomalies, counts)
