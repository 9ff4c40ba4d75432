"""Tier 2's scenarios: the roles put together in processes and threads, and judged.

* dedup race across processes (`scenario_dedup_processes`);
* acks under readers in other processes (`scenario_acks_processes`);
* long-lived instances in two processes taking turns (`scenario_pingpong`);
* every role in threads sharing one instance (`scenario_threads`).
"""

from __future__ import annotations

import random
import shutil
from typing import List, Optional, Tuple

from harness.exit_codes import HarnessError

from ..common import Child, Context, Retrier, mp_context, run_children, safe_close
from ..model import Violation, canon_ref, diff_refs, normalise_marker, short
from ..records import active
from .analysis import Findings, analyse_acks, analyse_dedup, collect, contested_ids, flatten
from .plan import MAX_ANOMALIES, AckPlan
from .roles import Shared, host_roles, make_ref, read_final, role_acker, role_dedup, role_reader


def _init(ctx: Context, d: str) -> None:
    """Create the store once before the workers start (a first open is not what this tier tests)."""
    r = run_children([Child("init", _open_close, (ctx.target, d), d)], timeout=120)[0]
    if r.get("died") and not r["died"]["in_store"]:
        raise HarnessError(r["error"])
    if not r["ok"]:
        raise Violation("exception", f"opening the store failed: {r['error']}")


def _open_close(target, d):
    s = Retrier().call(target.open, d)
    safe_close(s)
    return True



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
    shared = Shared(parties=procs, writers=0, seconds=seconds, committers=procs)
    children = []
    for wid in range(procs):
        plan = dedup_plan(f"d{variant}", 60, wid, None if variant == 0 else seed)
        roles = [(role_dedup, dict(wid=wid, plan=plan, seed=seed))]
        children.append(Child(f"dedup-p{wid}", host_roles, (ctx.target, d, roles, shared), d))
    out = flatten(name, run_children(children, timeout=120 + 4 * seconds), f)
    if out is None:
        return
    fin = run_children([Child("final", read_final, (ctx.target, d, contested_ids(out)), d)], timeout=300)[0]
    if not fin["ok"]:
        f.child_failed(name, dict(fin, error=f"reading the final state failed: {fin['error']}"))
        return
    analyse_dedup(name, out, fin["value"], seed, f)
    shutil.rmtree(d, ignore_errors=True)


def scenario_acks_processes(ctx: Context, f: Findings, writers_per_proc: List[int], readers: int, seconds: float,
                            tag: str) -> None:
    W = sum(writers_per_proc)
    name = (f"acks under readers ({W} writer(s) in {len(writers_per_proc)} process(es), "
            f"{readers} reader process(es), a committer)")
    d = ctx.subdir(f"t2-{tag}")
    _init(ctx, d)
    seed = random.Random(f"{ctx.seed}:{tag}").randrange(1 << 30)
    plan = AckPlan(tag, W, max_ids=16, seed=seed)
    shared = Shared(parties=W + readers + 1, writers=W, seconds=seconds, readers=readers)
    children = []
    w = 0
    for p, n in enumerate(writers_per_proc):
        roles = [(role_acker, dict(plan=plan, w=w + i, seed=seed)) for i in range(n)]
        w += n
        children.append(Child(f"acker-p{p}", host_roles, (ctx.target, d, roles, shared), d))
    for r in range(readers):
        roles = [(role_reader, dict(plan=plan, rid=f"p{r}"))]
        children.append(Child(f"reader-{r}", host_roles, (ctx.target, d, roles, shared), d))
    cplan = dedup_plan(f"{tag}c", 40, 1, seed)
    roles = [(role_dedup, dict(wid=900, plan=cplan, seed=seed))]
    children.append(Child("committer", host_roles, (ctx.target, d, roles, shared), d))
    out = flatten(name, run_children(children, timeout=120 + 4 * seconds), f)
    if out is None:
        return
    fin = run_children([Child("final", read_final, (ctx.target, d, []), d)], timeout=300)[0]
    if not fin["ok"]:
        f.child_failed(name, dict(fin, error=f"reading the final state failed: {fin['error']}"))
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
                refs = [make_ref(s, role, seed) for s in new]
                flags = [bool(x) for x in retr.call(store.commit_samples, refs)]
                if flags != [True] * 3:
                    found.append(("P4 dedup", f"round {r}: committing new ids {new} returned {flags}"))
                if order:
                    again = [bool(x) for x in retr.call(store.commit_samples, [make_ref(order[-1], role, seed)])]
                    if again != [False]:
                        found.append(
                            ("P4 dedup", f"round {r}: re-committing {order[-1]!r} (committed by the other process) "
                                         f"returned {again}")
                        )
                retr.call(store.record_train_ack, new[:2], global_step=st, optimizer_durable=(r % 2 == 0))
                conn.send(("done", r))
            else:
                msg = _recv(conn)
                if msg != ("done", r):
                    raise _PeerGone(f"unexpected message {msg!r} in round {r}")
                for s in new:
                    if not retr.call(store.is_committed, s):
                        found.append(("visibility", f"round {r}: is_committed({s!r}) is False in a long-lived "
                                                    "instance after another process's commit of it returned"))
                        break
                    got = retr.call(store.get_committed, s)
                    if got is None:
                        found.append(("visibility", f"round {r}: get_committed({s!r}) is None in a long-lived "
                                                    "instance after another process's commit of it returned"))
                        break
                    dd = diff_refs(active().canon(make_ref(s, 1 - role, seed)), canon_ref(got))
                    if dd:
                        found.append(("round-trip",
                                      f"round {r}: get_committed({s!r}) of another process's commit differs: {dd}"))
                        break
                again = [bool(x) for x in retr.call(store.commit_samples, [make_ref(new[0], role, seed)])]
                if again != [False]:
                    found.append(("P4 dedup", f"round {r}: committing {new[0]!r}, already committed by the other "
                                              f"process, returned {again} in a long-lived instance"))
            order.extend(new)
            acked |= set(new[:2])
            if st is not None:
                step = st
            flag = r % 2 == 0
            cnt = retr.call(store.committed_count)
            if cnt != len(order):
                found.append(("visibility", f"round {r}: committed_count() is {cnt!r} in a long-lived instance, "
                                            f"expected {len(order)}"))
            ids = [str(i) for i in retr.call(store.all_committed_ids)]
            if ids != order:
                found.append(("visibility", f"round {r}: all_committed_ids() in a long-lived instance is {ids}, "
                                            f"expected {order}"))
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
            # both sides finish this round's checks before the next writer starts: when only the
            # writer waited, the next writer (this round's reader) could commit while this round's
            # writer, slow under load, had yet to read all_committed_ids (a false visibility finding)
            conn.send(("checked", r))
            if _recv(conn) != ("checked", r):
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
            f.child_failed(name, r)
            continue
        f.bump("transient_errors", r["value"]["transient"])
        for prop, text in r["value"]["anomalies"]:
            f.add(name, prop, text)
    shutil.rmtree(d, ignore_errors=True)


def _threads_scenario(target, d, seed: int, n_dedup: int, ackers: int, readers: int, seconds: float, switch: float,
                      max_ids: int = 16):
    """All roles in threads of this process on ONE shared instance; the final state read through it."""
    plan = AckPlan("ta", ackers, max_ids=max_ids, seed=seed)
    shared = Shared(parties=n_dedup + ackers + readers, writers=ackers, seconds=seconds, readers=readers,
                    committers=n_dedup)
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
        [Child("threads", _threads_scenario,
               (ctx.target, d, seed, n_dedup, ackers, readers, seconds, 1e-5, max_ids), d)],
        timeout=120 + 4 * seconds,
    )[0]
    if not r["ok"]:
        f.child_failed(name, r)
        return
    v = r["value"]
    errs = [x for x in v["results"] if x and not x["ok"]]
    if errs and ctx.profile == "durable" and all(_thread_affinity(x["error"]) for x in errs):
        f.warnings.append(
            "a store instance refused use from several threads "
            f"({errs[0]['error']}); the shared-instance thread checks were skipped (one instance per thread works)"
        )
        return
    vals = collect(name, v["results"], f)
    if vals is None:
        return
    analyse_dedup(name, [x for x in vals if "attempts" in x], v["final"], v["seed"], f)
    analyse_acks(name, v["plan"], v["final"], {x["w"]: x["acks"] for x in vals if "w" in x}, f)
    shutil.rmtree(d, ignore_errors=True)


def _thread_affinity(err: str) -> bool:
    e = err.lower()
    return "thread" in e and ("same thread" in e or "programmingerror" in e or "different thread" in e)
