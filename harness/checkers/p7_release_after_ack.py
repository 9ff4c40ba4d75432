"""P7 feature lifetime: a blob is deleted only after its sample is durably acked.

Model
-----
The producer writes one feature blob per sample; the consumer may delete it
(`release_features`, ids) only once the sample's training is durable: after an
`ack` event with `durable` true (missing counts as true) that contains it, or
after a reconcile that reported it acked (`released` or `rolled_forward`).
Deleting earlier loses the features a restart needs to retrain a rolled-back
sample. At the end of a completed run no blob of an acked sample remains.

Operations read
---------------
* consumer `ack` (ids, durable), `reconcile` (released, rolled_forward),
  `release_features` (ids);
* final `features_left`, `marker`, `outcome`.

Anomalies
---------
1. `released_before_ack`: a `release_features` event deleting ids that no
   earlier durable ack (or reconcile) covered; one anomaly per event, naming
   the ids, the releasing incarnation and line, and the later ack if any.
2. `features_leaked`: a completed run whose `features_left` holds blobs of
   acked samples; names the ids and the acks that covered them.
"""

from __future__ import annotations

from . import Anomaly, by_line, context, finish, fmt_items, incarnation

PROP = "P7"
NAME = "feature_lifetime"


def check(history, final, ctx=None):
    ctx = context(history, final, ctx)
    final = ctx.final
    acks = ctx.events("consumer", "ack")
    recs = ctx.events("consumer", "reconcile")
    rels = ctx.events("consumer", "release_features")
    anomalies = []
    durable_acked = set()  # ids covered by a durable ack event so far
    nondurable = {}  # sid -> line of a non-durable ack
    recs_seen = []  # reconcile events so far; their id lists become sets only when needed
    rec_sets = {}  # index in recs_seen -> set(released + rolled_forward)
    bad = []  # (release event, ids)
    n_released = 0
    for e in sorted(acks + recs + rels, key=by_line):
        ev = e.get("ev")
        if ev == "ack":
            ids = e.get("ids") or ()
            if e.get("durable", True) is not False:
                durable_acked.update(ids)
            else:
                for sid in ids:
                    nondurable.setdefault(sid, e.get("line", 0))
        elif ev == "reconcile":
            recs_seen.append(e)
        else:
            ids = e.get("ids") or ()
            n_released += len(ids)
            early = [sid for sid in ids if sid not in durable_acked]
            if early:
                early = [sid for sid in early if not _reconciled(sid, recs_seen, rec_sets)]
            if early:
                bad.append((e, early))
    ack_line = _ack_lines(acks) if bad or final.get("features_left") else {}
    for e, early in bad:
        later = list(dict.fromkeys(ack_line[s] for s in early if s in ack_line))
        nd = [s for s in early if s in nondurable and nondurable[s] < e.get("line", 0)]
        note = f"; only a non-durable ack covered {fmt_items(nd)}" if nd else ""
        anomalies.append(Anomaly(
            "released_before_ack",
            f"release_features by {incarnation(e)} at line {e.get('line')} deleted blobs of {fmt_items(early)} "
            f"before any durable ack of them{note}; later acks: "
            f"{fmt_items([f'step {st} by {inc} line {ln}' for ln, st, inc in later], 5)}",
            sample_ids=early, steps=sorted({st for _, st, _ in later}),
            incarnations=list(dict.fromkeys([incarnation(e)] + [inc for _, _, inc in later])),
            lines=[e.get("line", 0)] + sorted({ln for ln, _, _ in later})))
    left = list(final.get("features_left") or ())
    if final.get("outcome") == "completed" and left:
        marker = final.get("marker") or {}
        m = set(marker.get("acked") or ())
        leaked = [s for s in left if s in m or s in durable_acked or s in nondurable
                  or _reconciled(s, recs_seen, rec_sets)]
        if leaked:
            info = list(dict.fromkeys(ack_line[s] for s in leaked if s in ack_line))
            anomalies.append(Anomaly(
                "features_leaked",
                f"run completed with {len(leaked)} feature blobs of acked samples left: {fmt_items(leaked)}; "
                f"their acks: {fmt_items([f'step {st} by {inc} line {ln}' for ln, st, inc in info], 5)}",
                sample_ids=leaked, steps=sorted({st for _, st, _ in info}),
                incarnations=list(dict.fromkeys(inc for _, _, inc in info)),
                lines=sorted({ln for ln, _, _ in info})))
    counts = {"release_events": len(rels), "released_ids": n_released, "features_left": len(left)}
    return finish(PROP, NAME, anomalies, counts)


def _reconciled(sid, recs_seen, rec_sets) -> bool:
    """Whether a reconcile seen so far reported `sid` acked (released or rolled forward)."""
    for i in range(len(recs_seen) - 1, -1, -1):
        st = rec_sets.get(i)
        if st is None:
            r = recs_seen[i]
            st = rec_sets[i] = set(r.get("released") or ()) | set(r.get("rolled_forward") or ())
        if sid in st:
            return True
    return False


def _ack_lines(acks):
    """sid -> (line, step, incarnation) of its first ack; only built when a message needs it."""
    out = {}
    for a in reversed(acks):
        out.update(dict.fromkeys(a.get("ids") or (), (a.get("line", 0), int(a.get("step", 0)), incarnation(a))))
    return out
