"""Sometimes-conditions: situations a run should reach at least once, recognised in its history.

A campaign that never reached a situation has not tested the code that
handles it, however green it is. Each condition below is counted in one run;
a scenario may require some of them (`expect.sometimes`), and a campaign that
never saw one is inconclusive.

Abstract model: the merged history of one run (docs/history.md) and its final
state; a consumer incarnation `k > 0` is a restart after its predecessor
ended (crashed, killed, or stopped by a power cut).

Operations read: the consumer's `read`, `skip` (with `reason`), `reconcile`
(`requeued`, `rolled_forward`, `marker_step`, `checkpoint_step`),
`fail_closed`; the producer's `pause` and `commit` (`fresh`); the
supervisor's `powercut` (`unsynced_writes_dropped`); the final state's
`powerloss` (the simulation's per-cut statistics).

Conditions (count per run):

1. `redelivery_after_crash` - a restarted consumer meets (reads or skips) a
   channel record whose sample an earlier incarnation had read;
2. `requeue_of_unacked` - a restarted consumer's reconcile requeues a sample
   an earlier incarnation had read (taken, not durably acked);
3. `producer_blocked_at_high_watermark` - the producer paused at the high
   watermark (backpressure engaged);
4. `restart_from_checkpoint_ahead_of_ledger` - a consumer restarted from a
   checkpoint newer than the ledger's step (killed between checkpoint and
   ack): reconcile rolled the ack forward;
5. `restart_from_checkpoint_behind_ledger` - a consumer restarted from a
   checkpoint older than the ledger's step (a power cut reverted it): it must
   fail closed;
6. `unsynced_write_dropped` - a power cut dropped at least one write that was
   not synced;
7. `duplicate_rejected` - the consumer's dedup skipped a second copy: a
   `skip` with reason `duplicate` (taken already in this incarnation), or
   with reason `released` of a sample that this incarnation had met before
   or that the channel holds at another position too (a restart re-reading
   the records its predecessor trained is a redelivery, not a duplicate);
8. `commit_not_fresh` - the store's dedup answered "already committed" to a
   commit (a producer re-committing after its restart).
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, Set, Tuple

CONDITIONS: Dict[str, str] = {
    "redelivery_after_crash": "a restarted consumer met a record an earlier incarnation had read",
    "requeue_of_unacked": "a restart requeued a sample an earlier incarnation had read but not acked",
    "producer_blocked_at_high_watermark": "the producer paused at the high watermark",
    "restart_from_checkpoint_ahead_of_ledger": "a restart from a checkpoint newer than the ledger (roll forward)",
    "restart_from_checkpoint_behind_ledger": "a restart from a checkpoint older than the ledger (fail closed)",
    "unsynced_write_dropped": "a power cut dropped an unsynced write",
    "duplicate_rejected": "the consumer's dedup skipped a second copy of a sample",
    "commit_not_fresh": "the store's dedup answered 'already committed'",
}


def sometimes_counts(events: Iterable[Dict[str, Any]], final: Dict[str, Any]) -> Dict[str, int]:
    """How often each condition of CONDITIONS occurred in one run (0 for the ones that did not)."""
    out = {c: 0 for c in CONDITIONS}
    read_by: Dict[str, int] = {}  # sample id -> first consumer incarnation that read it
    met: Dict[str, Tuple[int, int]] = {}  # sample id -> (incarnation, position) it was last met at
    cut_stats = False
    for e in events:
        ev, proc = e.get("ev"), str(e.get("proc", ""))
        if proc == "producer":
            if ev == "pause":
                out["producer_blocked_at_high_watermark"] += 1
            elif ev == "commit" and not all(e.get("fresh") or [True]):
                out["commit_not_fresh"] += 1
            continue
        if proc == "supervisor":
            if ev == "powercut" and "unsynced_writes_dropped" in e:
                cut_stats = True
                out["unsynced_write_dropped"] += 1 if (e.get("unsynced_writes_dropped") or 0) > 0 else 0
            continue
        if not (proc == "consumer" or proc.startswith("consumer.")):
            continue
        inc = int(e.get("inc", 0))
        if ev in ("read", "skip"):
            sid = e.get("id")
            first = read_by.get(sid)
            if first is not None and first < inc:
                out["redelivery_after_crash"] += 1
            if ev == "read" and first is None:
                read_by[sid] = inc
            last = met.get(sid)
            if ev == "skip" and (e.get("reason") == "duplicate" or last is not None and (
                    last[0] == inc or last[1] != e.get("pos"))):
                out["duplicate_rejected"] += 1
            met[sid] = (inc, e.get("pos"))
        elif ev == "reconcile":
            _reconcile(e, inc, read_by, out)
        elif ev == "fail_closed" and e.get("reason") == "checkpoint_behind_ledger":
            out["restart_from_checkpoint_behind_ledger"] += 1
    if not cut_stats:  # the simulation keeps its per-cut statistics beside the history
        out["unsynced_write_dropped"] += sum(1 for c in final.get("powerloss") or ()
                                             if (c.get("unsynced_writes_dropped") or 0) > 0)
    return out


def _reconcile(e: Dict[str, Any], inc: int, read_by: Dict[str, int], out: Dict[str, int]) -> None:
    earlier: Set[str] = {sid for sid, k in read_by.items() if k < inc}
    if inc > 0 and earlier.intersection(e.get("requeued") or ()):
        out["requeue_of_unacked"] += 1
    ck, mk = e.get("checkpoint_step"), e.get("marker_step")
    if e.get("rolled_forward") or (ck is not None and ck > (mk or 0)):
        out["restart_from_checkpoint_ahead_of_ledger"] += 1
