"""The protocol phase each fault of a run hit, read from the history.

Abstract model. A sample moves through the pipeline in order: committed in
the store, published in the channel, trained in the model, checkpointed, acked
in the ledger, released (features deleted, consumed count moved). A restarted
consumer first reconciles its checkpoint with the ledger. A process's phase
is how far its current unit of work (the producer's batch, the consumer's
window) has got when the fault hits it:

    before_commit               producer: the batch is not yet committed
    committed_not_published     producer: committed, not (all) in the channel
    published_not_trained       consumer: reading its window
    trained_not_checkpointed    consumer: optimizer step taken, no durable checkpoint
    checkpointed_not_acked      consumer: checkpoint durable, ack not recorded
    acked_not_released          consumer: ack durable, consumed count or features not yet moved
    during_reconcile            consumer: started, reconcile not finished
    finished                    the process had written its last protocol event (`done`, `close`)

Operations read (docs/history.md): the producer's `features`, `commit`,
`publish`, `close`; the consumer's `reconcile`, `read`, `skip`, `train`,
`checkpoint`, `ack`, `consumed`, `release_features`, `done`; a process's
`failpoint` (where it stood exactly); the supervisor's `kill`, `pause` and
`powercut`.

Rules, numbered as `fault_phases` applies them:

1. a fault at a failpoint hit the phase its point sits in (`POINT_PHASE`),
   except in a consumer that has not finished reconciling: during_reconcile;
2. an impolite-channel fault hits the consumer's phase when it lands: a
   `duplicate` when the producer's `publish` (`duplicate: true`) put the
   copies in the channel, a `replay` at the consumer's `replay` event (the
   `failpoint` event that asked for either is not counted again);
3. a kill, a pause, a SIGTERM of a process between two events hit the phase
   its last protocol event left it in (`_after`); a process that has written
   no protocol event in its incarnation yet is before_commit (producer) or
   during_reconcile (consumer);
4. a store-server kill hits the consumer's phase (the ledger is what it acks into);
5. a power cut hits every protocol process that was running: one entry per
   process (a cut at a failpoint: that process's point, rule 1).
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Tuple

PHASES = ("before_commit", "committed_not_published", "published_not_trained", "trained_not_checkpointed",
          "checkpointed_not_acked", "acked_not_released", "during_reconcile", "finished")

#: Where each failpoint of the reference sits in the protocol.
POINT_PHASE: Dict[str, str] = {
    "producer.after_features_before_commit": "before_commit",
    "features.before_rename": "before_commit",
    "producer.after_commit_before_publish": "committed_not_published",
    "producer.mid_publish_batch": "committed_not_published",
    "channel.mid_append": "committed_not_published",
    "channel.before_fsync": "committed_not_published",
    "consumer.after_read_before_train": "published_not_trained",
    "rank.mid_inbox_read": "published_not_trained",
    "consumer.after_train_before_checkpoint": "trained_not_checkpointed",
    "rank.after_allreduce_before_ack": "trained_not_checkpointed",
    "rank0.after_gather_before_ack": "trained_not_checkpointed",
    "consumer.mid_checkpoint_replace": "trained_not_checkpointed",
    "consumer.after_checkpoint_before_ack": "checkpointed_not_acked",
    "store.mid_ack_txn": "checkpointed_not_acked",
    "consumer.after_ack_before_consumed": "acked_not_released",
    "consumer.after_ack_before_release": "acked_not_released",
    "consumer.mid_consumed_replace": "acked_not_released",
}

_PRODUCER_AFTER = {"start": "before_commit", "recover": "before_commit", "features": "before_commit",
                   "commit": "committed_not_published", "publish": "before_commit", "close": "finished"}
_CONSUMER_AFTER = {"reconcile": "published_not_trained", "read": "published_not_trained",
                   "skip": "published_not_trained", "train": "trained_not_checkpointed",
                   "checkpoint": "checkpointed_not_acked", "ack": "acked_not_released",
                   "consumed": None, "release_features": "published_not_trained", "done": "finished"}


def role(proc: str) -> Optional[str]:
    """"producer" or "consumer" (ranks and the group included), None for anything else."""
    if proc == "producer":
        return "producer"
    if proc == "consumer" or proc.startswith("consumer."):
        return "consumer"
    return None


class PhaseTracker:
    """Follows each protocol process's phase through the merged history."""

    def __init__(self) -> None:
        self.phase: Dict[str, str] = {"producer": "before_commit", "consumer": "during_reconcile"}
        self.inc: Dict[str, int] = {}

    def enter(self, e: Dict[str, Any]) -> Optional[str]:
        """The role of `e`'s process, switched to `e`'s incarnation (a new one starts from the beginning)."""
        r = role(str(e.get("proc", "")))
        if r is not None:
            inc = int(e.get("inc", 0))
            if self.inc.get(r) != inc:
                self.inc[r] = inc
                self.phase[r] = "before_commit" if r == "producer" else "during_reconcile"
        return r

    def see(self, e: Dict[str, Any]) -> None:
        r = self.enter(e)
        if r is None:
            return
        table = _PRODUCER_AFTER if r == "producer" else _CONSUMER_AFTER
        ev = e.get("ev")
        if ev == "ack" and e.get("roll_forward"):
            return  # part of reconcile
        if ev in table:
            nxt = table[ev]
            if nxt is None:  # consumed: after an ack it is still the ack's tail, else reading
                nxt = "acked_not_released" if self.phase[r] == "acked_not_released" else "published_not_trained"
            self.phase[r] = nxt

    def phase_of(self, r: str, inc: Any) -> str:
        """The phase of incarnation `inc` of role `r` (one that has written nothing yet: its start)."""
        if inc is not None and self.inc.get(r) != int(inc):
            return "before_commit" if r == "producer" else "during_reconcile"
        return self.phase[r]

    def at_point(self, proc: str, point: str) -> str:
        r = role(proc)
        if r == "consumer" and self.phase.get("consumer") == "during_reconcile":
            return "during_reconcile"
        return POINT_PHASE.get(point, "finished" if r is None else self.phase[r])


def fault_phases(events: Iterable[Dict[str, Any]]) -> List[Tuple[str, str, Dict[str, Any]]]:
    """(fault kind, phase, event) for every fault the history shows, in history order.

    Kinds: `failpoint_crash`, `io_error`, `pause` (a failpoint's action or a
    supervisor SIGSTOP), `kill` (SIGKILL between events), `sigterm`,
    `store_server_kill`, `powercut`, `duplicate`, `replay`.
    """
    t = PhaseTracker()
    out: List[Tuple[str, str, Dict[str, Any]]] = []
    cut_faults = set()
    for e in events:
        ev, proc = e.get("ev"), str(e.get("proc", ""))
        if proc == "supervisor":
            _supervisor_fault(t, e, out, cut_faults)
            continue
        t.enter(e)
        if (ev == "publish" and e.get("duplicate")) or ev == "replay":
            out.append(("duplicate" if ev == "publish" else "replay", t.phase["consumer"], e))
        elif ev == "failpoint" and e.get("action") not in ("duplicate", "replay"):
            action = e.get("action")
            kind = {"crash": "failpoint_crash", "raise": "failpoint_crash", "eio": "io_error",
                    "enospc": "io_error", "pause": "pause", "powercut": "powercut"}.get(action, str(action))
            out.append((kind, t.at_point(proc, str(e.get("point"))), e))
        t.see(e)
    return out


def _supervisor_fault(t: PhaseTracker, e: Dict[str, Any], out: list, cut_faults: set) -> None:
    ev = e.get("ev")
    if ev == "powercut":
        cut_faults.add(e.get("fault"))
        if str(e.get("cause", "timed")).startswith("failpoint"):
            return  # counted at the failpoint event that stopped its process
        killed = e.get("killed") or e.get("targets") or []
        for name in killed:
            r = role(str(name).split("#", 1)[0])
            if r is not None:
                out.append(("powercut", t.phase[r], e))
        return
    if ev not in ("kill", "pause"):
        return
    if ev == "kill" and e.get("fault") in cut_faults:
        return  # the simulation's power cut lists each process it killed
    target = str(e.get("target", ""))
    if target == "store_server":
        out.append(("store_server_kill", t.phase["consumer"], e))
        return
    r = role(target)
    if r is None:
        return
    if ev == "pause":
        kind = "pause"
    else:
        kind = "sigterm" if int(e.get("signal", 9)) == 15 else "kill"
    out.append((kind, t.phase_of(r, e.get("target_inc")), e))
