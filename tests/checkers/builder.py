"""Hand-written histories for checker tests.

`H` appends events in history order: every event gets increasing `mono`, a
per-incarnation `seq` and its 1-based `line`; each call returns that line so
tests can assert the lines an anomaly names.
"""

from __future__ import annotations

from typing import Any, Dict, List


class H:
    def __init__(self) -> None:
        self.events: List[Dict[str, Any]] = []
        self.seq: Dict[tuple, int] = {}
        self.mono = 100.0

    def ev(self, proc: str, inc: int, ev: str, *, dt: float = 1.0, **fields: Any) -> int:
        self.mono += dt
        key = (proc, inc)
        seq = self.seq.get(key, 0)
        self.seq[key] = seq + 1
        e = {"proc": proc, "inc": inc, "seq": seq, "t": 1.7e9 + self.mono, "mono": self.mono, "ev": ev}
        e.update(fields)
        e["line"] = len(self.events) + 1
        self.events.append(e)
        return e["line"]

    def p(self, ev: str, inc: int = 0, **f: Any) -> int:
        return self.ev("producer", inc, ev, **f)

    def c(self, ev: str, inc: int = 0, **f: Any) -> int:
        return self.ev("consumer", inc, ev, **f)

    def s(self, ev: str, **f: Any) -> int:
        return self.ev("supervisor", 0, ev, **f)

    # -- common sequences ---------------------------------------------------
    def start_consumer(self, inc: int = 0, *, marker_step=None, checkpoint_step=None, released=(),
                       rolled_forward=(), consumed_before=0, requeued=()) -> int:
        """spawn + start + reconcile; returns the reconcile line."""
        self.s("spawn", target="consumer", target_inc=inc, pid=200 + inc, failpoints=[])
        self.c("start", inc, pid=200 + inc, resume=inc > 0, device="cpu", backend="sqlite")
        return self.c("reconcile", inc, marker_step=marker_step, checkpoint_step=checkpoint_step,
                      checkpoint_inc=None, released=list(released), requeued=list(requeued),
                      rolled_forward=list(rolled_forward), consumed_before=consumed_before,
                      marker_acked_count=len(released))

    def step(self, inc: int, step: int, ids, *, consumed=None, proc: str = "consumer") -> Dict[str, int]:
        """train, checkpoint, ack, release, consumed: one optimizer boundary; returns their lines."""
        ids = list(ids)
        out = {"train": self.ev(proc, inc, "train", step=step, ids=ids),
               "checkpoint": self.ev(proc, inc, "checkpoint", step=step, unacked=ids),
               "ack": self.ev(proc, inc, "ack", step=step, ids=ids, durable=True),
               "release": self.ev(proc, inc, "release_features", ids=ids)}
        if consumed is not None:
            out["consumed"] = self.ev(proc, inc, "consumed", consumed=consumed)
        return out


def ids(n: int, start: int = 0) -> List[str]:
    return [f"s{i}" for i in range(start, start + n)]


def final_state(planned: List[str], **over: Any) -> Dict[str, Any]:
    """A completed, consistent final state for `planned`, every sample trained once."""
    f = {
        "planned_ids": list(planned),
        "witness": [1.0] * len(planned),
        "checkpoint_step": None,
        "marker": {"acked": sorted(planned), "global_step": None, "optimizer_durable": True},
        "committed_ids": list(planned),
        "channel_ids": list(planned),
        "consumed": len(planned),
        "features_left": [],
        "outcome": "completed",
        "fail_closed_reason": None,
        "watermarks": {"high": 8, "low": 2, "publish_batch": 4},
        "durable_store": True,
        "bound_s": 100.0,
    }
    f.update(over)
    return f


def valid_run():
    """A correct run with a consumer crash between checkpoint and ack (roll-forward on restart).

    Returns (history, final, lines) where `lines` labels the notable lines.
    """
    h = H()
    L: Dict[str, int] = {}
    s = ids(6)
    h.s("spawn", target="producer", target_inc=0, pid=100, failpoints=[])
    h.p("start", pid=100, resume=False, backend="sqlite")
    h.p("recover", published=0, committed=0, torn_bytes_repaired=0)
    L["c0_reconcile"] = h.start_consumer(0)
    h.p("features", ids=s[:4])
    L["commit1"] = h.p("commit", ids=s[:4], fresh=[True] * 4)
    L["publish1"] = h.p("publish", ids=s[:4], first_pos=0, published=4, consumed=0, in_flight_before=0)
    h.c("read", pos=0, id=s[0])
    h.c("read", pos=1, id=s[1])
    L["step1"] = h.step(0, 1, s[:2], consumed=2)["train"]
    h.c("read", pos=2, id=s[2])
    h.c("read", pos=3, id=s[3])
    L["train2"] = h.c("train", step=2, ids=s[2:4])
    L["ckpt2"] = h.c("checkpoint", step=2, unacked=s[2:4])
    L["fault"] = h.c("failpoint", point="consumer.after_checkpoint_before_ack", action="crash")
    h.s("exited", target="consumer", target_inc=0, code=-9)
    h.s("spawn", target="consumer", target_inc=1, pid=201, failpoints=[])
    h.c("start", 1, pid=201, resume=True, device="cpu", backend="sqlite")
    L["rollforward"] = h.c("ack", 1, step=2, ids=s[2:4], durable=True, roll_forward=True)
    L["c1_reconcile"] = h.c("reconcile", 1, marker_step=1, checkpoint_step=2, checkpoint_inc=0,
                            released=s[:4], requeued=[], rolled_forward=s[2:4], consumed_before=2,
                            marker_acked_count=4)
    h.c("release_features", 1, ids=s[2:4], gc=True)
    h.c("skip", 1, pos=0, id=s[0], reason="released")
    h.c("skip", 1, pos=1, id=s[1], reason="released")
    h.c("skip", 1, pos=2, id=s[2], reason="released")
    h.c("skip", 1, pos=3, id=s[3], reason="released")
    h.c("consumed", 1, consumed=4)
    h.p("features", ids=s[4:])
    h.p("commit", ids=s[4:], fresh=[True, True])
    h.p("publish", ids=s[4:], first_pos=4, published=6, consumed=2, in_flight_before=2)
    h.p("close", published=6)
    h.p("exit", code=0, outcome="completed")
    h.c("read", 1, pos=4, id=s[4])
    h.c("read", 1, pos=5, id=s[5])
    L["step3"] = h.step(1, 3, s[4:], consumed=6)["train"]
    h.c("done", 1, consumed=6, step=3)
    h.c("exit", 1, code=0, outcome="completed")
    h.s("exited", target="producer", target_inc=0, code=0)
    L["end"] = h.s("exited", target="consumer", target_inc=1, code=0)
    final = final_state(s, checkpoint_step=3,
                        marker={"acked": sorted(s), "global_step": 3, "optimizer_durable": True})
    return h.events, final, L
