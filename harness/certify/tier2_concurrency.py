"""Tier 2, concurrency: processes and threads at once on one store.

Scenarios (durable profile: processes, each with threads, plus threads sharing
one instance; volatile profile: threads sharing the one instance):

* **dedup race** (P4): workers commit the same ids at the same moment, in
  batches and one by one; exactly one commit per id returns fresh, the stored
  ref is that commit's ref, and each worker's fresh ids appear in
  `all_committed_ids` in the order its calls returned.
* **acks under readers** (P5, no lost update): ackers record acks whose ids are
  tagged by (writer, ack number) and whose `global_step` names the ack, in tight
  loops, while a committer commits and readers (other processes, or other
  threads) poll `durable_marker`. Every read must be a whole state: each ack
  all or nothing, each writer's acks a prefix, `global_step` the step of the
  newest ack of its writer and `optimizer_durable` that ack's flag. Reads never
  go backwards and include every ack that returned before the read began. At
  the end every ack and commit that returned is there (no lost update).
* **long-lived instances** (visibility): two processes open the store first and
  read everything (warming any cache), then take turns writing; each checks,
  through its old instance, that the other's commits, acks and dedup state are
  visible exactly.

Lock/busy/timeout errors are retried with a generous deadline and reported as
warnings, so a correct store is not failed for the load this tier creates; an
operation that raised counts as "may or may not have happened".
"""

from __future__ import annotations

import random
import shutil
import sys
import threading
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Tuple

from .certificate import FAILED, PASSED, Counterexample, TierResult
from .common import (
    Child,
    Context,
    Retrier,
    is_transient,
    mp_context,
    random_ref,
    run_children,
    safe_close,
)
from .model import Violation, canon_ref, diff_refs, normalise_marker, short
from .records import active

PROPERTIES = ["P4 dedup", "P5 ack atomicity", "lost-update", "visibility", "all_committed_ids order"]
MAX_ANOMALIES = 5
STEP_BASE = 7_000_000
STEP_STRIDE = 1_000_000
MAX_ROUNDS = 10_000


# -- the ack plan: every ack recognisable from its ids and its step ----------------------


class AckPlan:
    """Ack j of writer w: ids `<tag>.w<w>.a<j>.<i>`, step STEP_BASE + w*STRIDE + j, a flag."""

    def __init__(self, tag: str, writers: int, max_ids: int, seed: int) -> None:
        self.tag = tag
        self.writers = writers
        self.max_ids = max_ids
        self.seed = seed & 0xFFFF

    def size(self, w: int, j: int) -> int:
        x = (self.seed * 2654435761 + w * 40503 + j * 2246822519) & 0xFFFFFFFF
        x ^= x >> 13
        return 1 + (x * 7919 >> 5) % self.max_ids

    def ids(self, w: int, j: int) -> List[str]:
        return [f"{self.tag}.w{w}.a{j}.{i}" for i in range(self.size(w, j))]

    def step(self, w: int, j: int) -> int:
        return STEP_BASE + w * STEP_STRIDE + j

    def flag(self, w: int, j: int) -> bool:
        return (w + j) % 2 == 1

    def parse(self, sid: str) -> Optional[Tuple[int, int, int]]:
        head = self.tag + ".w"
        if not sid.startswith(head):
            return None
        try:
            w, a, i = sid[len(head):].split(".")
            return int(w), int(a[1:]), int(i)
        except ValueError:
            return (-1, -1, -1)

    def decode(self, step: Any) -> Optional[Tuple[int, int]]:
        if not isinstance(step, int) or isinstance(step, bool):
            return None
        w, j = divmod(step - STEP_BASE, STEP_STRIDE)
        if 0 <= w < self.writers and j >= 0:
            return w, j
        return None

    def check(self, m: Dict[str, Any]) -> Tuple[List[Tuple[str, str]], List[int]]:
        """Anomalies (property, text) of one marker read, and acks visible per writer."""
        return MarkerChecker(self).observe(m)


class MarkerChecker:
    """Checks a sequence of marker reads incrementally (cheap per read, so readers read often).

    Each read must be a whole state: every ack all or nothing, each writer's acks
    a prefix, `global_step` the newest visible ack of its writer with that ack's
    flag; and acked ids never disappear from one read to the next.
    """

    def __init__(self, plan: AckPlan) -> None:
        self.plan = plan
        self.prev: frozenset = frozenset()
        self.counts: Dict[Tuple[int, int], int] = {}
        self.partial: set = set()
        self.present: Dict[int, set] = {}

    def observe(self, m: Dict[str, Any]) -> Tuple[List[Tuple[str, str]], List[int]]:
        plan = self.plan
        acked = m["acked"]
        out: List[Tuple[str, str]] = []
        if not self.prev <= acked:
            gone = self.prev - acked
            out.append(("visibility", f"acked ids seen by an earlier read are gone in a later one: {short(gone)}"))
            self.__init__(plan)
        phantom = []
        for sid in acked - self.prev:
            o = plan.parse(sid)
            if o is None:
                continue
            w, j, i = o
            if not (0 <= w < plan.writers and j >= 0 and 0 <= i < plan.size(w, j)):
                phantom.append(sid)
                continue
            n = self.counts.get((w, j), 0) + 1
            self.counts[(w, j)] = n
            self.present.setdefault(w, set()).add(j)
            if n == plan.size(w, j):
                self.partial.discard((w, j))
            else:
                self.partial.add((w, j))
        self.prev = frozenset(acked)
        if phantom:
            out.append(("P5 ack atomicity", f"acked holds ids no ack recorded: {short(phantom)}"))
        for (w, j) in sorted(self.partial)[:1]:
            out.append(
                (
                    "P5 ack atomicity",
                    f"torn ack: {self.counts[(w, j)]} of the {plan.size(w, j)} ids of ack w{w}#{j} (global_step "
                    f"{plan.step(w, j)}) are acked, the others not",
                )
            )
        k = [0] * plan.writers
        for w, js in self.present.items():
            k[w] = len(js)
            top = max(js)
            if top + 1 != len(js):
                missing = sorted(set(range(top + 1)) - js)
                out.append(
                    (
                        "P5 ack atomicity",
                        f"ack w{w}#{top} is visible but earlier ack(s) w{w}#{missing[:5]} of the same writer are not "
                        "(an ack was split, reordered or lost)",
                    )
                )
        step, flag = m["global_step"], m["optimizer_durable"]
        if self.counts:
            who = plan.decode(step)
            if who is None:
                out.append(
                    ("P5 ack atomicity", f"global_step is {step!r}, which no visible ack recorded (acks visible per writer: {k})")
                )
            else:
                w, j = who
                have = self.counts.get((w, j), 0)
                if have != plan.size(w, j):
                    out.append(
                        (
                            "P5 ack atomicity",
                            f"global_step {step} is ack w{w}#{j}'s, but {have} of that ack's {plan.size(w, j)} ids "
                            "are acked: the marker mixes two ack transactions",
                        )
                    )
                elif k[w] - 1 != j:
                    out.append(
                        (
                            "P5 ack atomicity",
                            f"global_step {step} is ack w{w}#{j}'s, but the later ack w{w}#{k[w] - 1} of the same "
                            "writer is already acked: the marker mixes two ack transactions",
                        )
                    )
                elif flag != plan.flag(w, j):
                    out.append(
                        (
                            "P5 ack atomicity",
                            f"global_step {step} is ack w{w}#{j}'s, but optimizer_durable={flag!r} is not that "
                            f"ack's flag ({plan.flag(w, j)!r}): the marker mixes two ack transactions",
                        )
                    )
        return out, k


# -- coordination --------------------------------------------------------------------------


class Shared:
    """Cross-process (and cross-thread) coordination: a start barrier, ack counters."""

    def __init__(self, parties: int, writers: int, seconds: float) -> None:
        mp = mp_context()
        self.barrier = mp.Barrier(max(1, parties))
        self.done = mp.Array("q", max(1, writers), lock=False)
        self.writers_left = mp.Value("i", writers)
        self.seconds = seconds

    def start(self) -> float:
        """Wait for every worker; return this worker's deadline."""
        try:
            self.barrier.wait(timeout=120)
        except threading.BrokenBarrierError:
            pass
        return time.monotonic() + self.seconds

    def writer_finished(self) -> None:
        with self.writers_left.get_lock():
            self.writers_left.value -= 1


def _ref(sid: str, writer: int, seed: int):
    return random_ref(random.Random(f"{seed}:{sid}:{writer}"), sid, writer=writer)


def _commit_retrying(store, retr: Retrier, refs, single: bool) -> Tuple[List[bool], bool]:
    """(flags, whether an earlier attempt raised and may have applied)."""
    raised = False
    while True:
        try:
            if single and len(refs) == 1:
                return [bool(store.commit_sample(refs[0]))], raised
            return [bool(x) for x in store.commit_samples(refs)], raised
        except Exception as e:  # noqa: BLE001
            if not is_transient(e):
                raise
            retr.transient += 1
            retr.last_error = f"{type(e).__name__}: {e}"
            raised = True
            time.sleep(0.005)


# -- roles (each runs in a thread, in this or a forked process) -------------------------


def role_dedup(store, shared: Shared, retr: Retrier, *, wid: int, plan: Callable[[int], Tuple[List[List[str]], bool]],
               seed: int):
    """Commit round after round of the planned batches until the deadline."""
    attempts: List[Tuple[str, Optional[bool]]] = []
    fresh_order: List[str] = []
    deadline = shared.start()
    rnd = 0
    while time.monotonic() < deadline and rnd < MAX_ROUNDS:
        batches, single = plan(rnd)
        rnd += 1
        for batch in batches:
            refs = [_ref(s, wid, seed) for s in batch]
            flags, raised = _commit_retrying(store, retr, refs, single)
            if len(flags) != len(batch):
                raise Violation("P4 dedup", f"commit_samples of {len(batch)} refs returned {len(flags)} flags")
            for sid, fl in zip(batch, flags):
                attempts.append((sid, None if raised else fl))
                if fl:
                    fresh_order.append(sid)
    return {"wid": wid, "attempts": attempts, "fresh_order": fresh_order, "transient": retr.transient, "rounds": rnd}


def role_acker(store, shared: Shared, retr: Retrier, *, plan: AckPlan, w: int, seed: int, chunk: int = 64):
    """Ack after ack in a tight loop until the deadline; the ids are committed a chunk ahead."""
    anomalies: List[Tuple[str, str]] = []
    j = 0

    def commit_chunk(first: int) -> None:
        ids = [s for jj in range(first, first + chunk) for s in plan.ids(w, jj)]
        for at in range(0, len(ids), 64):  # batches of realistic size
            part = ids[at:at + 64]
            flags, raised = _commit_retrying(store, retr, [_ref(s, 1000 + w, seed) for s in part], False)
            if not raised and not all(flags) and len(anomalies) < MAX_ANOMALIES:
                anomalies.append(("P4 dedup", f"commit_samples of never-committed ids {short(part)} returned not fresh"))

    try:
        commit_chunk(0)  # before the start, so that the acks begin together
        deadline = shared.start()
        while time.monotonic() < deadline:
            if j % chunk == 0 and j:
                commit_chunk(j)
            retr.call(store.record_train_ack, plan.ids(w, j), global_step=plan.step(w, j),
                      optimizer_durable=plan.flag(w, j))
            j += 1
            shared.done[w] = j
    finally:
        shared.writer_finished()
    return {"w": w, "acks": j, "anomalies": anomalies, "transient": retr.transient}


def role_reader(store, shared: Shared, retr: Retrier, *, plan: AckPlan, rid: str):
    """Poll durable_marker until every writer finished; check each read is whole and fresh."""
    anomalies: List[Tuple[str, str]] = []
    prev = [0] * plan.writers
    reads = 0
    checker = MarkerChecker(plan)
    shared.start()
    while True:
        finished = shared.writers_left.value <= 0
        floor = [shared.done[w] for w in range(plan.writers)]
        m = normalise_marker(retr.call(store.durable_marker))
        reads += 1
        found, k = checker.observe(m)
        for w in range(plan.writers):
            if k[w] < floor[w]:
                found.append(
                    (
                        "visibility",
                        f"reader {rid}: durable_marker shows {k[w]} acks of writer w{w}, but record_train_ack had "
                        f"returned for {floor[w]} of them before this read began (stale read)",
                    )
                )
            elif k[w] < prev[w]:
                found.append(("visibility", f"reader {rid}: acks of writer w{w} went backwards from {prev[w]} to {k[w]}"))
        seen = [(w, k[w] - 1) for w in range(plan.writers) if k[w] > 0]
        if seen and not found and reads % 4 == 0:
            w, j = seen[reads % len(seen)]
            sid = plan.ids(w, j)[0]
            if not retr.call(store.is_committed, sid):
                found.append(
                    (
                        "visibility",
                        f"reader {rid}: ack w{w}#{j} is visible but is_committed({sid!r}) is False, though its "
                        "commit returned before the ack",
                    )
                )
        prev = [max(a, b) for a, b in zip(prev, k)]
        for a in found:
            if len(anomalies) < MAX_ANOMALIES and a not in anomalies:
                anomalies.append(a)
        if finished or len(anomalies) >= MAX_ANOMALIES:
            break
    return {"reads": reads, "anomalies": anomalies, "transient": retr.transient}


# -- hosting roles in threads -------------------------------------------------------------


def host_roles(target, workdir: str, roles: List[Tuple[Any, Dict[str, Any]]], shared: Shared, *,
               shared_instance: bool = False, switch_interval: Optional[float] = None, keep_store: bool = False):
    """Run each role in its own thread; one store per role, or one for all (shared_instance)."""
    old = sys.getswitchinterval()
    results: List[Optional[Dict[str, Any]]] = [None] * len(roles)
    common = None
    try:
        if shared_instance:
            common = Retrier().call(target.open, workdir)
        if switch_interval:
            sys.setswitchinterval(switch_interval)

        def run_one(i: int, fn, kw) -> None:
            retr = Retrier()
            store = common
            started = False
            try:
                if store is None:
                    store = retr.call(target.open, workdir)
                started = True
                results[i] = {"ok": True, "value": fn(store, shared, retr, **kw)}
            except BaseException as e:  # noqa: BLE001
                shared.barrier.abort()  # nobody waits for a worker that is gone
                if not started and fn is role_acker:
                    shared.writer_finished()
                results[i] = {
                    "ok": False,
                    "error": f"{type(e).__name__}: {e}",
                    "prop": getattr(e, "prop", None),
                    "traceback": traceback.format_exc(),
                    "role": fn.__name__,
                }
            finally:
                if store is not None and store is not common:
                    safe_close(store)

        threads = [threading.Thread(target=run_one, args=(i, fn, kw), daemon=True) for i, (fn, kw) in enumerate(roles)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    if keep_store:
        return results, common
    if common is not None:
        safe_close(common)
    return results


# -- the final state ---------------------------------------------------------------------


def read_final(target, workdir: str, ids: List[str], store=None) -> Dict[str, Any]:
    retr = Retrier()
    own = store is None
    if own:
        store = retr.call(target.open, workdir)
    try:
        all_ids = [str(i) for i in retr.call(store.all_committed_ids)]
        count = retr.call(store.committed_count)
        marker = normalise_marker(retr.call(store.durable_marker))
        refs = {}
        for sid in ids:
            r = retr.call(store.get_committed, sid)
            refs[sid] = None if r is None else canon_ref(r)
        return {"all_ids": all_ids, "count": count, "marker": marker, "refs": refs}
    finally:
        if own:
            safe_close(store)


# -- analysis ----------------------------------------------------------------------------


class Findings:
    def __init__(self) -> None:
        self.items: List[Tuple[str, str, str]] = []  # (scenario, prop, text)
        self.warnings: List[str] = []
        self.counters: Dict[str, int] = {}

    def add(self, scenario: str, prop: str, text: str) -> None:
        if (scenario, prop, text) in self.items:
            return
        if sum(1 for _, p, _ in self.items if p == prop) < MAX_ANOMALIES:
            self.items.append((scenario, prop, text))

    def bump(self, k: str, n: int = 1) -> None:
        self.counters[k] = self.counters.get(k, 0) + int(n or 0)


def _role_failures(scenario: str, results: List[Optional[Dict[str, Any]]], f: Findings) -> bool:
    bad = False
    for r in results:
        if r is None or r["ok"]:
            continue
        bad = True
        err = r["error"]
        prop = r.get("prop") or ("liveness" if "StoreStuck" in err else "exception")
        f.add(scenario, prop, f"{r.get('role', 'worker')} failed: {err}")
    return bad


def contested_ids(roles: List[Dict[str, Any]], limit: int = 400) -> List[str]:
    seen: Dict[str, int] = {}
    for r in roles:
        for sid, _ in r["attempts"]:
            seen[sid] = seen.get(sid, 0) + 1
    multi = [s for s, n in seen.items() if n > 1]
    return multi[:limit]


def analyse_dedup(scenario: str, roles: List[Dict[str, Any]], final: Dict[str, Any], seed: int, f: Findings) -> None:
    fresh: Dict[str, List[int]] = {}
    indet: Dict[str, bool] = {}
    expected: Dict[str, None] = {}
    for r in roles:
        for sid, flag in r["attempts"]:
            expected[sid] = None
            if flag is None:
                indet[sid] = True
            elif flag:
                fresh.setdefault(sid, []).append(r["wid"])
        f.bump("commits", len(r["attempts"]))
    got = set(final["all_ids"])
    for sid in expected:
        winners = fresh.get(sid, [])
        if len(winners) > 1:
            same = " (the same worker more than once: a repeated id in one batch)" if len(set(winners)) < len(winners) else ""
            f.add(scenario, "P4 dedup", f"commit of {sid!r} returned fresh {len(winners)} times (workers {winners}) under concurrent commits{same}")
        elif not winners and not indet.get(sid):
            f.add(scenario, "P4 dedup", f"no commit of {sid!r} returned fresh (it is {'' if sid in got else 'not '}committed)")
    all_ids = final["all_ids"]
    if len(got) != len(all_ids):
        seen: set = set()
        dup = [i for i in all_ids if i in seen or seen.add(i)]
        f.add(scenario, "P4 dedup", f"all_committed_ids lists ids more than once: {short(set(dup))}")
    missing = [s for s in expected if s not in got]
    if missing:
        f.add(scenario, "lost-update", f"commits that returned are missing at the end: {short(missing)}")
    if final["count"] != len(got):
        f.add(scenario, "committed_count", f"committed_count() is {final['count']} but {len(got)} distinct ids are committed")
    for sid, stored in final["refs"].items():
        winners = fresh.get(sid, [])
        if stored is None:
            if sid in got:
                f.add(scenario, "round-trip", f"get_committed({sid!r}) is None though the id is listed as committed")
            continue
        if len(winners) == 1 and not indet.get(sid):
            d = diff_refs(active().canon(_ref(sid, winners[0], seed)), stored)
            if d:
                md = stored.get("metadata")
                w = md.get("writer") if isinstance(md, dict) else None
                if w == winners[0]:
                    f.add(scenario, "round-trip", f"get_committed({sid!r}) differs from the ref committed: {d}")
                else:
                    f.add(
                        scenario,
                        "P4 dedup",
                        f"{sid!r}: the stored ref is not the one whose commit returned fresh (worker {winners[0]}) "
                        f"but worker {w!r}'s: {d}",
                    )
    pos = {sid: i for i, sid in enumerate(all_ids)}
    for r in roles:
        seq = [pos[s] for s in r["fresh_order"] if s in pos]
        for i, (a, b) in enumerate(zip(seq, seq[1:])):
            if a > b:
                x, y = all_ids[a], all_ids[b]
                f.add(
                    scenario,
                    "all_committed_ids order",
                    f"worker {r['wid']}'s commit of {x!r} returned fresh before its commit of {y!r}, but "
                    f"all_committed_ids lists {y!r} first",
                )
                break


def analyse_acks(scenario: str, plan: AckPlan, final: Dict[str, Any], done: Dict[int, int], f: Findings) -> None:
    found, k = plan.check(final["marker"])
    for prop, text in found:
        f.add(scenario, prop, "final marker: " + text)
    for w, n in done.items():
        if k[w] < n:
            f.add(
                scenario,
                "lost-update",
                f"after every ack returned, durable_marker has {k[w]} of writer w{w}'s {n} acks (ack w{w}#{k[w]} "
                "is lost: concurrent acks overwrote each other)",
            )
    if done and all(k[w] >= n for w, n in done.items()):
        last = {plan.step(w, n - 1) for w, n in done.items() if n > 0}
        if last and final["marker"]["global_step"] not in last:
            f.add(scenario, "lost-update", f"final global_step {final['marker']['global_step']!r} is no writer's last step {sorted(last)}")


def _collect(name: str, results: List[Optional[Dict[str, Any]]], f: Findings) -> Optional[List[Dict[str, Any]]]:
    bad = _role_failures(name, results, f)
    vals = [r["value"] for r in results if r and r["ok"]]
    for v in vals:
        f.bump("transient_errors", v.get("transient", 0))
        f.bump("marker_reads", v.get("reads", 0))
        f.bump("acks", v.get("acks", 0) if "w" in v else 0)
        for prop, text in v.get("anomalies", []):
            f.add(name, prop, text)
    return None if bad else vals


def _flatten(name: str, res: List[Dict[str, Any]], f: Findings) -> Optional[List[Dict[str, Any]]]:
    out: List[Optional[Dict[str, Any]]] = []
    bad = False
    for r in res:
        if not r["ok"]:
            f.add(name, r.get("prop") or ("liveness" if r.get("hung") else "exception"), r["error"])
            bad = True
            continue
        out.extend(r["value"])
    vals = _collect(name, out, f)
    return None if bad or vals is None else vals


def _init(ctx: Context, d: str) -> None:
    """Create the store once before the workers start (a first open is not what this tier tests)."""
    r = run_children([Child("init", _open_close, (ctx.target, d), d)], timeout=120)[0]
    if not r["ok"]:
        raise Violation("exception", f"opening the store failed: {r['error']}")


def _open_close(target, d):
    s = Retrier().call(target.open, d)
    safe_close(s)
    return True


# -- scenarios -------------------------------------------------------------------------


def dedup_plan(tag: str, n_ids: int, wid: int, shuffle_seed: Optional[int]):
    """Round r: ids `<tag>.<r>.<i>`; the order is shared (lock step) or per-worker shuffled."""
    mode = wid % 3

    def plan(rnd: int):
        ids = [f"{tag}.{rnd}.{i}" for i in range(n_ids)]
        rng = random.Random(f"{shuffle_seed}:{wid}:{rnd}")
        if shuffle_seed is not None:
            if wid % 2:
                rng.shuffle(ids)
            else:
                ids.reverse()
        if mode == 0:
            return [[s] for s in ids], True
        hi = 4 if mode == 1 else 8
        out, i = [], 0
        while i < len(ids):
            n = rng.randint(1, hi)
            out.append(ids[i:i + n])
            i += n
        if len(out[0]) > 1:
            out[0] = out[0] + [out[0][0]]  # a repeated id in one batch: fresh once at most
        return out, False

    return plan


def scenario_dedup_processes(ctx: Context, f: Findings, variant: int, procs: int, seconds: float) -> None:
    name = f"dedup race ({procs} processes, {'lock-step' if variant == 0 else 'shuffled'} order)"
    d = ctx.subdir(f"t2-dedup-{variant}")
    _init(ctx, d)
    seed = random.Random(f"{ctx.seed}:dedup:{variant}").randrange(1 << 30)
    shared = Shared(parties=procs, writers=0, seconds=seconds)
    children = []
    for wid in range(procs):
        plan = dedup_plan(f"d{variant}", 60, wid, None if variant == 0 else seed)
        roles = [(role_dedup, dict(wid=wid, plan=plan, seed=seed))]
        children.append(Child(f"dedup-p{wid}", host_roles, (ctx.target, d, roles, shared), d))
    out = _flatten(name, run_children(children, timeout=120 + 4 * seconds), f)
    if out is None:
        return
    fin = run_children([Child("final", read_final, (ctx.target, d, contested_ids(out)), d)], timeout=300)[0]
    if not fin["ok"]:
        f.add(name, fin.get("prop") or "exception", f"reading the final state failed: {fin['error']}")
        return
    analyse_dedup(name, out, fin["value"], seed, f)
    shutil.rmtree(d, ignore_errors=True)


def scenario_acks_processes(ctx: Context, f: Findings, writers_per_proc: List[int], readers: int, seconds: float,
                            tag: str) -> None:
    W = sum(writers_per_proc)
    name = f"acks under readers ({W} writer(s) in {len(writers_per_proc)} process(es), {readers} reader process(es), a committer)"
    d = ctx.subdir(f"t2-{tag}")
    _init(ctx, d)
    seed = random.Random(f"{ctx.seed}:{tag}").randrange(1 << 30)
    plan = AckPlan(tag, W, max_ids=16, seed=seed)
    shared = Shared(parties=W + readers + 1, writers=W, seconds=seconds)
    children = []
    w = 0
    for p, n in enumerate(writers_per_proc):
        roles = [(role_acker, dict(plan=plan, w=w + i, seed=seed)) for i in range(n)]
        w += n
        children.append(Child(f"acker-p{p}", host_roles, (ctx.target, d, roles, shared), d))
    for r in range(readers):
        children.append(Child(f"reader-{r}", host_roles, (ctx.target, d, [(role_reader, dict(plan=plan, rid=f"p{r}"))], shared), d))
    cplan = dedup_plan(f"{tag}c", 40, 1, seed)
    children.append(Child("committer", host_roles, (ctx.target, d, [(role_dedup, dict(wid=900, plan=cplan, seed=seed))], shared), d))
    out = _flatten(name, run_children(children, timeout=120 + 4 * seconds), f)
    if out is None:
        return
    fin = run_children([Child("final", read_final, (ctx.target, d, []), d)], timeout=300)[0]
    if not fin["ok"]:
        f.add(name, fin.get("prop") or "exception", f"reading the final state failed: {fin['error']}")
        return
    analyse_acks(name, plan, fin["value"], {v["w"]: v["acks"] for v in out if "w" in v}, f)
    analyse_dedup(name, [v for v in out if "attempts" in v], fin["value"], seed, f)
    shutil.rmtree(d, ignore_errors=True)


class _PeerGone(Exception):
    pass


def _recv(conn, timeout: float = 90.0):
    if not conn.poll(timeout):
        raise _PeerGone(f"no message from the other process for {timeout:.0f}s")
    try:
        return conn.recv()
    except EOFError as e:
        raise _PeerGone("the other process exited") from e


def _pingpong(target, d, role: int, conn, other, rounds: int, seed: int):
    """Two long-lived instances take turns; each checks the other's writes exactly."""
    from .records import active

    other.close()
    retr = Retrier()
    store = retr.call(target.open, d)
    found: List[Tuple[str, str]] = []
    try:
        # warm every cache a store might keep: reads of everything, negative lookups
        retr.call(store.durable_marker)
        retr.call(store.committed_count)
        retr.call(store.all_committed_ids)
        for r in range(rounds):
            retr.call(store.is_committed, f"pp.{r}.0")
            retr.call(store.get_committed, f"pp.{r}.0")
        conn.send("ready")
        _recv(conn)
        order: List[str] = []
        acked: set = set()
        step = None
        flag = False
        for r in range(rounds):
            new = [f"pp.{r}.{i}" for i in range(3)]
            st = None if r % 3 == 2 else 100 + r
            if r % 2 == role:
                refs = [_ref(s, role, seed) for s in new]
                flags = [bool(x) for x in retr.call(store.commit_samples, refs)]
                if flags != [True] * 3:
                    found.append(("P4 dedup", f"round {r}: committing new ids {new} returned {flags}"))
                if order:
                    again = [bool(x) for x in retr.call(store.commit_samples, [_ref(order[-1], role, seed)])]
                    if again != [False]:
                        found.append(
                            ("P4 dedup", f"round {r}: re-committing {order[-1]!r} (committed by the other process) returned {again}")
                        )
                retr.call(store.record_train_ack, new[:2], global_step=st, optimizer_durable=(r % 2 == 0))
                conn.send(("done", r))
            else:
                msg = _recv(conn)
                if msg != ("done", r):
                    raise _PeerGone(f"unexpected message {msg!r} in round {r}")
                for s in new:
                    if not retr.call(store.is_committed, s):
                        found.append(("visibility", f"round {r}: is_committed({s!r}) is False in a long-lived instance after another process's commit of it returned"))
                        break
                    got = retr.call(store.get_committed, s)
                    if got is None:
                        found.append(("visibility", f"round {r}: get_committed({s!r}) is None in a long-lived instance after another process's commit of it returned"))
                        break
                    dd = diff_refs(active().canon(_ref(s, 1 - role, seed)), canon_ref(got))
                    if dd:
                        found.append(("round-trip", f"round {r}: get_committed({s!r}) of another process's commit differs: {dd}"))
                        break
                again = [bool(x) for x in retr.call(store.commit_samples, [_ref(new[0], role, seed)])]
                if again != [False]:
                    found.append(("P4 dedup", f"round {r}: committing {new[0]!r}, already committed by the other process, returned {again} in a long-lived instance"))
            order.extend(new)
            acked |= set(new[:2])
            if st is not None:
                step = st
            flag = r % 2 == 0
            cnt = retr.call(store.committed_count)
            if cnt != len(order):
                found.append(("visibility", f"round {r}: committed_count() is {cnt!r} in a long-lived instance, expected {len(order)}"))
            ids = [str(i) for i in retr.call(store.all_committed_ids)]
            if ids != order:
                found.append(("visibility", f"round {r}: all_committed_ids() in a long-lived instance is {ids}, expected {order}"))
            m = normalise_marker(retr.call(store.durable_marker))
            if m["acked"] != acked or m["global_step"] != step or m["optimizer_durable"] != flag:
                found.append(
                    (
                        "visibility",
                        f"round {r}: durable_marker() in a long-lived instance is acked={short(m['acked'])} "
                        f"global_step={m['global_step']!r} optimizer_durable={m['optimizer_durable']!r}; expected "
                        f"acked={short(acked)} global_step={step!r} optimizer_durable={flag!r}",
                    )
                )
            # keep both sides in lock step so the next writer starts after this check
            if r % 2 != role:
                conn.send(("checked", r))
            elif _recv(conn) != ("checked", r):
                raise _PeerGone(f"the other process did not confirm round {r}")
    finally:
        safe_close(store)
    return {"anomalies": found[:MAX_ANOMALIES], "transient": retr.transient}


def scenario_pingpong(ctx: Context, f: Findings, rounds: int) -> None:
    name = "long-lived instances in two processes"
    d = ctx.subdir("t2-pingpong")
    _init(ctx, d)
    a, b = mp_context().Pipe()
    seed = random.Random(f"{ctx.seed}:pp").randrange(1 << 30)
    kids = [
        Child("pp-a", _pingpong, (ctx.target, d, 0, a, b, rounds, seed), d),
        Child("pp-b", _pingpong, (ctx.target, d, 1, b, a, rounds, seed), d),
    ]
    res = run_children(kids, timeout=180, after_start=lambda: (a.close(), b.close()))
    peer_gone = [r for r in res if not r["ok"] and "_PeerGone" in r["error"]]
    for r in res:
        if not r["ok"]:
            if r in peer_gone and len(peer_gone) < len(res):
                continue  # the other side's own error explains it
            f.add(name, r.get("prop") or ("liveness" if r.get("hung") else "exception"), r["error"])
            continue
        f.bump("transient_errors", r["value"]["transient"])
        for prop, text in r["value"]["anomalies"]:
            f.add(name, prop, text)
    shutil.rmtree(d, ignore_errors=True)


def _threads_scenario(target, d, seed: int, n_dedup: int, ackers: int, readers: int, seconds: float, switch: float,
                      max_ids: int = 16):
    """All roles in threads of this process on ONE shared instance; the final state read through it."""
    plan = AckPlan("ta", ackers, max_ids=max_ids, seed=seed)
    shared = Shared(parties=n_dedup + ackers + readers, writers=ackers, seconds=seconds)
    roles = []
    for w in range(n_dedup):
        roles.append((role_dedup, dict(wid=w, plan=dedup_plan("t", 60, w, None if w < 2 else seed), seed=seed)))
    roles += [(role_acker, dict(plan=plan, w=w, seed=seed)) for w in range(ackers)]
    roles += [(role_reader, dict(plan=plan, rid=f"thread-{r}")) for r in range(readers)]
    results, store = host_roles(target, d, roles, shared, shared_instance=True, switch_interval=switch, keep_store=True)
    try:
        vals = [r["value"] for r in results if r and r["ok"]]
        final = read_final(target, d, contested_ids([v for v in vals if "attempts" in v]), store=store)
    finally:
        safe_close(store)
    return {"results": results, "final": final, "plan": plan, "seed": seed}


def scenario_threads(ctx: Context, f: Findings, n_dedup: int, ackers: int, readers: int, seconds: float,
                     max_ids: int = 16) -> None:
    name = f"threads sharing one instance ({n_dedup} committers, {ackers} acker(s), {readers} readers)"
    d = ctx.subdir("t2-threads")
    if ctx.profile == "durable":
        _init(ctx, d)
    seed = random.Random(f"{ctx.seed}:threads:{d}").randrange(1 << 30)
    r = run_children(
        [Child("threads", _threads_scenario, (ctx.target, d, seed, n_dedup, ackers, readers, seconds, 1e-5, max_ids), d)],
        timeout=120 + 4 * seconds,
    )[0]
    if not r["ok"]:
        f.add(name, r.get("prop") or ("liveness" if r.get("hung") else "exception"), r["error"])
        return
    v = r["value"]
    errs = [x for x in v["results"] if x and not x["ok"]]
    if errs and ctx.profile == "durable" and all(_thread_affinity(x["error"]) for x in errs):
        f.warnings.append(
            "a store instance refused use from several threads "
            f"({errs[0]['error']}); the shared-instance thread checks were skipped (one instance per thread works)"
        )
        return
    vals = _collect(name, v["results"], f)
    if vals is None:
        return
    analyse_dedup(name, [x for x in vals if "attempts" in x], v["final"], v["seed"], f)
    analyse_acks(name, v["plan"], v["final"], {x["w"]: x["acks"] for x in vals if "w" in x}, f)
    shutil.rmtree(d, ignore_errors=True)


def _thread_affinity(err: str) -> bool:
    e = err.lower()
    return "thread" in e and ("same thread" in e or "programmingerror" in e or "different thread" in e)


def run(ctx: Context) -> TierResult:
    t0 = time.monotonic()
    res = TierResult(tier=2, status=PASSED, properties=list(PROPERTIES))
    f = Findings()
    secs = float(ctx.overrides.get("t2_seconds") or 1.5 * ctx.budget.t2_scale)
    stop_early = bool(ctx.overrides.get("stop_at_first_failure"))
    if ctx.profile == "durable":
        res.notes.append("several processes (one instance each), plus threads sharing one instance")
        plan = [
            ("dedup race across processes (lock-step order)",
             lambda: scenario_dedup_processes(ctx, f, 0, procs=6, seconds=secs)),
            ("dedup race across processes (shuffled order)",
             lambda: scenario_dedup_processes(ctx, f, 1, procs=6, seconds=secs)),
            ("acks under readers in other processes (one writer)",
             lambda: scenario_acks_processes(ctx, f, [1], readers=2, seconds=secs, tag="a1")),
            ("acks under readers in other processes (three writers)",
             lambda: scenario_acks_processes(ctx, f, [1, 1, 1], readers=1, seconds=secs, tag="a3")),
            ("long-lived instances in two processes",
             lambda: scenario_pingpong(ctx, f, rounds=max(6, int(6 * ctx.budget.t2_scale)))),
            ("threads sharing one instance",
             lambda: scenario_threads(ctx, f, n_dedup=4, ackers=2, readers=2, seconds=secs)),
        ]
    else:
        res.notes.append("volatile profile: threads sharing one instance; several processes not applicable")
        plan = [
            ("threads sharing one instance (dedup race, two ackers, readers)",
             lambda: scenario_threads(ctx, f, n_dedup=4, ackers=2, readers=2, seconds=secs)),
            ("threads sharing one instance (one acker of large acks, readers)",
             lambda: scenario_threads(ctx, f, n_dedup=0, ackers=1, readers=2, seconds=secs, max_ids=48)),
        ]
    try:
        for title, fn in plan:
            ctx.progress(f"tier 2 concurrency: {title}")
            fn()
            if stop_early and f.items:
                res.notes.append("stopped at the first failing scenario")
                break
    except Violation as e:
        f.add("setup", e.prop, e.message)
    res.counters = dict(f.counters)
    res.counters["seconds_per_scenario"] = secs
    if f.counters.get("transient_errors"):
        res.warnings.append(
            f"the store raised {f.counters['transient_errors']} lock/busy/timeout error(s) under concurrent load; "
            "they were retried, each such operation counted as maybe-applied"
        )
    res.warnings.extend(f.warnings)
    if f.items:
        res.status = FAILED
        by_prop: Dict[str, List[Tuple[str, str]]] = {}
        for scen, prop, text in f.items:
            by_prop.setdefault(prop, []).append((scen, text))
        for prop, items in by_prop.items():
            scen, text = items[0]
            res.counterexamples.append(
                Counterexample(
                    tier=2,
                    property=prop,
                    message=f"{scen}: {text}",
                    steps=[f"{s}: {t}" for s, t in items],
                    reproduce=ctx.reproduce(2) + "  (timing-dependent: may need a few runs)",
                )
            )
    res.duration_s = time.monotonic() - t0
    return res
