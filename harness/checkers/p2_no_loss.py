"""P2 no loss; unacked work is requeued.

Model
-----
A sample is committed once a `commit` event returned it (or it is in the final
store's `committed_ids`). By the end of a completed run every committed sample
is trained exactly once in the surviving lineage (`lineage.py`; "at most once"
is P1, this checker proves "at least once"). The witness of the final
checkpoint must read 1, never 0, for every planned sample.

At every consumer restart (a `reconcile` event of an incarnation > 0) the set
U of samples committed but not durably acked is known from the history: ids of
commit events returned before the reconcile, minus ids of ack events returned
before it and the ids the reconcile reports acked: `released` (the marker as
read; an ack can apply and its process die before the `ack` event) and
`rolled_forward` (the checkpoint's unacked tail, acked by the reconcile
itself). A store that releases an id it never acked shows up as `lost`. Each sample of U must afterwards be
handled by a consumer: trained again, or skipped as `released` (a reader that
learnt later that it was acked). A sample of U never seen again was dropped at
the restart.

The property only speaks about the end of a run: it is not applicable (valid
None) when `final["outcome"] != "completed"`.

Operations read
---------------
* producer `commit` (ids); consumer `start`, `ack` (ids), `reconcile` (released, rolled_forward,
  requeued), `train` (ids), `read` (id), `skip` (id, reason);
* supervisor `kill` of a store, `powercut` (killed), as P5 reads them;
* the lineage; final `outcome`, `committed_ids`, `planned_ids`, `witness`, `durable_store`.

Anomalies
---------
1. `lost`: a committed sample with no surviving train at completion; names the
   commit event lines and any rolled-back trains of the sample.
2. `witness_loss`: a planned sample whose witness slot is 0 at completion.
3. `not_requeued`: a sample committed but unacked at a consumer restart that
   no consumer trained nor skipped as released after that restart; names the
   restart (incarnation, line, checkpoint step) and the commit line.
4. `requeued_misreported`: a `reconcile` whose `requeued` list leaves out a
   sample committed (its commit returned before the incarnation's `start`,
   and after the last loss of a volatile ledger) and not acked, or lists a
   sample it also reports `released`.
5. `unjustified_skip`: a consumer `skip` that the protocol does not allow: as
   `released` a sample with no durable ack before it (an `ack` event, or a
   `reconcile`'s `released`), as `duplicate` a sample its incarnation had not
   read, or with any other reason. A skipped record is not trained by that
   incarnation: an unjustified skip can drop a sample.
"""

from __future__ import annotations

from itertools import chain

from . import Anomaly, add_durable_acks, by_line, context, finish, fmt_items, ledger_losses, train_anomaly
from .lineage import fmt_trains

PROP = "P2"
NAME = "no_loss_unacked_requeued"


def check(history, final, ctx=None):
    ctx = context(history, final, ctx)
    final = ctx.final
    if final.get("outcome") != "completed":
        return finish(PROP, NAME, [], {"outcome": final.get("outcome")}, applicable=False)
    lin = ctx.lineage
    anomalies = []

    # -- committed ids, with the line of their first returned commit ---------
    commits = ctx.events("producer", "commit")
    first_commit = {}
    for e in reversed(commits):  # C-level updates; the earliest line wins
        first_commit.update(dict.fromkeys(e.get("ids") or (), e.get("line", 0)))
    committed = list(dict.fromkeys(chain.from_iterable(e.get("ids") or () for e in commits)))
    for sid in final.get("committed_ids") or ():
        if sid not in first_commit:
            first_commit[sid] = None
            committed.append(sid)

    # 1. lost
    trains = lin.trains
    lost = [sid for sid in committed if sid not in trains]
    for sid in lost:
        disc = lin.discarded.get(sid, [])
        cl = first_commit[sid]
        anomalies.append(train_anomaly(
            "lost",
            f"sample {sid} committed (commit line {cl if cl is not None else 'none, in the final store'}) "
            f"was never trained in the surviving lineage to checkpoint step {lin.end_step}; "
            f"rolled-back trains: {fmt_trains(disc)}",
            sid, disc, sorted(([cl] if cl else []) + [r[2] for r in disc])))

    # 2. witness_loss
    witness = final.get("witness")
    planned = final.get("planned_ids") or []
    if witness is not None:
        for i, (sid, v) in enumerate(zip(planned, witness)):
            if v == 1.0 or not (-0.5 < float(v) < 0.5):
                continue
            refs = lin.all_trains(sid)
            cl = first_commit.get(sid)
            anomalies.append(train_anomaly(
                "witness_loss",
                f"witness slot {i} (sample {sid}) is {float(v):g} at completion: the final checkpoint "
                f"(step {lin.end_step}) never trained it; commit line {cl}; trains in the history: "
                f"{fmt_trains(refs)}",
                sid, refs, sorted(([cl] if cl else []) + [r[2] for r in refs])))

    restarts = _not_requeued(ctx, anomalies)
    anomalies.extend(_unjustified_skips(ctx))
    counts = {
        "committed": len(committed),
        "trained_in_lineage": len(committed) - len(lost),
        "consumer_restarts": restarts,
        "checkpoint_step": lin.end_step,
    }
    return finish(PROP, NAME, anomalies, counts)


def _not_requeued(ctx, anomalies) -> int:
    """Anomalies 3 and 4: sweep commits, acks and reconciles in order, keeping the pending set;
    returns the number of restarts."""
    last_handled = {}  # sid -> last line of a train or released-skip
    for e in ctx.events("consumer", "train"):
        last_handled.update(dict.fromkeys(e.get("ids") or (), e.get("line", 0)))
    for e in ctx.events("consumer", "skip"):
        if e.get("reason") == "released":
            sid = e.get("id")
            line = e.get("line", 0)
            if line > last_handled.get(sid, 0):
                last_handled[sid] = line
    starts = {(e.get("proc"), e.get("inc", 0)): e.get("line", 0) for e in ctx.events("consumer", "start")}
    losses = [e.get("line", 0) for e in ledger_losses(ctx, bool(ctx.final.get("durable_store", True)))]
    pending = {}  # sid -> commit line
    restarts = 0
    for e in _ordered(ctx):
        ev = e.get("ev")
        line = e.get("line", 0)
        if ev == "commit":
            for sid in e.get("ids") or ():
                pending.setdefault(sid, line)
        elif ev == "ack":
            for sid in e.get("ids") or ():
                pending.pop(sid, None)
        else:  # reconcile: what the marker says is acked is no longer pending
            acked = set(e.get("released") or ())
            acked.update(e.get("rolled_forward") or ())
            pending = {sid: cl for sid, cl in pending.items() if sid not in acked}
            since = max((x for x in losses if x < line), default=0)
            anomalies.extend(_misreported(e, pending, since, starts.get((e.get("proc"), e.get("inc", 0)))))
            if int(e.get("inc", 0)) == 0:
                continue
            restarts += 1
            inc = f"{e.get('proc')}#{e.get('inc', 0)}"
            for sid, cl in pending.items():
                if last_handled.get(sid, 0) > line:
                    continue
                anomalies.append(Anomaly(
                    "not_requeued",
                    f"sample {sid} was committed (line {cl}) and not acked when {inc} restarted "
                    f"(reconcile line {line}, checkpoint step {e.get('checkpoint_step')}), "
                    f"but no consumer trained it or skipped it as released after that restart",
                    sample_ids=[sid], steps=[int(e.get("checkpoint_step") or 0)], incarnations=[inc],
                    lines=[cl, line]))
    return restarts


def _misreported(rec, pending, since, start_line):
    """Anomaly 4 at one reconcile: its `requeued` list against the history (only commits returned before
    its incarnation's `start`, which the reconcile's read of the store follows, and after the last loss of
    a volatile ledger at line `since`)."""
    if "requeued" not in rec or rec.get("layout") == "private" or start_line is None:
        return []
    requeued = set(rec.get("requeued") or ())
    released = set(rec.get("released") or ())
    missing = [sid for sid, cl in pending.items() if since < cl < start_line and sid not in requeued]
    both = sorted(requeued & released)
    if not missing and not both:
        return []
    return [Anomaly(
        "requeued_misreported",
        f"the reconcile of {rec.get('proc')}#{rec.get('inc', 0)} at line {rec.get('line')} reports requeued "
        f"{fmt_items(sorted(requeued))}; committed and unacked but not requeued: {fmt_items(missing)}; "
        f"requeued and released: {fmt_items(both)}",
        sample_ids=missing + both, incarnations=[f"{rec.get('proc')}#{rec.get('inc', 0)}"],
        lines=[rec.get("line", 0)] + [pending[sid] for sid in missing])]


def _unjustified_skips(ctx):
    """Anomaly 5: skips that are neither of a released sample nor of a second copy."""
    out = []
    acked = set()
    read = {}  # (proc, inc) -> ids read
    for e in ctx.events("consumer", "reconcile", "ack", "read", "skip"):
        ev, key = e.get("ev"), (e.get("proc"), e.get("inc", 0))
        if add_durable_acks(acked, e):
            continue
        if ev == "read":
            read.setdefault(key, set()).add(e.get("id"))
        else:
            sid, reason = e.get("id"), e.get("reason")
            if reason == "released" and sid in acked or reason == "duplicate" and sid in read.get(key, ()):
                continue
            out.append(Anomaly(
                "unjustified_skip",
                f"{e.get('proc')}#{e.get('inc', 0)} skipped sample {sid} (record {e.get('pos')}, line "
                f"{e.get('line')}) as {reason!r}: " + ("no durable ack of it before" if reason == "released" else
                                                       "it had not read it before" if reason == "duplicate" else
                                                       "not a reason the protocol has"),
                sample_ids=[sid], incarnations=[f"{e.get('proc')}#{e.get('inc', 0)}"], lines=[e.get("line", 0)]))
    return out


def _ordered(ctx):
    out = (ctx.events("producer", "commit") + ctx.events("consumer", "ack")
           + ctx.events("consumer", "reconcile"))
    out.sort(key=by_line)
    return out
