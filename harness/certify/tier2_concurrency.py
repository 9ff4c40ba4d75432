"""Tier 2, concurrency: processes and threads at once on one store.

Scenarios (durable profile: processes, each with threads; volatile: threads
sharing the one instance):

* **dedup race** (P4): workers commit the same ids at the same moment, in
  batches and one by one; exactly one commit per id returns fresh, the stored
  ref is that commit's ref, each worker's fresh ids appear in its call order.
* **acks under readers** (P5, no lost update): ackers record acks whose ids are
  tagged by (writer, ack number) and whose `global_step` names the ack, while
  committers commit and readers in other processes poll `durable_marker`. Every
  read must be a whole state: each ack all-or-nothing, each writer's acks a
  prefix, the step naming the latest ack of its writer and the flag that ack's
  flag. Reads never go backwards and include every ack that returned before the
  read started. At the end every ack and commit that returned is there.
* **long-lived instances** (visibility): two processes open the store first,
  then take turns writing; each checks, through the instance it opened before,
  that the other's commits, acks and dedup state are visible exactly.

Lock/busy/timeout errors are retried with a generous deadline and reported as
warnings, so a correct store is not failed for the load this tier creates;
an operation that raised is treated as "may or may not have happened".
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import threading
import time
import traceback
from typing import Any, Dict, List, Optional, Tuple

from .certificate import FAILED, NOT_APPLICABLE, PASSED, Counterexample, TierResult
from .common import Child, Context, Retrier, StoreStuck, mp_context, random_ref, run_children, safe_close
from .model import Violation, canon_ref, diff_refs, normalise_marker, short

PROPERTIES = ["P4 dedup", "P5 ack atomicity", "lost-update", "visibility", "all_committed_ids order"]
MAX_ANOMALIES = 5
STEP_BASE = 7_000_000
STEP_STRIDE = 100_000


# -- the ack plan: every ack recognisable from its ids and its step ----------------------


class AckPlan:
    def __init__(self, tag: str, writers: int, per_writer: int, max_ids: int, seed: int) -> None:
        rng = random.Random(seed)
        self.tag = tag
        self.writers = writers
        self.per_writer = per_writer
        self.sizes = [[rng.randint(1, max_ids) for _ in range(per_writer)] for _ in range(writers)]
        self._owner: Dict[str, Tuple[int, int]] = {}
        for w in range(writers):
            for j in range(per_writer):
                for sid in self.ids(w, j):
                    self._owner[sid] = (w, j)

    def ids(self, w: int, j: int) -> List[str]:
        return [f"{self.tag}.w{w}.a{j}.{i}" for i in range(self.sizes[w][j])]

    def step(self, w: int, j: int) -> int:
        return STEP_BASE + w * STEP_STRIDE + j

    def flag(self, w: int, j: int) -> bool:
        return (w + j) % 2 == 1

    def decode(self, step: Any) -> Optional[Tuple[int, int]]:
        if not isinstance(step, int):
            return None
        w, j = divmod(step - STEP_BASE, STEP_STRIDE)
        if 0 <= w < self.writers and 0 <= j < self.per_writer:
            return w, j
        return None

    def check(self, m: Dict[str, Any]) -> Tuple[List[Tuple[str, str]], List[int]]:
        """Anomalies (property, text) of one marker read, and acks visible per writer."""
        out: List[Tuple[str, str]] = []
        counts: Dict[Tuple[int, int], int] = {}
        phantom = []
        for sid in m["acked"]:
            o = self._owner.get(sid)
            if o is None:
                if sid.startswith(self.tag + "."):
                    phantom.append(sid)
                continue
            counts[o] = counts.get(o, 0) + 1
        if phantom:
            out.append(("P5 ack atomicity", f"acked holds ids no ack recorded: {short(phantom)}"))
        k = [0] * self.writers
        for w in range(self.writers):
            present = sorted(j for (ww, j) in counts if ww == w)
            for j in present:
                n, size = counts[(w, j)], self.sizes[w][j]
                if n != size:
                    out.append(
                        (
                            "P5 ack atomicity",
                            f"torn ack: {n} of the {size} ids of ack w{w}#{j} (global_step "
                            f"{self.step(w, j)}) are acked, the others not",
                        )
                    )
            if present and present != list(range(len(present))):
                missing = sorted(set(range(present[-1] + 1)) - set(present))
                out.append(
                    (
                        "P5 ack atomicity",
                        f"ack w{w}#{present[-1]} is visible but the earlier ack(s) w{w}#{missing[:5]} of the same "
                        "writer are not (an ack was split or reordered)",
                    )
                )
            k[w] = len(present)
        step, flag = m["global_step"], m["optimizer_durable"]
        if counts:
            who = self.decode(step)
            if who is None:
                out.append(
                    (
                        "P5 ack atomicity",
                        f"global_step is {step!r}, which no visible ack recorded (acks visible: "
                        f"{ {f'w{w}': k[w] for w in range(self.writers)} })",
                    )
                )
            else:
                w, j = who
                if counts.get((w, j), 0) != self.sizes[w][j]:
                    out.append(
                        (
                            "P5 ack atomicity",
                            f"global_step {step} is ack w{w}#{j}'s but that ack's ids are not all acked "
                            f"({counts.get((w, j), 0)} of {self.sizes[w][j]}): the marker mixes two ack transactions",
                        )
                    )
                elif k[w] - 1 != j:
                    out.append(
                        (
                            "P5 ack atomicity",
                            f"global_step {step} is ack w{w}#{j}'s but the later ack w{w}#{k[w] - 1} of the same "
                            "writer is already acked: the marker mixes two ack transactions",
                        )
                    )
                elif flag != self.flag(w, j):
                    out.append(
                        (
                            "P5 ack atomicity",
                            f"global_step {step} is ack w{w}#{j}'s but optimizer_durable={flag!r} is not that "
                            f"ack's flag ({self.flag(w, j)!r}): the marker mixes two ack transactions",
                        )
                    )
        return out, k


# -- roles (each runs in a thread, in this or a forked process) -------------------------


class Shared:
    """Cross-process coordination: a start barrier, per-writer ack counters."""

    def __init__(self, parties: int, writers: int, writer_roles: int) -> None:
        mp = mp_context()
        self.barrier = mp.Barrier(max(1, parties))
        self.done = mp.Array("q", max(1, writers), lock=False)
        self.writers_left = mp.Value("i", writer_roles)

    def start(self) -> None:
        try:
            self.barrier.wait(timeout=120)
        except threading.BrokenBarrierError:
            pass

    def writer_finished(self) -> None:
        with self.writers_left.get_lock():
            self.writers_left.value -= 1


def _ref(sid: str, writer: int, seed: int):
    return random_ref(random.Random(f"{seed}:{sid}:{writer}"), sid, writer=writer)


def role_dedup(store, shared: Shared, retr: Retrier, *, wid: int, batches: List[List[str]], seed: int, single: bool):
    """Commit the given batches; report per id what each attempt returned (None = raised)."""
    refs = {sid: _ref(sid, wid, seed) for b in batches for sid in b}
    attempts: List[Tuple[str, Optional[bool]]] = []
    fresh_order: List[str] = []
    shared.start()
    for batch in batches:
        rs = [refs[s] for s in batch]
        while True:
            try:
                if single and len(rs) == 1:
                    flags = [bool(store.commit_sample(rs[0]))]
                else:
                    flags = [bool(x) for x in store.commit_samples(rs)]
                break
            except Exception as e:  # noqa: BLE001
                if not _transient(e, retr):
                    raise
                attempts.extend((s, None) for s in batch)
        if len(flags) != len(batch):
            raise Violation("P4 dedup", f"commit_samples of {len(batch)} refs returned {len(flags)} flags")
        for s, f in zip(batch, flags):
            attempts.append((s, f))
            if f:
                fresh_order.append(s)
    return {"wid": wid, "attempts": attempts, "fresh_order": fresh_order, "transient": retr.transient}


def _transient(e: BaseException, retr: Retrier) -> bool:
    from .common import is_transient

    if not is_transient(e):
        return False
    retr.transient += 1
    retr.last_error = f"{type(e).__name__}: {e}"
    time.sleep(0.005)
    return True


def role_acker(store, shared: Shared, retr: Retrier, *, plan: AckPlan, w: int, seed: int):
    """Commit then ack each of writer w's acks in order; publish progress in shared.done[w]."""
    anomalies: List[Tuple[str, str]] = []
    shared.start()
    try:
        for j in range(plan.per_writer):
            ids = plan.ids(w, j)
            refs = [_ref(s, 1000 + w, seed) for s in ids]
            indeterminate = False
            while True:
                try:
                    flags = [bool(x) for x in store.commit_samples(refs)]
                    break
                except Exception as e:  # noqa: BLE001
                    if not _transient(e, retr):
                        raise
                    indeterminate = True
            if not indeterminate and not all(flags) and len(anomalies) < MAX_ANOMALIES:
                anomalies.append(("P4 dedup", f"commit_samples of never-committed ids {short(ids)} returned {flags}"))
            retr.call(
                store.record_train_ack, list(ids), global_step=plan.step(w, j), optimizer_durable=plan.flag(w, j)
            )
            shared.done[w] = j + 1
    finally:
        shared.writer_finished()
    return {"acks": plan.per_writer, "anomalies": anomalies, "transient": retr.transient}


def role_reader(store, shared: Shared, retr: Retrier, *, plan: AckPlan, rid: str):
    """Poll durable_marker until every writer finished; check each read is whole and fresh."""
    anomalies: List[Tuple[str, str]] = []
    prev = [0] * plan.writers
    reads = 0
    shared.start()
    while True:
        finished = shared.writers_left.value <= 0
        floor = [shared.done[w] for w in range(plan.writers)]
        m = normalise_marker(retr.call(store.durable_marker))
        reads += 1
        found, k = plan.check(m)
        for w in range(plan.writers):
            if k[w] < floor[w]:
                found.append(
                    (
                        "visibility",
                        f"reader {rid}: durable_marker misses ack w{w}#{k[w]} (and maybe later ones) although "
                        f"record_train_ack for it had returned before this read began (saw {k[w]} of {floor[w]} acks)",
                    )
                )
            elif k[w] < prev[w]:
                found.append(
                    ("visibility", f"reader {rid}: acks of writer w{w} went backwards from {prev[w]} to {k[w]}")
                )
        # the newest visible ack's samples were committed before it: they must be visible too
        seen = [(w, k[w] - 1) for w in range(plan.writers) if k[w] > 0]
        if seen and not found:
            w, j = seen[reads % len(seen)]
            sid = plan.ids(w, j)[0]
            if not retr.call(store.is_committed, sid):
                found.append(
                    (
                        "visibility",
                        f"reader {rid}: ack w{w}#{j} is visible but is_committed({sid!r}) is False although its "
                        "commit returned before the ack",
                    )
                )
        prev = [max(a, b) for a, b in zip(prev, k)]
        for a in found:
            if len(anomalies) < MAX_ANOMALIES:
                anomalies.append((a[0], a[1]))
        if finished or len(anomalies) >= MAX_ANOMALIES:
            break
    return {"reads": reads, "anomalies": anomalies, "transient": retr.transient}


# -- hosting roles in threads -------------------------------------------------------------


def host_roles(target, workdir: str, roles: List[Tuple[Any, Dict[str, Any]]], shared: Shared, *,
               shared_instance: bool = False, switch_interval: Optional[float] = None, keep_store: bool = False):
    """Run each role in its own thread; one store per role, or one for all (shared_instance)."""
    old = sys.getswitchinterval()
    if switch_interval:
        sys.setswitchinterval(switch_interval)
    results: List[Dict[str, Any]] = [None] * len(roles)  # type: ignore[list-item]
    common = None
    try:
        if shared_instance:
            common = Retrier().call(target.open, workdir)

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


# -- the final state: read in a fresh instance --------------------------------------------


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
        if sum(1 for s, p, _ in self.items if p == prop) < MAX_ANOMALIES:
            self.items.append((scenario, prop, text))

    def bump(self, k: str, n: int = 1) -> None:
        self.counters[k] = self.counters.get(k, 0) + n


def _role_failures(scenario: str, results: List[Dict[str, Any]], f: Findings) -> bool:
    bad = False
    for r in results:
        if r is None:
            continue
        if not r["ok"]:
            bad = True
            err = r["error"]
            if r.get("prop"):
                prop = r["prop"]
            elif "StoreStuck" in err:
                prop = "liveness"
            else:
                prop = "exception"
            f.add(scenario, prop, f"{r.get('role', 'worker')} failed: {err}")
    return bad


def analyse_dedup(scenario: str, roles: List[Dict[str, Any]], final: Dict[str, Any], seed: int,
                  expected_ids: List[str], f: Findings) -> None:
    fresh: Dict[str, List[int]] = {}
    indet: Dict[str, bool] = {}
    for r in roles:
        for sid, flag in r["attempts"]:
            if flag is None:
                indet[sid] = True
            elif flag:
                fresh.setdefault(sid, []).append(r["wid"])
        f.bump("commits", len(r["attempts"]))
    for sid in expected_ids:
        winners = fresh.get(sid, [])
        if len(winners) > 1:
            f.add(scenario, "P4 dedup", f"commit of {sid!r} returned fresh {len(winners)} times (workers {winners}) under concurrent commits")
        elif not winners and not indet.get(sid):
            f.add(scenario, "P4 dedup", f"no commit of {sid!r} returned fresh, yet {'it is' if sid in set(final['all_ids']) else 'it is not'} committed")
    all_ids = final["all_ids"]
    if len(set(all_ids)) != len(all_ids):
        dup = sorted({i for i in all_ids if all_ids.count(i) > 1})
        f.add(scenario, "P4 dedup", f"all_committed_ids lists ids more than once: {short(dup)}")
    got = set(all_ids)
    missing = [s for s in expected_ids if s not in got]
    if missing:
        f.add(scenario, "lost-update", f"commits that returned are missing at the end: {short(missing)}")
    for sid in expected_ids:
        winners = fresh.get(sid, [])
        stored = final["refs"].get(sid)
        if sid in final["refs"] and stored is None and sid in got:
            f.add(scenario, "round-trip", f"get_committed({sid!r}) is None though the id is listed as committed")
            continue
        if len(winners) == 1 and stored is not None and not indet.get(sid):
            want = _ref(sid, winners[0], seed)
            from reference_impl.contracts import ref_to_dict

            d = diff_refs(ref_to_dict(want), stored)
            if d:
                w = stored.get("metadata", {}).get("writer") if isinstance(stored.get("metadata"), dict) else None
                f.add(
                    scenario,
                    "P4 dedup",
                    f"{sid!r}: the stored ref is not the one whose commit returned fresh (worker {winners[0]}); "
                    f"stored ref is worker {w!r}'s: {d}",
                )
    pos = {sid: i for i, sid in enumerate(all_ids)}
    for r in roles:
        seq = [pos[s] for s in r["fresh_order"] if s in pos]
        if any(a > b for a, b in zip(seq, seq[1:])):
            i = next(i for i, (a, b) in enumerate(zip(seq, seq[1:])) if a > b)
            a, b = r["fresh_order"][i], r["fresh_order"][i + 1]
            f.add(
                scenario,
                "all_committed_ids order",
                f"worker {r['wid']} committed {a!r} (fresh) before {b!r} (fresh), but all_committed_ids lists "
                f"{b!r} first",
            )


def analyse_acks(scenario: str, plan: AckPlan, final: Dict[str, Any], f: Findings) -> None:
    found, k = plan.check(final["marker"])
    for prop, text in found:
        f.add(scenario, prop, "final marker: " + text)
    for w in range(plan.writers):
        if k[w] < plan.per_writer:
            f.add(
                scenario,
                "lost-update",
                f"after all acks returned, writer w{w} has {k[w]} of its {plan.per_writer} acks in durable_marker "
                f"(ack w{w}#{k[w]} lost; concurrent acks overwrote each other)",
            )
    if all(k[w] == plan.per_writer for w in range(plan.writers)):
        last = {plan.step(w, plan.per_writer - 1) for w in range(plan.writers)}
        if final["marker"]["global_step"] not in last:
            f.add(scenario, "lost-update", f"final global_step {final['marker']['global_step']!r} is no writer's last step {sorted(last)}")


# -- scenarios -------------------------------------------------------------------------


def _dedup_batches(rng: random.Random, ids: List[str], mode: int) -> Tuple[List[List[str]], bool]:
    if mode == 0:
        return [[s] for s in ids], True
    hi = 4 if mode == 1 else 8
    out, i = [], 0
    while i < len(ids):
        n = rng.randint(1, hi)
        out.append(ids[i : i + n])
        i += n
    # a repeated id inside a batch: fresh once at most
    if out and len(out[0]) > 1:
        out[0].append(out[0][0])
    return out, False


def scenario_dedup_processes(ctx: Context, f: Findings, round_no: int, procs: int, per_proc: int, n_ids: int) -> None:
    name = f"dedup race ({procs} processes x {per_proc} threads)"
    d = ctx.subdir(f"t2-dedup-{round_no}")
    _init(ctx, d)
    rng = random.Random(ctx.seed * 7919 + round_no)
    seed = rng.randrange(1 << 30)
    ids = [f"d{round_no}.{i}" for i in range(n_ids)]
    workers = procs * per_proc
    shared = Shared(parties=workers, writers=0, writer_roles=0)
    children = []
    wid = 0
    for p in range(procs):
        roles = []
        for t in range(per_proc):
            order = list(ids)
            if round_no % 2 == 1:
                rng.shuffle(order) if wid % 2 else order.reverse()
            batches, single = _dedup_batches(rng, order, wid % 3)
            roles.append((role_dedup, dict(wid=wid, batches=batches, seed=seed, single=single)))
            wid += 1
        children.append(Child(f"dedup-p{p}", host_roles, (ctx.target, d, roles, shared), d))
    res = run_children(children, timeout=300)
    roles_out = _flatten(name, res, f)
    if roles_out is None:
        return
    fin = run_children([Child("final", read_final, (ctx.target, d, ids), d)], timeout=120)[0]
    if not fin["ok"]:
        f.add(name, fin.get("prop") or "exception", f"reading the final state failed: {fin['error']}")
        return
    analyse_dedup(name, roles_out, fin["value"], seed, ids, f)
    shutil.rmtree(d, ignore_errors=True)


def _flatten(name: str, res: List[Dict[str, Any]], f: Findings) -> Optional[List[Dict[str, Any]]]:
    out = []
    bad = False
    for r in res:
        if not r["ok"]:
            f.add(name, r.get("prop") or ("liveness" if r.get("hung") else "exception"), r["error"])
            bad = True
            continue
        if _role_failures(name, r["value"], f):
            bad = True
        out.extend(x["value"] for x in r["value"] if x and x["ok"])
    for v in out:
        f.bump("transient_errors", v.get("transient", 0))
    return None if bad else out


def _init(ctx: Context, d: str) -> None:
    """Create the store once before the workers start (first open is not what this tier tests)."""
    r = run_children([Child("init", _open_close, (ctx.target, d), d)], timeout=120)[0]
    if not r["ok"]:
        raise Violation("exception", f"opening the store failed: {r['error']}")


def _open_close(target, d):
    s = Retrier().call(target.open, d)
    safe_close(s)
    return True


def scenario_acks_processes(ctx: Context, f: Findings, writers_per_proc: List[int], readers: int, per_writer: int,
                            committer_ids: int, tag: str) -> None:
    W = sum(writers_per_proc)
    name = f"acks under readers ({W} writer(s) in {len(writers_per_proc)} process(es), {readers} reader process(es))"
    d = ctx.subdir(f"t2-{tag}")
    _init(ctx, d)
    rng = random.Random(f"{ctx.seed}:{tag}")
    seed = rng.randrange(1 << 30)
    plan = AckPlan(tag, W, per_writer, max_ids=12, seed=seed)
    parties = W + readers + (1 if committer_ids else 0)
    shared = Shared(parties=parties, writers=W, writer_roles=W)
    children = []
    w = 0
    for p, n in enumerate(writers_per_proc):
        roles = [(role_acker, dict(plan=plan, w=w + i, seed=seed)) for i in range(n)]
        w += n
        children.append(Child(f"acker-p{p}", host_roles, (ctx.target, d, roles, shared), d))
    for r in range(readers):
        children.append(Child(f"reader-{r}", host_roles, (ctx.target, d, [(role_reader, dict(plan=plan, rid=f"r{r}"))], shared), d))
    cids = [f"{tag}.c{i}" for i in range(committer_ids)]
    if committer_ids:
        batches, _ = _dedup_batches(rng, cids, 1)
        children.append(Child("committer", host_roles, (ctx.target, d, [(role_dedup, dict(wid=900, batches=batches, seed=seed, single=False))], shared), d))
    res = run_children(children, timeout=300)
    out = _flatten(name, res, f)
    if out is None:
        return
    for v in out:
        for prop, text in v.get("anomalies", []):
            f.add(name, prop, text)
        f.bump("marker_reads", v.get("reads", 0))
        f.bump("acks", v.get("acks", 0))
    fin = run_children([Child("final", read_final, (ctx.target, d, cids[:50]), d)], timeout=120)[0]
    if not fin["ok"]:
        f.add(name, fin.get("prop") or "exception", f"reading the final state failed: {fin['error']}")
        return
    analyse_acks(name, plan, fin["value"], f)
    dedup_roles = [v for v in out if "attempts" in v]
    if dedup_roles:
        analyse_dedup(name, dedup_roles, fin["value"], seed, cids, f)
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
    from reference_impl.contracts import ref_to_dict

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
                    dd = diff_refs(ref_to_dict(_ref(s, 1 - role, seed)), canon_ref(got))
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


def _threads_scenario(target, d, seed: int, n_dedup: int, n_ids: int, ackers: int, per_writer: int, readers: int,
                      switch: float):
    """All roles in threads of this process on ONE shared instance; analysed here."""
    rng = random.Random(seed)
    ids = [f"t.{i}" for i in range(n_ids)]
    plan = AckPlan("ta", ackers, per_writer, max_ids=10, seed=seed)
    shared = Shared(parties=n_dedup + ackers + readers, writers=ackers, writer_roles=ackers)
    roles = []
    for w in range(n_dedup):
        order = list(ids)
        if w % 2:
            rng.shuffle(order)
        batches, single = _dedup_batches(rng, order, w % 3)
        roles.append((role_dedup, dict(wid=w, batches=batches, seed=seed, single=single)))
    roles += [(role_acker, dict(plan=plan, w=w, seed=seed)) for w in range(ackers)]
    roles += [(role_reader, dict(plan=plan, rid=f"thread-r{r}")) for r in range(readers)]
    results, store = host_roles(target, d, roles, shared, shared_instance=True, switch_interval=switch, keep_store=True)
    try:
        final = read_final(target, d, ids, store=store)
    finally:
        safe_close(store)
    return {"results": results, "final": final, "ids": ids, "plan": plan, "seed": seed}


def scenario_threads(ctx: Context, f: Findings, n_dedup: int, n_ids: int, ackers: int, per_writer: int, readers: int) -> None:
    name = f"threads sharing one instance ({n_dedup} committers, {ackers} ackers, {readers} readers)"
    d = ctx.subdir("t2-threads")
    if ctx.profile == "durable":
        _init(ctx, d)
    seed = random.Random(f"{ctx.seed}:threads").randrange(1 << 30)
    r = run_children(
        [Child("threads", _threads_scenario, (ctx.target, d, seed, n_dedup, n_ids, ackers, per_writer, readers, 2e-6), d)],
        timeout=300,
    )[0]
    if not r["ok"]:
        f.add(name, r.get("prop") or ("liveness" if r.get("hung") else "exception"), r["error"])
        return
    v = r["value"]
    errs = [x for x in v["results"] if x and not x["ok"]]
    if errs and ctx.profile == "durable" and all(_thread_affinity(x["error"]) for x in errs):
        f.warnings.append(
            "a store instance refused use from several threads "
            f"({errs[0]['error']}); the shared-instance thread checks were skipped, one instance per thread is fine"
        )
        return
    if _role_failures(name, v["results"], f):
        return
    vals = [x["value"] for x in v["results"]]
    for x in vals:
        f.bump("transient_errors", x.get("transient", 0))
        f.bump("marker_reads", x.get("reads", 0))
        for prop, text in x.get("anomalies", []):
            f.add(name, prop, text)
    analyse_dedup(name, [x for x in vals if "attempts" in x], v["final"], v["seed"], v["ids"], f)
    analyse_acks(name, v["plan"], v["final"], f)
    shutil.rmtree(d, ignore_errors=True)


def _thread_affinity(err: str) -> bool:
    e = err.lower()
    return "thread" in e and ("same thread" in e or "programmingerror" in e or "different thread" in e)


def run(ctx: Context) -> TierResult:
    t0 = time.monotonic()
    res = TierResult(tier=2, status=PASSED, properties=list(PROPERTIES))
    f = Findings()
    b = ctx.budget
    try:
        if ctx.profile == "durable":
            res.notes.append("processes and threads; one instance per worker, plus one instance shared by threads")
            ctx.progress("tier 2 concurrency: dedup race across processes")
            for rnd in range(2):
                scenario_dedup_processes(ctx, f, rnd, procs=3, per_proc=2, n_ids=b.scaled(120))
            ctx.progress("tier 2 concurrency: acks under readers (one writer)")
            scenario_acks_processes(ctx, f, [1], readers=2, per_writer=b.scaled(60), committer_ids=b.scaled(150), tag="a1")
            ctx.progress("tier 2 concurrency: acks under readers (three writers)")
            scenario_acks_processes(ctx, f, [2, 1], readers=1, per_writer=b.scaled(30), committer_ids=b.scaled(60), tag="a3")
            ctx.progress("tier 2 concurrency: long-lived instances in two processes")
            scenario_pingpong(ctx, f, rounds=max(6, b.scaled(6)))
        else:
            res.notes.append("volatile profile: threads sharing one instance; several processes not applicable")
        ctx.progress("tier 2 concurrency: threads sharing one instance")
        for _ in range(1 if ctx.profile == "durable" else 2):
            scenario_threads(ctx, f, n_dedup=4, n_ids=b.scaled(200), ackers=2, per_writer=b.scaled(40), readers=2)
    except Violation as e:
        f.add("setup", e.prop, e.message)
    res.counters = dict(f.counters)
    if f.counters.get("transient_errors"):
        res.warnings.append(
            f"the store raised {f.counters['transient_errors']} lock/busy/timeout error(s) under concurrent load; "
            "they were retried (each such operation counted as maybe-applied)"
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
