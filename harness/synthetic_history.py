"""Synthetic histories for checker tests and benchmarks.

`synthetic_history(n_events, seed=..., bug=...)` simulates one run of the
protocol (one producer, one consumer rank, a durable store) event by event and
returns `(history, final)` in the format of docs/history.md, with roughly
`n_events` events. The nemesis kills the consumer and the producer a few times
at protocol boundaries: after a read, after a train, between checkpoint and
ack, between ack and its history event, after the ack, and inside the
checkpoint write (checkpoint durable, event lost); the producer between
features and commit, between the store commit and its event, and after the
commit. A correct run is valid under every checker.

`bug` injects one known defect, detected by one property (`SYNTHETIC_BUGS`
maps each bug to its property and anomaly kind).
"""

from __future__ import annotations

import random
from typing import Any, Dict, List, Optional, Tuple

#: bug -> (property, anomaly kind it must produce)
SYNTHETIC_BUGS: Dict[str, Tuple[str, str]] = {
    "duplicate": ("P1", "duplicate_in_lineage"),
    "loss": ("P2", "lost"),
    "backpressure": ("P3", "published_over_watermark"),
    "consumed_backwards": ("P3", "consumed_backwards"),
    "fresh_twice": ("P4", "fresh_twice"),
    "never_fresh": ("P4", "never_fresh"),
    "torn_ack": ("P5", "torn_ack"),
    "lost_ack": ("P6", "lost_ack"),
    "lost_commit": ("P6", "lost_commit"),
    "step_regressed": ("P6", "step_regressed"),
    "early_release": ("P7", "released_before_ack"),
    "leak": ("P7", "features_leaked"),
    "hang": ("P8", "hang"),
    "slow_recovery": ("P8", "slow_recovery"),
}

PUBLISH_BATCH = 8
TRAIN_BATCH = 4
HIGH = 64
LOW = 32
EVENTS_PER_SAMPLE = 2.7
CONSUMER_KILLS = ("after_train", "after_checkpoint", "ack_no_event", "ckpt_no_event", "after_ack", "after_read")
PRODUCER_KILLS = ("commit_no_event", "after_commit", "after_features")


def sample_id(i: int) -> str:
    return f"s{i:07d}"


class _Sim:
    def __init__(self, n_events: int, seed: int, bug: Optional[str]) -> None:
        self.rng = random.Random(seed)
        self.bug = bug
        self.n = max(24, int(n_events / EVENTS_PER_SAMPLE))
        self.planned = [sample_id(i) for i in range(self.n)]
        self.index = {s: i for i, s in enumerate(self.planned)}
        self.events: List[Dict[str, Any]] = []
        self.mono = 1000.0
        self.seqs: Dict[Tuple[str, int], int] = {}
        # durable state
        self.channel: List[str] = []
        self.committed: Dict[str, None] = {}
        self.acked: set = set()
        self.marker_step: Optional[int] = None
        self.sidecar = 0
        self.ckpt_step: Optional[int] = None
        self.ckpt_unacked: List[str] = []
        self.witness = [0.0] * self.n
        self.features: set = set()
        self.closed = False
        # nemesis schedule: event counts at which to kill, with a kill kind each
        k_c = max(len(CONSUMER_KILLS), min(3 * len(CONSUMER_KILLS), n_events // 3000))
        k_p = max(len(PRODUCER_KILLS), min(3 * len(PRODUCER_KILLS), n_events // 6000))
        span = int(n_events * 0.8)
        self.c_kills = sorted(self.rng.randrange(span // 20, span) for _ in range(k_c))
        self.c_kinds = [CONSUMER_KILLS[i % len(CONSUMER_KILLS)] for i in range(k_c)]
        self.p_kills = sorted(self.rng.randrange(span // 20, span) for _ in range(k_p))
        self.p_kinds = [PRODUCER_KILLS[i % len(PRODUCER_KILLS)] for i in range(k_p)]
        self.last_fault_mono: Optional[float] = None
        self.torn_target: Optional[Dict[str, Any]] = None  # a reconcile after an interrupted ack
        self.c_inc = -1
        self.p_inc = -1

    # -- plumbing -------------------------------------------------------------
    def emit(self, proc: str, inc: int, ev: str, **fields: Any) -> Dict[str, Any]:
        self.mono += 0.0005 + self.rng.random() * 0.001
        key = (proc, inc)
        seq = self.seqs.get(key, 0)
        self.seqs[key] = seq + 1
        e = {"proc": proc, "inc": inc, "seq": seq, "t": 1.7e9 + self.mono, "mono": self.mono, "ev": ev}
        e.update(fields)
        self.events.append(e)
        return e

    def sup(self, ev: str, **fields: Any) -> None:
        self.emit("supervisor", 0, ev, **fields)

    def _due(self, kills: List[int], kinds: List[str], kind: str) -> bool:
        if kills and len(self.events) >= kills[0] and kinds[0] == kind:
            kills.pop(0)
            kinds.pop(0)
            return True
        return False

    # -- consumer ---------------------------------------------------------------
    def c_start(self) -> None:
        self.c_inc += 1
        inc = self.c_inc
        self.sup("spawn", target="consumer", target_inc=inc, pid=20000 + inc, failpoints=[])
        self.emit("consumer", inc, "start", pid=20000 + inc, resume=inc > 0, device="cpu", backend="sqlite")
        marker_step = self.marker_step
        rolled: List[str] = []
        ck = self.ckpt_step or 0
        if self.ckpt_step is not None and ck > (marker_step or 0):
            # roll forward: the checkpoint holds samples the marker lacks; ack them now
            rolled = sorted(set(self.ckpt_unacked) - self.acked)
            self.acked.update(self.ckpt_unacked)
            self.marker_step = ck
            self.emit("consumer", inc, "ack", step=ck, ids=list(self.ckpt_unacked), durable=True,
                      roll_forward=True)
        requeued = [s for s in self.committed if s not in self.acked]
        rec = self.emit("consumer", inc, "reconcile", marker_step=marker_step, checkpoint_step=self.ckpt_step,
                        checkpoint_inc=None, released=sorted(self.acked), requeued=requeued,
                        rolled_forward=rolled, consumed_before=self.sidecar, marker_acked_count=len(self.acked))
        if self.pending_torn:
            self.torn_target = rec
            self.pending_torn = None
        stale = [s for s in self.acked if s in self.features]
        if stale:
            for s in stale:
                self.features.discard(s)
            self.emit("consumer", inc, "release_features", ids=sorted(stale))
        self.step = ck
        self.pos = self.sidecar
        self.window: List[str] = []
        self.unacked: List[str] = []
        self.mem: List[str] = []
        self.pipeline: List[str] = []
        self.released = set(self.acked)
        self.c_done = False

    def sigkill(self, target: str, inc: int) -> None:
        """The supervisor SIGKILLs incarnation `inc` of `target` and sees it exit."""
        self.sup("kill", target=target, target_inc=inc, signal=9, fault="kill")
        self.last_fault_mono = self.mono
        self.sup("exited", target=target, target_inc=inc, code=-9)

    def c_kill(self) -> None:
        self.sigkill("consumer", self.c_inc)
        self.c_start()

    def c_tick(self) -> bool:
        inc = self.c_inc
        K = self.c_kills, self.c_kinds
        if self.pipeline:
            act = self.pipeline.pop(0)
            if act == "checkpoint":
                if self._due(*K, "ckpt_no_event"):
                    self._checkpoint()
                    self.c_kill()
                    return True
                self._checkpoint()
                self.emit("consumer", inc, "checkpoint", step=self.step, unacked=list(self.unacked))
                if self._due(*K, "after_checkpoint"):
                    self.pending_torn = True
                    self.c_kill()
            elif act == "ack":
                ids = self.unacked
                self.acked.update(ids)
                self.marker_step = self.step
                if self._due(*K, "ack_no_event"):
                    self.c_kill()
                    return True
                self.emit("consumer", inc, "ack", step=self.step, ids=list(ids), durable=True)
                self.unacked = []
                if self._due(*K, "after_ack"):
                    self.c_kill()
            elif act == "release":
                ids = self.last_acked
                for s in ids:
                    self.features.discard(s)
                self.emit("consumer", inc, "release_features", ids=list(ids))
            elif act == "consumed":
                self.sidecar = self.pos - len(self.window)
                self.emit("consumer", inc, "consumed", consumed=self.sidecar)
            return True
        end_of_input = self.closed and self.pos >= len(self.channel)
        if len(self.window) >= TRAIN_BATCH or (end_of_input and self.window):
            ids, self.window = self.window[:TRAIN_BATCH], self.window[TRAIN_BATCH:]
            self.step += 1
            self.emit("consumer", inc, "train", step=self.step, ids=ids)
            self.mem.extend(ids)
            self.unacked.extend(ids)
            self.last_acked = list(self.unacked)
            self.pipeline = ["checkpoint", "ack", "release", "consumed"]
            if self._due(*K, "after_train"):
                self.c_kill()
            return True
        if self.pos < len(self.channel):
            sid = self.channel[self.pos]
            if sid in self.released:
                self.emit("consumer", inc, "skip", pos=self.pos, id=sid, reason="released")
            else:
                self.emit("consumer", inc, "read", pos=self.pos, id=sid)
                self.window.append(sid)
            self.pos += 1
            if self._due(*K, "after_read"):
                self.c_kill()
            return True
        if end_of_input and not self.c_done:
            self.sidecar = self.pos
            self.emit("consumer", inc, "consumed", consumed=self.sidecar)
            self.emit("consumer", inc, "done", consumed=self.sidecar, step=self.step)
            self.emit("consumer", inc, "exit", code=0, outcome="completed")
            self.c_done = True
            return True
        return False

    def _checkpoint(self) -> None:
        w, idx = self.witness, self.index
        for s in self.mem:
            w[idx[s]] += 1.0
        self.mem = []
        self.ckpt_step = self.step
        self.ckpt_unacked = list(self.unacked)

    # -- producer ---------------------------------------------------------------
    def p_start(self) -> None:
        self.p_inc += 1
        inc = self.p_inc
        self.sup("spawn", target="producer", target_inc=inc, pid=10000 + inc, failpoints=[])
        self.emit("producer", inc, "start", pid=10000 + inc, resume=inc > 0, backend="sqlite")
        self.emit("producer", inc, "recover", published=len(self.channel), committed=len(self.committed),
                  torn_bytes_repaired=0)
        self.published_ids = set(self.channel)
        self.next_index = 0
        self.paused = False
        self.phase = "wait"
        self.batch: List[str] = []
        self.consumed_seen = 0
        self.p_done = False

    def p_kill(self) -> None:
        self.sigkill("producer", self.p_inc)
        self.p_start()

    def p_tick(self) -> bool:
        inc = self.p_inc
        K = self.p_kills, self.p_kinds
        if self.p_done:
            return False
        if self.phase == "wait":
            while self.next_index < self.n and self.planned[self.next_index] in self.published_ids:
                self.next_index += 1
            if self.next_index >= self.n:
                if not self.closed:
                    self.closed = True
                    self.emit("producer", inc, "close", published=len(self.channel))
                self.emit("producer", inc, "exit", code=0, outcome="completed")
                self.p_done = True
                return True
            consumed = self.sidecar
            self.consumed_seen = consumed
            published = len(self.channel)
            in_flight = published - consumed
            if self.bug != "backpressure":
                if not self.paused and in_flight >= HIGH:
                    self.paused = True
                    self.emit("producer", inc, "pause", published=published, consumed=consumed,
                              in_flight=in_flight, high=HIGH)
                elif self.paused and in_flight <= LOW:
                    self.paused = False
                    self.emit("producer", inc, "resume", published=published, consumed=consumed,
                              in_flight=in_flight, low=LOW)
                if self.paused:
                    return False
            batch, i = [], self.next_index
            while i < self.n and len(batch) < PUBLISH_BATCH:
                if self.planned[i] not in self.published_ids:
                    batch.append(self.planned[i])
                i += 1
            self.batch = batch
            self.phase = "features"
            return True
        if self.phase == "features":
            written = [s for s in self.batch if s not in self.features and s not in self.acked]
            self.features.update(written)
            self.emit("producer", inc, "features", ids=written)
            self.phase = "commit"
            if self._due(*K, "after_features"):
                self.p_kill()
            return True
        if self.phase == "commit":
            fresh = []
            for s in self.batch:
                fresh.append(s not in self.committed)
                self.committed[s] = None
            if self._due(*K, "commit_no_event"):
                self.p_kill()
                return True
            self.emit("producer", inc, "commit", ids=list(self.batch), fresh=fresh)
            self.phase = "publish"
            if self._due(*K, "after_commit"):
                self.p_kill()
            return True
        # publish
        todo = [s for s in self.batch if s not in self.published_ids]
        before = len(self.channel)
        self.channel.extend(todo)
        self.published_ids.update(todo)
        self.emit("producer", inc, "publish", ids=todo, first_pos=before, published=len(self.channel),
                  consumed=self.consumed_seen, in_flight_before=before - self.consumed_seen)
        self.phase = "wait"
        return True

    # -- the run ----------------------------------------------------------------
    def run(self) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
        self.pending_torn = None
        self.p_start()
        self.c_start()
        rng = self.rng
        p_weight = 0.9 if self.bug == "backpressure" else 0.45
        while not (self.c_done and self.p_done):
            first, second = (self.p_tick, self.c_tick) if rng.random() < p_weight else (self.c_tick, self.p_tick)
            if not first() and not second():
                raise RuntimeError("synthetic run stalled")
        self.sup("exited", target="producer", target_inc=self.p_inc, code=0)
        self.sup("exited", target="consumer", target_inc=self.c_inc, code=0)
        final = {
            "planned_ids": list(self.planned),
            "witness": list(self.witness),
            "checkpoint_step": self.ckpt_step,
            "marker": {"acked": sorted(self.acked), "global_step": self.marker_step, "optimizer_durable": True},
            "committed_ids": list(self.committed),
            "channel_ids": list(self.channel),
            "consumed": self.sidecar,
            "features_left": sorted(self.features),
            "outcome": "completed",
            "fail_closed_reason": None,
            "watermarks": {"high": HIGH, "low": LOW, "publish_batch": PUBLISH_BATCH},
            "durable_store": True,
            "bound_s": round(self.mono - 1000.0 + 1.0, 3),
        }
        return self.events, final


def _inject(bug: str, events: List[Dict[str, Any]], final: Dict[str, Any], sim: _Sim, rng: random.Random) -> None:
    def last(ev, proc="consumer", pred=lambda e: True):
        for e in reversed(events):
            if e["ev"] == ev and e["proc"] == proc and pred(e):
                return e
        raise ValueError(f"no {ev} event to inject {bug}")

    def middle(ev, proc, pred=lambda e: True):
        cands = [i for i, e in enumerate(events) if e["ev"] == ev and e["proc"] == proc and pred(e)]
        if not cands:
            raise ValueError(f"no {ev} event to inject {bug}")
        return cands[len(cands) // 2]

    if bug == "duplicate":
        victim = final["planned_ids"][0]
        last("train", pred=lambda e: victim not in e["ids"])["ids"].append(victim)
        final["witness"][0] += 1.0
    elif bug == "loss":
        e = last("train", pred=lambda e: len(e["ids"]) > 1)
        victim = e["ids"].pop(0)
        final["witness"][sim.index[victim]] = 0.0
    elif bug == "consumed_backwards":
        i = middle("consumed", "consumer", lambda e: e["consumed"] > 1)
        prev = next(e for e in reversed(events[:i]) if e["ev"] == "consumed" and e["proc"] == "consumer")
        events[i]["consumed"] = max(0, prev["consumed"] - 1)
    elif bug == "fresh_twice":
        i = middle("commit", "producer", lambda e: any(e["fresh"]))
        dup = dict(events[i], ids=list(events[i]["ids"]), fresh=[True] * len(events[i]["ids"]))
        dup["seq"] = events[i]["seq"]
        dup["mono"] = (events[i]["mono"] + events[i + 1]["mono"]) / 2
        events.insert(i + 1, dup)
    elif bug == "never_fresh":
        i = middle("commit", "producer", lambda e: all(e["fresh"]))
        events[i]["fresh"] = [False] + events[i]["fresh"][1:]
    elif bug == "torn_ack":
        # the restart read one id of the interrupted ack already in the marker, without its step
        rec = sim.torn_target
        if rec is None or len(rec["rolled_forward"]) < 2:
            raise ValueError("no reconcile after an interrupted ack to inject torn_ack")
        rec["rolled_forward"] = rec["rolled_forward"][1:]
    elif bug == "lost_ack":
        e = events[middle("ack", "consumer")]
        gone = set(e["ids"])
        final["marker"]["acked"] = [s for s in final["marker"]["acked"] if s not in gone]
    elif bug == "lost_commit":
        final["committed_ids"] = final["committed_ids"][1:]
    elif bug == "step_regressed":
        final["marker"]["global_step"] = max(0, (final["marker"]["global_step"] or 0) - 3)
    elif bug == "early_release":
        i = middle("ack", "consumer")
        j = i + 1
        while not (events[j]["ev"] == "release_features" and events[j]["proc"] == "consumer"):
            j += 1
        a, r = events[i], events[j]
        for k in ("seq", "t", "mono"):
            a[k], r[k] = r[k], a[k]
        events[i], events[j] = r, a
    elif bug == "leak":
        final["features_left"] = [last("ack")["ids"][0]]
    elif bug == "hang":
        final["outcome"] = "timeout"
        sim.sup("timeout", bound_s=final["bound_s"], state={"consumer": "waiting", "unacked": []})
    elif bug == "slow_recovery":
        final["bound_s"] = 0.001
    elif bug == "backpressure":
        pass  # simulated: the producer ignores the high watermark
    else:
        raise ValueError(f"unknown synthetic bug {bug!r}; known: {', '.join(SYNTHETIC_BUGS)}")


def synthetic_history(n_events: int, *, seed: int = 0,
                      bug: Optional[str] = None) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    """A simulated run of about `n_events` events: (merged history with `line`, final state)."""
    if bug is not None and bug not in SYNTHETIC_BUGS:
        raise ValueError(f"unknown synthetic bug {bug!r}; known: {', '.join(SYNTHETIC_BUGS)}")
    sim = _Sim(n_events, seed, bug)
    events, final = sim.run()
    if bug is not None:
        _inject(bug, events, final, sim, random.Random(seed + 1))
    for i, e in enumerate(events, 1):
        e["line"] = i
    return events, final
