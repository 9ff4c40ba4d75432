"""P6 durability: what returned before a crash is there after the restart.

Model
-----
A durable store (`final["durable_store"]` True) keeps every transaction that
returned: a `commit` event's ids are in the store's committed set for ever;
an `ack` event's ids are in the marker's `acked` set for ever and the marker's
`global_step` is never below the step of a returned ack. A reconcile that rolls
a checkpoint's unacked tail forward writes an `ack` event (`roll_forward`)
just before its `reconcile`: a returned ack for every later reader, not for
that reconcile, which read the marker before rolling forward. Every later
reader sees them: each restart's `reconcile` (`marker_step`,
`marker_acked_count`) and the final state (`committed_ids`, `marker`).

An ack or commit of a networked store that failed on the network and never
returned (`store_call` ending `indeterminate` or `failed`) has no `ack` or
`commit` event: nothing is demanded of it, whichever way it went.

Not applicable (valid None) to a volatile store, or when the final store
could not be read (`committed_ids` None).

Operations read
---------------
* producer `commit` (ids); consumer `ack` (step, ids), `reconcile`
  (marker_step, checkpoint_step, marker_acked_count, rolled_forward);
* final `committed_ids`, `marker`, `durable_store`.

Anomalies
---------
1. `lost_commit`: ids of a returned commit missing from the final committed
   set; one anomaly per commit event.
2. `lost_ack`: ids of a returned ack (or a reconcile's `rolled_forward`)
   missing from the final marker's acked set; one anomaly per event.
3. `step_regressed`: the final marker's global_step is lower than the step of
   a returned ack (names the ack with the highest step).
4. `lost_ack_at_restart`: a reconcile read a marker_step lower than a
   previously returned ack's step, or fewer acked ids (`released` minus
   `rolled_forward`, else `marker_acked_count`) than the acks returned before
   it hold.
"""

from __future__ import annotations

from . import Anomaly, by_line, context, finish, fmt_items, incarnation

PROP = "P6"
NAME = "durability"


def check(history, final, ctx=None):
    ctx = context(history, final, ctx)
    final = ctx.final
    committed = final.get("committed_ids")
    if not final.get("durable_store", True) or committed is None:
        return finish(PROP, NAME, [], {"durable_store": final.get("durable_store"),
                                       "store_readable": committed is not None}, applicable=False)
    anomalies = []
    committed = set(committed)
    commits = ctx.events("producer", "commit")
    for e in commits:
        _lost(anomalies, "lost_commit", e, e.get("ids"), committed, lambda missing: (
            f"commit by {incarnation(e)} at line {e.get('line')} returned, but the final store lacks "
            f"{len(missing)} of its ids: {fmt_items(missing)}"))

    acks = ctx.events("consumer", "ack")
    recs = ctx.events("consumer", "reconcile")
    marker = final.get("marker")
    if marker is not None:
        m = set(marker.get("acked") or ())
        for e in acks:
            _lost(anomalies, "lost_ack", e, e.get("ids"), m, lambda missing: (
                f"ack at step {e.get('step')} by {incarnation(e)} at line {e.get('line')} returned, but the "
                f"final marker lacks {len(missing)} of its ids: {fmt_items(missing)}"),
                step=lambda e: int(e.get("step", 0)))
        for e in recs:
            _lost(anomalies, "lost_ack", e, e.get("rolled_forward"), m, lambda missing: (
                f"reconcile by {incarnation(e)} at line {e.get('line')} rolled forward checkpoint step "
                f"{e.get('checkpoint_step')}, but the final marker lacks {fmt_items(missing)}"),
                step=lambda e: int(e.get("checkpoint_step") or 0))

    # -- steps: sweep acks and reconciles in order --------------------------
    # A restarted consumer's roll-forward ack is emitted just before its own
    # reconcile: it belongs to that reconcile, not to what the reconcile read.
    best = None  # (step, event) of the returned ack with the highest step
    acked = set()
    reconciled = set()
    prelude = {}
    for e in sorted(acks + recs, key=by_line):
        key = (e.get("proc"), e.get("inc"))
        if e.get("ev") == "ack":
            if key in reconciled:
                best = _take(best, e, acked)
            else:
                prelude.setdefault(key, []).append(e)
            continue
        ms = e.get("marker_step")
        n = e.get("marker_acked_count")
        released = e.get("released")
        n_read = len(set(released).difference(e.get("rolled_forward") or ())) if released is not None else n
        where = f"reconcile by {incarnation(e)} at line {e.get('line')}"
        if best is not None and (ms is None or int(ms) < best[0]):
            b = best[1]
            anomalies.append(Anomaly(
                "lost_ack_at_restart",
                f"{where} read marker_step {ms}, but the ack at step {best[0]} by {incarnation(b)} had returned "
                f"at line {b.get('line')} (ids {fmt_items(b.get('ids') or ())})",
                sample_ids=list(b.get("ids") or ()), steps=[best[0]] + ([int(ms)] if ms is not None else []),
                incarnations=list(dict.fromkeys([incarnation(b), incarnation(e)])),
                lines=[b.get("line", 0), e.get("line", 0)]))
        elif n_read is not None and int(n_read) < len(acked):
            missing = sorted(acked.difference(released)) if released is not None else []
            anomalies.append(Anomaly(
                "lost_ack_at_restart",
                f"{where} read {n_read} acked ids, but returned acks before it hold {len(acked)} ids "
                f"(last returned ack step {best[0] if best else None} by "
                f"{incarnation(best[1]) if best else None} at line {best[1].get('line') if best else None}); "
                f"missing {fmt_items(missing)}",
                sample_ids=missing, steps=[best[0]] if best else [],
                incarnations=list(dict.fromkeys(([incarnation(best[1])] if best else []) + [incarnation(e)])),
                lines=([best[1].get("line", 0)] if best else []) + [e.get("line", 0)]))
        reconciled.add(key)
        for a in prelude.pop(key, ()):
            best = _take(best, a, acked)
    for pre in prelude.values():  # acks of an incarnation that never reconciled
        for a in pre:
            best = _take(best, a, acked)
    if marker is not None and best is not None:
        gs = marker.get("global_step")
        if gs is None or int(gs) < best[0]:
            b = best[1]
            anomalies.append(Anomaly(
                "step_regressed",
                f"final marker global_step {gs} is below step {best[0]} of the ack by {incarnation(b)} "
                f"that returned at line {b.get('line')}",
                sample_ids=list(b.get("ids") or b.get("rolled_forward") or ()),
                steps=[best[0]] + ([int(gs)] if gs is not None else []),
                incarnations=[incarnation(b)], lines=[b.get("line", 0)]))
    counts = {"commit_events": len(commits), "ack_events": len(acks), "reconciles": len(recs),
              "committed": len(committed), "final_marker": marker is not None,
              "max_returned_step": best[0] if best else None}
    return finish(PROP, NAME, anomalies, counts)


def _lost(anomalies, kind, e, ids, have, text, step=None):
    """A `kind` anomaly for the ids of event `e` that `have` lacks, worded by `text(missing)`; `step(e)` its step."""
    missing = [x for x in (ids or ()) if x not in have]
    if missing:
        anomalies.append(Anomaly(kind, text(missing), sample_ids=missing, steps=[step(e)] if step else [],
                                 incarnations=[incarnation(e)], lines=[e.get("line", 0)]))


def _take(best, a, acked):
    acked.update(a.get("ids") or ())
    step = int(a.get("step") or 0)
    return (step, a) if best is None or step > best[0] else best
