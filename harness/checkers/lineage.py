"""The surviving optimizer lineage of the consumer.

Model
-----
A consumer process (`consumer`, or `consumer.rank<N>` for each data-parallel
rank) runs as a sequence of incarnations 0, 1, 2, ... Incarnation j resumes
from a checkpoint at step R_j (the `checkpoint_step` of its `reconcile` event;
None or 0 is a fresh start) and applies `train` events (`step`, `ids`), `step`
being the global step after the optimizer step. A checkpoint at step s holds
the model state after every train with step <= s of the incarnation that wrote
it, which itself holds the lineage of the checkpoint it resumed from.

A checkpoint write that was in progress when the process was killed has no
`checkpoint` event, yet can be durable on disk. So the truth about which
checkpoint exists is the *reader's*: `final["checkpoint_step"]` for the end of
the run and `reconcile.checkpoint_step` for each restart.

The surviving lineage is found by walking backwards from the final checkpoint
step s = final["checkpoint_step"]:

1. the writer of checkpoint s is the latest incarnation j (before the current
   one) with R_j < s that has a `checkpoint` event at step s; failing that, the
   latest one with R_j < s <= its highest train step (the checkpoint whose
   event was lost in a kill);
2. the trains of j with R_j < step <= s survive; its trains above s were
   rolled back (discarded);
3. continue with s = R_j before j, until s = 0.

Every other train is discarded: it happened in memory and the model state it
produced was rolled back by a restart. Incarnations without a `reconcile` event
resume, for this walk, from the step before their first train.

The result gives, for every sample id, the list of its surviving trains as
`(proc#inc, step, line)` and, separately, its discarded trains. Several ranks
are walked independently, against the same final checkpoint step; a sample
trained by two ranks appears twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

TrainRef = Tuple[str, int, int]  # (proc#inc, step, line)


@dataclass
class _Inc:
    proc: str
    inc: int
    resume: Optional[int] = None  # R_j
    has_reconcile: bool = False
    trains: List[Tuple[int, List[str], int]] = field(default_factory=list)
    ckpt_steps: set = field(default_factory=set)
    max_step: int = -1

    @property
    def name(self) -> str:
        return f"{self.proc}#{self.inc}"


@dataclass
class Lineage:
    end_step: int
    trains: Dict[str, List[TrainRef]]  # surviving, per sample id
    discarded: Dict[str, List[TrainRef]]
    chains: Dict[str, List[Tuple[str, int, int]]]  # proc -> [(proc#inc, from_step, to_step)], newest first
    resume: Dict[str, Optional[int]]  # proc#inc -> resume step
    unexplained: List[str]  # steps the walk could not attribute to any incarnation
    surviving_train_events: int = 0
    discarded_train_events: int = 0

    def all_trains(self, sid: str) -> List[TrainRef]:
        return sorted(self.trains.get(sid, []) + self.discarded.get(sid, []), key=lambda t: t[2])


def _incarnations(history, ctx) -> Dict[str, Dict[int, _Inc]]:
    procs: Dict[str, Dict[int, _Inc]] = {}

    def get(e) -> _Inc:
        p = e.get("proc", "consumer")
        i = int(e.get("inc", 0))
        d = procs.setdefault(p, {})
        x = d.get(i)
        if x is None:
            x = d[i] = _Inc(p, i)
        return x

    if ctx is not None:
        trains = ctx.events("consumer", "train")
        ckpts = ctx.events("consumer", "checkpoint")
        recs = ctx.events("consumer", "reconcile")
    else:
        trains, ckpts, recs = [], [], []
        for e in history:
            ev = e.get("ev")
            if ev == "train":
                trains.append(e)
            elif ev == "checkpoint":
                ckpts.append(e)
            elif ev == "reconcile":
                recs.append(e)
    for e in recs:
        x = get(e)
        if not x.has_reconcile:
            x.has_reconcile = True
            x.resume = int(e.get("checkpoint_step") or 0)
    for e in trains:
        x = get(e)
        step = int(e.get("step", 0))
        x.trains.append((step, e.get("ids") or [], e.get("line", 0)))
        if step > x.max_step:
            x.max_step = step
    for e in ckpts:
        get(e).ckpt_steps.add(int(e.get("step", 0)))
    for d in procs.values():
        for x in d.values():
            if not x.has_reconcile and x.trains:
                x.resume = min(t[0] for t in x.trains) - 1
    return procs


def _writer(incs: List[_Inc], cur: int, s: int) -> Optional[int]:
    for j in range(cur - 1, -1, -1):
        x = incs[j]
        if x.resume is not None and x.resume < s and s in x.ckpt_steps:
            return j
    for j in range(cur - 1, -1, -1):
        x = incs[j]
        if x.resume is not None and x.resume < s <= x.max_step:
            return j
    return None


def surviving_lineage(history: List[Dict[str, Any]], final: Dict[str, Any], ctx=None) -> Lineage:
    final = final or {}
    end = int(final.get("checkpoint_step") or 0)
    procs = _incarnations(history, ctx)
    surviving: Dict[str, List[TrainRef]] = {}
    discarded: Dict[str, List[TrainRef]] = {}
    chains: Dict[str, List[Tuple[str, int, int]]] = {}
    resume: Dict[str, Optional[int]] = {}
    unexplained: List[str] = []
    n_surv = n_disc = 0
    for proc in sorted(procs):
        incs = [procs[proc][i] for i in sorted(procs[proc])]
        for x in incs:
            resume[x.name] = x.resume
        window: Dict[int, Tuple[int, int]] = {}  # inc index -> (from, to] surviving steps
        chain: List[Tuple[str, int, int]] = []
        cur, s = len(incs), end
        while s > 0:
            j = _writer(incs, cur, s)
            if j is None:
                unexplained.append(f"{proc}: no incarnation before "
                                   f"{incs[cur].name if cur < len(incs) else 'the end'} reached step {s}")
                break
            r = incs[j].resume or 0
            window[j] = (r, s)
            chain.append((incs[j].name, r, s))
            cur, s = j, r
        chains[proc] = chain
        for j, x in enumerate(incs):
            lo, hi = window.get(j, (0, -1))
            name = x.name
            for step, ids, line in x.trains:
                if lo < step <= hi:
                    target = surviving
                    n_surv += 1
                else:
                    target = discarded
                    n_disc += 1
                ref = (name, step, line)
                for sid in ids:
                    lst = target.get(sid)
                    if lst is None:
                        target[sid] = [ref]
                    else:
                        lst.append(ref)
    return Lineage(end, surviving, discarded, chains, resume, unexplained, n_surv, n_disc)


def surviving_trains(history: List[Dict[str, Any]], final: Dict[str, Any]) -> Dict[str, List[TrainRef]]:
    """For every sample id, its surviving trains as (proc#inc, step, line)."""
    return surviving_lineage(history, final).trains


def fmt_trains(refs: List[TrainRef]) -> str:
    return "; ".join(f"{inc} step {step} line {line}" for inc, step, line in refs) or "none"
