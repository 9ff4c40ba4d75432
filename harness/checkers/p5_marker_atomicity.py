"""P5 ack atomicity: nobody ever sees part of one ack transaction.

Model
-----
The durable marker is `{acked: set, global_step, optimizer_durable}`;
`record_train_ack(ids, global_step=s)` is one transaction
`acked |= ids; global_step = s`: applied whole or not at all, never in part
(ids without the step, the step without the ids, or some ids only). The
transactions the history knows:

* a returned ack: an `ack` event (`step`, `ids`); applied before its line. A
  restarted consumer's roll-forward is an `ack` event too, emitted by the new
  incarnation just before its `reconcile`; it belongs to that reconcile;
* an interrupted ack: a consumer `checkpoint` event at step s with a non-empty
  `unacked` list T whose incarnation wrote no `ack` at step s after it. The
  consumer acks exactly T at step s right after the checkpoint, so a crash
  leaves that transaction applied whole or not at all. An ack of a networked
  store that failed on the network and never returned (`store_call` ending
  `indeterminate` or `failed`, then the process failed closed) is one too.

Readers of the marker in the history are each restart's `reconcile` (the
marker as read is `released` minus `rolled_forward`, with `marker_step`) and
the final state (`final["marker"]`). The checks, precisely:

1. final marker M, returned ack with ids S: `S ∩ M` is empty or all of S
   (S lost entirely is a durability failure, P6, not a torn ack);
2. final marker M, interrupted ack T: with R = T minus the ids any returned
   ack (roll-forwards included) also acked, `R ∩ M` is empty or all of R;
3. reconcile reading (A, m): every ack returned since the previous reconcile,
   ids S: `S ∩ A` is empty or all of S;
4. reconcile reading (A, m), each interrupted ack T at step s of an earlier
   incarnation, R as in 2 (acks returned before the reconcile): if m == s the
   transaction applied, so R ⊆ A; if m < s (or None) it did not, so R ∩ A is
   empty. A reconcile resolves the interrupted acks of its own process;
5. final marker M holding a step or ids: its `optimizer_durable` flag is the
   flag of the last ack transaction applied. When every `ack` event of the
   history says `durable` (the protocol acks only after a durable checkpoint,
   roll-forwards included), the flag must be true.

With a volatile store (`final["durable_store"]` False) a supervisor kill of a
`store*` target, or a power cut that killed the store server, starts an empty
ledger: the sweep for 3 and 4 restarts empty.

Operations read
---------------
* consumer `ack` (step, ids), `checkpoint` (step, unacked), `reconcile`
  (marker_step, released, rolled_forward);
* consumer `ack` (durable);
* supervisor `kill` of the store server, `powercut` (killed); final `marker`, `durable_store`.

Anomalies
---------
1. `torn_ack`: a marker (the final one, or one read by a reconcile) holding
   part of one ack transaction; names the transaction's ids (present, then
   missing), its step, incarnation and line, and the reader.
2. `marker_not_optimizer_durable`: the final marker holds acks but its
   `optimizer_durable` flag is not true although every ack in the history was
   durable (check 5); names the marker's step and the last ack's line.
"""

from __future__ import annotations

from . import Anomaly, by_line, context, finish, fmt_items, incarnation, ledger_losses

PROP = "P5"
NAME = "ack_atomicity"


def check(history, final, ctx=None):
    ctx = context(history, final, ctx)
    final = ctx.final
    durable = bool(final.get("durable_store", True))
    acks = ctx.events("consumer", "ack")
    ckpts = ctx.events("consumer", "checkpoint")
    recs = ctx.events("consumer", "reconcile")
    anomalies = []

    ack_steps = {}
    for a in acks:
        ack_steps.setdefault((a.get("proc"), a.get("inc")), set()).add(a.get("step"))
    interrupted = [c for c in ckpts
                   if c.get("unacked") and c.get("step") not in ack_steps.get((c.get("proc"), c.get("inc")), ())]
    covered = set()
    for a in acks:
        covered.update(a.get("ids") or ())

    # -- final marker (checks 1, 2) -----------------------------------------
    marker = final.get("marker")
    if marker is not None:
        m = set(marker.get("acked") or ())
        reader = f"the final marker (global_step {marker.get('global_step')})"
        anomalies.extend(_torn_acks(acks, m, reader))
        for c in interrupted:
            r = [x for x in c.get("unacked") if x not in covered]
            present = [x for x in r if x in m]
            if present and len(present) < len(r):
                anomalies.append(_torn(c, present, [x for x in r if x not in m], reader, interrupted=True))
        anomalies.extend(_flag_not_durable(marker, acks))

    # -- reconcile readers (checks 3, 4) --------------------------------------
    kills = ledger_losses(ctx, durable)
    stream = sorted(acks + recs + interrupted + kills, key=by_line)
    reconciled = set()  # (proc, inc) whose reconcile has been seen
    prelude = {}  # (proc, inc) -> acks emitted before its reconcile (roll-forward)
    acked_ev = set()  # ids of returned acks so far (current ledger)
    since_last = []  # acks returned since the previous reconcile
    open_txns = []  # interrupted acks (checkpoint events) not yet resolved
    n_readers = 0
    for e in stream:
        ev = e.get("ev")
        key = (e.get("proc"), e.get("inc"))
        if ev == "ack":
            if key in reconciled:
                acked_ev.update(e.get("ids") or ())
                since_last.append(e)
            else:
                prelude.setdefault(key, []).append(e)
        elif ev == "checkpoint":
            open_txns.append(e)
        elif ev in ("kill", "powercut"):  # the volatile ledger is gone
            acked_ev, since_last, open_txns = set(), [], []
        else:  # reconcile
            released = e.get("released")
            if released is not None:
                n_readers += 1
                seen = set(released).difference(e.get("rolled_forward") or ())
                ms = e.get("marker_step")
                ms = None if ms is None else int(ms)
                rd = f"the marker read by the reconcile of {incarnation(e)} at line {e.get('line')} (step {ms})"
                anomalies.extend(_torn_acks(since_last, seen, rd, reader_event=e))
                for c in open_txns:
                    if (c.get("proc"), c.get("inc")) == key:
                        continue
                    s_step = int(c.get("step", 0))
                    r = [x for x in c.get("unacked") if x not in acked_ev]
                    present = [x for x in r if x in seen]
                    if ms is not None and ms == s_step and len(present) < len(r):
                        anomalies.append(_torn(c, present, [x for x in r if x not in seen], rd, reader_event=e,
                                               interrupted=True, why=f"step {s_step} without all its ids"))
                    elif (ms is None or ms < s_step) and present:
                        anomalies.append(_torn(c, present, [x for x in r if x not in seen], rd, reader_event=e,
                                               interrupted=True, why=f"ids without step {s_step}"))
            open_txns = [c for c in open_txns if c.get("proc") != key[0] or c.get("inc") == key[1]]
            since_last = []
            reconciled.add(key)
            for a in prelude.pop(key, ()):
                acked_ev.update(a.get("ids") or ())
    counts = {"returned_acks": len(acks), "interrupted_acks": len(interrupted), "reconcile_readers": n_readers,
              "final_marker": marker is not None}
    return finish(PROP, NAME, anomalies, counts)


def _flag_not_durable(marker, acks):
    """Check 5: a final marker with acks whose optimizer_durable flag is not true, all acks durable."""
    if not acks or not (marker.get("acked") or marker.get("global_step") is not None):
        return []
    if marker.get("optimizer_durable") or not all(a.get("durable", True) for a in acks):
        return []
    last = max(acks, key=by_line)
    return [Anomaly(
        "marker_not_optimizer_durable",
        f"the final marker (global_step {marker.get('global_step')}) has optimizer_durable "
        f"{marker.get('optimizer_durable')!r}, but every ack in the history was durable (the last: step "
        f"{last.get('step')} by {incarnation(last)} line {last.get('line')})",
        steps=[int(marker.get("global_step") or 0)], incarnations=[incarnation(last)], lines=[last.get("line", 0)])]


def _torn_acks(acks, seen, reader, reader_event=None):
    """torn_ack anomalies for the returned acks of which the read `seen` holds some ids but not all."""
    out = []
    for a in acks:
        s = a.get("ids") or []
        if seen.issuperset(s):
            continue
        present = [x for x in s if x in seen]
        if present:
            out.append(_torn(a, present, [x for x in s if x not in seen], reader, reader_event=reader_event))
    return out


def _torn(txn, present, missing, reader, reader_event=None, interrupted=False, why=None):
    what = (f"interrupted ack at step {txn.get('step')} (checkpoint by {incarnation(txn)} line {txn.get('line')})"
            if interrupted else f"ack at step {txn.get('step')} by {incarnation(txn)} line {txn.get('line')}")
    incs = [incarnation(txn)] + ([incarnation(reader_event)] if reader_event else [])
    lines = [txn.get("line", 0)] + ([reader_event.get("line", 0)] if reader_event else [])
    return Anomaly(
        "torn_ack",
        f"{reader} holds part of the {what}{' (' + why + ')' if why else ''}: present {fmt_items(present)}; "
        f"missing {fmt_items(missing)}",
        sample_ids=list(present) + list(missing), steps=[int(txn.get("step", 0))],
        incarnations=list(dict.fromkeys(incs)), lines=lines)
