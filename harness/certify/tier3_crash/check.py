"""Tier 3's judge: the state reopened after a crash against what the workers' logs prove.

An operation whose return was logged happened; one that began and was not
logged as returned was in flight at the kill (it may or may not have applied;
a commit batch may be torn, a warning); one that never began left no trace.
`check_trial` returns the violations (property, text, the operations that show
it) or, when there are none, takes the reopened state as the model's.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from ..model import diff_refs, short
from .trials import CrashModel, Trial, apply_ack, fmt_op, trial_refs

Bad = Tuple[str, str, List[Tuple[str, int]]]


class _Judge:
    def __init__(self, trial: Trial, logs: Dict[str, Any], snap: Dict[str, Any], model: CrashModel,
                 warnings: List[str], counters: Dict[str, int]) -> None:
        self.trial, self.logs, self.snap, self.model = trial, logs, snap, model
        self.warnings, self.counters = warnings, counters
        self.bad: List[Bad] = []
        self.pre = set(model.refs)
        self.committed_now = set(snap["all_ids"])
        self.new_present: Dict[str, List[str]] = {}
        self.inflight_ack: Optional[tuple] = None
        self.done_acks: List[tuple] = []
        self.context: Dict[Tuple[str, int], str] = {}

    # -- each worker's operations -------------------------------------------------
    def workers(self) -> None:
        for who, ops in self.trial.workers.items():
            lg = self.logs[who]
            if lg["error"]:
                self.bad.append(("exception", f"worker {who} of trial {self.trial.no}: the store raised "
                                 f"{lg['error']}", []))
                continue
            seen_by_worker: set = set()
            for k, op in enumerate(ops):
                began, done = k in lg["began"], k in lg["done"]
                state = "returned" if done else ("in flight at the kill" if began else "never began")
                self.context[(who, k)] = fmt_op(who, k, op) + f"  [{state}]"
                if op[0] == "commit":
                    self.commit(who, k, op[1], lg, began, done, seen_by_worker)
                elif done:
                    self.done_acks.append(op)
                elif began:
                    self.inflight_ack = op

    def commit(self, who: str, k: int, refs: list, lg: Dict[str, Any], began: bool, done: bool,
               seen_by_worker: set) -> None:
        expected = []
        for r in refs:
            expected.append(r.sample_id not in self.pre and r.sample_id not in seen_by_worker)
            seen_by_worker.add(r.sample_id)
        new_ids = list(dict.fromkeys(r.sample_id for r, e in zip(refs, expected) if e))
        present = [s for s in new_ids if s in self.committed_now]
        if done:
            got = lg["done"][k]
            if got != expected:
                i = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), 0)
                prop = "P4 dedup" if (i < len(got) and got[i]) else "freshness"
                self.bad.append((prop, f"worker {who} op {k}: commit_samples returned {got}, expected {expected} "
                                 f"(flag {i}, {refs[i].sample_id!r}; ids committed before this trial are not "
                                 "fresh)", [(who, k)]))
            missing = [s for s in new_ids if s not in self.committed_now]
            if missing:
                self.bad.append(("P6 durability", f"worker {who} op {k}: commit_samples returned {got} before "
                                 f"the crash, but after reopening {short(missing)} are not committed", [(who, k)]))
            self.new_present.setdefault(who, []).extend(new_ids)
        elif began:
            if present and len(present) < len(new_ids):
                self.torn_batch(len(present), len(new_ids))
            self.new_present.setdefault(who, []).extend(present)
            if present:
                self.counters["inflight_commits_applied"] = self.counters.get("inflight_commits_applied", 0) + 1
        elif present:
            self.bad.append(("P4 dedup", f"worker {who} op {k} never began, yet {short(present)} are committed",
                             [(who, k)]))

    def torn_batch(self, present: int, of: int) -> None:
        self.counters["torn_batches"] = self.counters.get("torn_batches", 0) + 1
        if self.counters["torn_batches"] <= 3:
            self.warnings.append(
                f"trial {self.trial.no}: a commit batch torn by the crash ({present} of {of} new ids present); "
                "DESIGN section 2 asks a durable backend to commit a batch in one transaction"
            )

    # -- the committed set, its order, the refs ----------------------------------
    def committed_set(self) -> None:
        snap, now = self.snap, self.committed_now
        allowed = self.pre | {s for ids in self.new_present.values() for s in ids}
        extra = now - allowed
        if extra:
            self.bad.append(("P4 dedup", f"ids committed that no commit produced: {short(extra)}", []))
        lost_old = self.pre - now
        if lost_old:
            self.bad.append(("P6 durability",
                             f"ids committed and verified before this trial are gone: {short(lost_old)}", []))
        if len(now) != len(snap["all_ids"]):
            self.bad.append(("P4 dedup", "all_committed_ids lists an id twice", []))
        if snap["count"] != len(now):
            self.bad.append(("committed_count", f"committed_count() is {snap['count']} but all_committed_ids has "
                                                f"{len(now)} ids", []))
        if snap["all_ids"][:len(self.model.order)] != self.model.order and not lost_old:
            self.bad.append(("all_committed_ids order",
                             "ids committed in earlier trials moved in all_committed_ids after the crash", []))
        pos = {s: i for i, s in enumerate(snap["all_ids"])}
        for who, ids in self.new_present.items():
            seq = [pos[s] for s in ids if s in pos]
            if any(a > b for a, b in zip(seq, seq[1:])):
                self.bad.append(("all_committed_ids order",
                                 f"worker {who}'s commits are not in first-commit order in all_committed_ids", []))
        wrong = [sid for sid, c in snap.get("committed", {}).items() if c != (sid in now)]
        if wrong:
            self.bad.append(("is_committed",
                             f"after reopen is_committed() disagrees with all_committed_ids() for {short(wrong)}", []))

    def refs(self) -> None:
        """New refs and the sampled old ones round-trip."""
        for sid, got in self.snap["refs"].items():
            want = self.model.refs.get(sid)
            if want is None and sid in self.committed_now:
                want = trial_refs(self.trial).get(sid)
            if want is None:
                continue
            if got is None:
                if sid in self.committed_now:
                    self.bad.append(("round-trip",
                                     f"get_committed({sid!r}) is None after reopen though the id is committed", []))
                continue
            dd = diff_refs(want, got)
            if dd:
                self.bad.append(("round-trip",
                                 f"get_committed({sid!r}) after reopen differs from the committed ref: {dd}", []))

    # -- the marker: every returned ack, the one in flight whole or not at all ----
    def marker(self) -> Dict[str, Any]:
        m_done = self.model.marker()
        for op in self.done_acks:
            m_done = apply_ack(m_done, op)
        got = self.snap["marker"]
        flight = self.inflight_ack
        candidates = [m_done] + ([apply_ack(m_done, flight)] if flight else [])
        if got in candidates:
            if flight is not None and got == candidates[-1]:
                self.counters["inflight_acks_applied"] = self.counters.get("inflight_acks_applied", 0) + 1
            return got
        lost = m_done["acked"] - got["acked"]
        if lost and not (flight and (got["acked"] - m_done["acked"])):
            self.bad.append(("P6 durability", "acks that returned before the crash are missing after reopen: "
                             f"acked lacks {short(lost)}", []))
        elif flight is not None:
            part = set(flight[1]) & got["acked"]
            self.bad.append(("P5 ack atomicity",
                             f"the ack in flight at the kill ({short(flight[1])}, global_step={flight[2]!r}, "
                             f"optimizer_durable={flight[3]!r}) is partly applied after reopen: {len(part)} of "
                             f"{len(flight[1])} ids acked, global_step={got['global_step']!r}, "
                             f"optimizer_durable={got['optimizer_durable']!r}", []))
        else:
            why = []
            if got["acked"] != m_done["acked"]:
                why.append(f"acked differs ({short(got['acked'] ^ m_done['acked'])})")
            for k in ("global_step", "optimizer_durable"):
                if got[k] != m_done[k]:
                    why.append(f"{k} {got[k]!r}, expected {m_done[k]!r}")
            self.bad.append(("P6 durability",
                             "after reopen the marker is not the state the returned acks left: " + "; ".join(why), []))
        return got

    def violations(self) -> List[Tuple[str, str, List[str]]]:
        ack_keys = [key for key, line in self.context.items()
                    if "record_train_ack" in line and "never began" not in line]
        out = []
        for p, t, keys in self.bad:
            if not keys and p in ("P5 ack atomicity", "P6 durability") and ("ack" in t or "marker" in t):
                keys = ack_keys
            out.append((p, t, [self.context[k] for k in keys] if keys else list(self.context.values())))
        return out

    def accept(self, got: Dict[str, Any]) -> None:
        model, refs_now = self.model, trial_refs(self.trial)
        for s in self.snap["all_ids"][len(model.order):]:
            model.refs[s] = refs_now[s]
        model.order = list(self.snap["all_ids"])
        model.acked, model.step, model.flag = set(got["acked"]), got["global_step"], got["optimizer_durable"]


def check_trial(trial: Trial, logs: Dict[str, Any], snap: Dict[str, Any], model: CrashModel,
                warnings: List[str], counters: Dict[str, int]) -> List[Tuple[str, str, List[str]]]:
    """Compare the reopened state with what the logs prove; update the model. Returns violations."""
    j = _Judge(trial, logs, snap, model, warnings, counters)
    j.workers()
    j.committed_set()
    j.refs()
    got = j.marker()
    if j.bad:
        return j.violations()
    j.accept(got)
    return []
