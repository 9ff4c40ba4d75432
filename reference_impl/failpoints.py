"""Named failpoints compiled into the reference implementation.

A failpoint is a call `failpoints.hit("consumer.after_checkpoint_before_ack")`
at a protocol boundary. When none is configured for the process, `hit` returns
at once (one global lookup). The harness enables them per process through the
environment variable `DFH_FAILPOINTS`, a JSON list of rules:

    [{"point": "consumer.after_checkpoint_before_ack", "action": "crash", "hit": 3}]

`hit` is 1-based: the rule fires on the N-th time the point is reached in this
process, and on `times - 1` further hits after that (default 1). An optional
`"rank": N` arms the rule only in rank N of a data-parallel consumer group
(`configure(..., rank=N)`); without it, every rank that loads the rules arms it.
Actions:

* `crash`  - SIGKILL this process (nothing after the point runs);
* `pause`  - SIGSTOP this process; the harness sends SIGCONT later;
* `eio`, `enospc` - raise OSError with that errno (an injected I/O error);
* `raise`  - raise `FailpointCrash`, the simulation engine's "killed here";
* `powercut` - SIGSTOP this process, like `pause`; the harness then cuts power
  to every process of the run (kills them all and drops unsynced writes);
* `lost_reply` - SIGSTOP this process, like `pause`; the harness arms a lost
  reply on this process's network path to the store server and resumes it, so
  its next store call reaches the server and its answer is lost.
* `duplicate`, `replay` - the impolite channel (at-least-once delivery, not a
  crash): the handler the process's component registered with `on_action`
  is called with the rule's `records` (default 1). The producer then writes
  its last `records` channel records again at its next publish (as a producer
  that re-publishes after a crash would); the consumer moves its read
  position `records` back, so it meets records it already trained or acked.

Every call of `hit` is also counted, armed or not (one dict update), so that a
run can say which points it reached: `take_reached()` hands over the counts
since its previous call, and the process's history writer attaches them to
its next event (`reached`, docs/history.md).
"""

from __future__ import annotations

import errno
import json
import os
import signal
from typing import Callable, Dict, List, Optional

ENV_VAR = "DFH_FAILPOINTS"

#: Every failpoint compiled into reference_impl, with where it sits.
POINTS: Dict[str, str] = {
    "producer.after_features_before_commit": "features written, batch not yet committed",
    "producer.after_commit_before_publish": "batch committed in the store, not yet in the channel",
    "producer.mid_publish_batch": "some records of a publish batch appended, not all",
    "consumer.after_read_before_train": "a window of refs read from the channel, not yet trained",
    "consumer.after_train_before_checkpoint": "optimizer step taken in memory, no checkpoint yet",
    "consumer.after_checkpoint_before_ack": "checkpoint durable, ack not yet recorded",
    "consumer.after_ack_before_consumed": "ack durable, consumed count not yet published",
    "consumer.after_ack_before_release": "ack durable, feature blobs not yet deleted",
    "consumer.mid_checkpoint_replace": "checkpoint renamed into place, its directory not yet fsynced",
    "consumer.mid_consumed_replace": "consumed sidecar renamed into place, its directory not yet fsynced",
    "store.mid_ack_txn": "inside the ack transaction: ids written, marker not yet",
    "channel.mid_append": "half of a channel record written (a torn record)",
    "channel.before_fsync": "a channel record written, not yet fsynced",
    "features.before_rename": "a feature blob written to its temp file, not yet renamed",
    # data-parallel consumer (reference_impl.dp_consumer): "rank." points are reached
    # by every rank (a rule's optional "rank" field arms it in one rank only)
    "rank.mid_inbox_read": "a rank has read part of its inbox (its share of the window), not all",
    "rank.after_allreduce_before_ack": "gradients all-reduced and optimizer step taken on a rank, ids not yet gathered",
    "rank0.after_gather_before_ack": "rank 0 gathered every rank's trained ids, no checkpoint or ack yet",
}

ACTIONS = ("crash", "pause", "eio", "enospc", "raise", "powercut", "lost_reply", "duplicate", "replay")
#: Actions that call a handler registered by the process's component (`on_action`).
HANDLED_ACTIONS = ("duplicate", "replay")


class FailpointCrash(BaseException):
    """Raised by the `raise` action: the simulated process dies at this point.

    A BaseException so that protocol code's `except Exception` cannot swallow it.
    """

    def __init__(self, point: str):
        super().__init__(point)
        self.point = point


_ACTIVE: Optional[Dict[str, List[dict]]] = None
_COUNTS: Dict[str, int] = {}
_ON_TRIGGER: Optional[Callable[[str, str], None]] = None
_REACHED: Dict[str, int] = {}  # hits since the last take_reached()
_HANDLERS: Dict[str, Callable[[int], None]] = {}  # action -> the component's handler


def parse_rules(spec) -> List[dict]:
    """Validate rules given as JSON text or a list of dicts."""
    rules = json.loads(spec) if isinstance(spec, str) else list(spec or [])
    out = []
    for r in rules:
        point, action = r.get("point"), r.get("action", "crash")
        if point not in POINTS:
            raise ValueError(f"unknown failpoint {point!r}; known: {', '.join(sorted(POINTS))}")
        if action not in ACTIONS:
            raise ValueError(f"unknown failpoint action {action!r}; allowed: {', '.join(ACTIONS)}")
        hit, times = int(r.get("hit", 1)), int(r.get("times", 1))
        if hit < 1 or times < 1:
            raise ValueError(f"failpoint {point}: hit and times must be >= 1")
        rule = {"point": point, "action": action, "hit": hit, "times": times}
        if r.get("records") is not None:
            records = r["records"]
            if action not in HANDLED_ACTIONS or not isinstance(records, int) or isinstance(records, bool) \
                    or records < 1:
                raise ValueError(f"failpoint {point}: records must be an integer >= 1, and only with "
                                 f"{' or '.join(HANDLED_ACTIONS)}, got {records!r}")
            rule["records"] = records
        if r.get("rank") is not None:
            rank = r["rank"]
            if not isinstance(rank, int) or isinstance(rank, bool) or rank < 0:
                raise ValueError(f"failpoint {point}: rank must be an integer >= 0, got {rank!r}")
            rule["rank"] = rank
        out.append(rule)
    return out


def configure(rules=None, on_trigger: Optional[Callable[[str, str], None]] = None,
              rank: Optional[int] = None) -> None:
    """Arm `rules` for this process (None or [] disarms everything).

    `rank`: this process is that rank of a data-parallel group; rules naming
    another rank are dropped. Rules naming a rank are dropped in a process
    that is no rank (`rank` None).
    """
    global _ACTIVE, _ON_TRIGGER
    parsed = parse_rules(rules) if rules else []
    parsed = [r for r in parsed if r.get("rank") is None or r["rank"] == rank]
    _COUNTS.clear()
    _ON_TRIGGER = on_trigger
    if not parsed:
        _ACTIVE = None
        return
    active: Dict[str, List[dict]] = {}
    for r in parsed:
        active.setdefault(r["point"], []).append(r)
    _ACTIVE = active


def configure_from_env(on_trigger: Optional[Callable[[str, str], None]] = None,
                       rank: Optional[int] = None) -> None:
    configure(os.environ.get(ENV_VAR) or None, on_trigger, rank=rank)


def take_reached() -> Dict[str, int]:
    """The points reached since the previous call, with how often (and forget them)."""
    global _REACHED
    if not _REACHED:
        return _REACHED
    out, _REACHED = _REACHED, {}
    return out


def hit(name: str) -> None:
    _REACHED[name] = _REACHED.get(name, 0) + 1
    if _ACTIVE is None:
        return
    rules = _ACTIVE.get(name)
    if not rules:
        return
    n = _COUNTS[name] = _COUNTS.get(name, 0) + 1
    for r in rules:
        if r["hit"] <= n < r["hit"] + r["times"]:
            _trigger(name, r["action"], r.get("records", 1))


def on_action(action: str, handler: Callable[[int], None]) -> None:
    """Register the handler of a `HANDLED_ACTIONS` action (the latest registration wins)."""
    if action not in HANDLED_ACTIONS:
        raise ValueError(f"no handler is called for action {action!r}; handled: {', '.join(HANDLED_ACTIONS)}")
    _HANDLERS[action] = handler


def act(action: str, records: int = 1) -> bool:
    """Call `action`'s registered handler now (a simulation delivers these faults between
    steps this way); False when no component registered one."""
    handler = _HANDLERS.get(action)
    if handler is None:
        return False
    handler(int(records))
    return True


def _trigger(name: str, action: str, records: int = 1) -> None:
    if _ON_TRIGGER is not None:
        _ON_TRIGGER(name, action)
    if action in HANDLED_ACTIONS:
        act(action, records)
        return
    if action == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action in ("pause", "powercut", "lost_reply"):
        os.kill(os.getpid(), signal.SIGSTOP)
    elif action == "eio":
        raise OSError(errno.EIO, f"injected EIO at failpoint {name}")
    elif action == "enospc":
        raise OSError(errno.ENOSPC, f"injected ENOSPC at failpoint {name}")
    elif action == "raise":
        raise FailpointCrash(name)
