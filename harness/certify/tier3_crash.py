"""Tier 3, crash: SIGKILL inside commit batches and acks, many times, then reopen.

Each trial forks up to two worker processes on the same store: a committer
(batches of new and already-committed ids) and an acker (commits a batch, then
acks it; sometimes acks older committed ids; `global_step` sometimes None; the
`optimizer_durable` flag flips on every ack so that every ack changes the
marker). Before each store call a worker fsyncs "began op k" to its own log,
after the call returns it fsyncs "op k returned <result>". The parent kills the
workers with SIGKILL at random moments (some while the store is still being
opened), then a fresh process reopens the store and reads its whole state:

* every commit and ack whose return was logged is there (P6);
* the marker equals the state before or after the ack in flight, never a mix
  (P5); an ack that never began left no trace;
* freshness stays exact across incarnations (P4), nothing that never began is
  committed, `all_committed_ids` keeps first-commit order;
* the store always reopens.

A batch in flight that is partly present after the crash is a warning (DESIGN
section 2), not a failure.
"""

from __future__ import annotations

import json
import os
import random
import select
import shutil
import signal
import time
from typing import Any, Dict, List, Optional, Tuple

from .certificate import FAILED, PASSED, Counterexample, TierResult
from .common import Context, Retrier, in_child, mp_context, random_ref, safe_close
from .model import Violation, canon_ref, diff_refs, normalise_marker, short
from .records import active

PROPERTIES = ["P6 durability", "P5 ack atomicity", "P4 dedup", "reopenable", "all_committed_ids order"]


# -- the worker ------------------------------------------------------------------


def _worker(target, d: str, ops: List[Tuple], log_path: str, ready_w: int) -> None:
    """Runs in a forked child; killed at any moment by the parent."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def log(line: str) -> None:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)

    try:
        store = Retrier(60).call(target.open, d)
        log(f"ready {time.monotonic():.6f}")
        try:
            os.write(ready_w, b"r")
        except OSError:
            pass
        for k, op in enumerate(ops):
            log(f"b {k}")
            if op[0] == "commit":
                refs = op[1]
                flags = [bool(x) for x in Retrier(60).call(store.commit_samples, refs)]
                log(f"d {k} " + json.dumps(flags))
            else:
                _, ids, step, flag = op
                Retrier(60).call(store.record_train_ack, list(ids), global_step=step, optimizer_durable=flag)
                log(f"d {k} null")
        log(f"ops_done {time.monotonic():.6f}")
        safe_close(store)
        log("end")
    except BaseException as e:  # noqa: BLE001
        log("error " + json.dumps(f"{type(e).__name__}: {e}"))
    finally:
        os._exit(0)


def _parse_log(path: str) -> Dict[str, Any]:
    """Which ops began, which returned (and what), whether the worker got ready/ended."""
    out: Dict[str, Any] = {"ready": False, "end": False, "began": set(), "done": {}, "error": None,
                           "t_ready": None, "t_ops_done": None}
    try:
        with open(path, "rb") as f:
            data = f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return out
    lines = data.split("\n")
    if lines and lines[-1] != "":
        lines = lines[:-1]  # a line cut by the kill: as if never written
    for ln in lines:
        if ln == "ready" or ln.startswith("ready "):
            out["ready"] = True
            out["t_ready"] = float(ln[6:]) if ln.startswith("ready ") else None
        elif ln.startswith("ops_done "):
            out["t_ops_done"] = float(ln[9:])
        elif ln == "end":
            out["end"] = True
        elif ln.startswith("b "):
            out["began"].add(int(ln[2:]))
        elif ln.startswith("d "):
            k, _, rest = ln[2:].partition(" ")
            try:
                out["done"][int(k)] = json.loads(rest)
            except ValueError:
                pass
        elif ln.startswith("error "):
            out["error"] = json.loads(ln[6:])
    return out


# -- reading the state after the crash ---------------------------------------------


def _snapshot(target, d: str, ids: List[str]) -> Dict[str, Any]:
    retr = Retrier(60)
    try:
        store = retr.call(target.open, d)
    except Exception as e:  # noqa: BLE001
        raise Violation("reopenable", f"the store does not reopen after the crash: {type(e).__name__}: {e}") from e
    try:
        all_ids = [str(i) for i in retr.call(store.all_committed_ids)]
        count = retr.call(store.committed_count)
        marker = normalise_marker(retr.call(store.durable_marker))
        refs = {}
        committed = {}
        for sid in ids:
            committed[sid] = bool(retr.call(store.is_committed, sid))
            r = retr.call(store.get_committed, sid)
            refs[sid] = None if r is None else canon_ref(r)
        return {"all_ids": all_ids, "count": count, "marker": marker, "refs": refs, "committed": committed}
    finally:
        safe_close(store)


# -- the model across trials ---------------------------------------------------------


class CrashModel:
    def __init__(self) -> None:
        self.refs: Dict[str, Dict[str, Any]] = {}
        self.order: List[str] = []
        self.acked: set = set()
        self.step: Optional[int] = None
        self.flag = False
        self.next_step = 1
        self.next_id = 0

    def marker(self) -> Dict[str, Any]:
        return {"acked": set(self.acked), "global_step": self.step, "optimizer_durable": self.flag}


def _apply_ack(m: Dict[str, Any], op) -> Dict[str, Any]:
    _, ids, step, flag = op
    return {
        "acked": m["acked"] | set(ids),
        "global_step": m["global_step"] if step is None else step,
        "optimizer_durable": flag,
    }


def _fmt_op(who: str, k: int, op) -> str:
    if op[0] == "commit":
        return f"{who} op {k}: commit_samples([{', '.join(repr(r.sample_id) for r in op[1])}])"
    return f"{who} op {k}: record_train_ack({short(op[1])}, global_step={op[2]!r}, optimizer_durable={op[3]!r})"


class Trial:
    def __init__(self, no: int, rng: random.Random, model: CrashModel, seed: int, ops_per_worker: int) -> None:
        self.no = no
        self.workers: Dict[str, List[Tuple]] = {}
        self.new_ids: Dict[str, List[str]] = {}
        old = list(model.refs)
        unacked = [s for s in model.order if s not in model.acked]
        kinds = rng.choice([("A", "B"), ("A", "B"), ("A", "B"), ("A",), ("B",)])

        def new_ref(who: str):
            sid = f"c{model.next_id}.{who}{no}"
            model.next_id += 1
            self.new_ids.setdefault(who, []).append(sid)
            return random_ref(random.Random(f"{seed}:{sid}"), sid)

        def old_ref(sid: str):
            return random_ref(random.Random(f"{seed}:{sid}"), sid)

        flag = model.flag
        if "A" in kinds:
            ops = []
            for _ in range(ops_per_worker):
                batch = [new_ref("A") for _ in range(rng.randint(1, 12))]
                if old and rng.random() < 0.5:
                    batch.insert(rng.randrange(len(batch) + 1), old_ref(rng.choice(old)))
                if rng.random() < 0.2:
                    batch.append(batch[0])  # a repeated id in one batch
                ops.append(("commit", batch))
            self.workers["A"] = ops
        if "B" in kinds:
            ops = []
            while len(ops) < ops_per_worker:
                if unacked and rng.random() < 0.25:
                    take = rng.sample(unacked, min(len(unacked), rng.randint(1, 6)))
                    unacked = [s for s in unacked if s not in take]
                    ids = take
                else:
                    batch = [new_ref("B") for _ in range(rng.randint(1, 10))]
                    ops.append(("commit", batch))
                    ids = [r.sample_id for r in batch]
                step = None if rng.random() < 0.2 else model.next_step
                if step is not None:
                    model.next_step += 1
                flag = not flag  # every ack changes the marker
                ops.append(("ack", sorted(ids), step, flag))
            self.workers["B"] = ops


def _run_trial(ctx: Context, d: str, trial: Trial, rng: random.Random, op_time: float,
               open_time: float) -> Dict[str, Any]:
    """Fork the workers, kill each at its random moment, return their parsed logs.

    A worker is killed either while it opens the store (10%: a random moment
    after the fork) or while it runs its operations (a random moment after it
    reported ready, spread over the time its operations take).
    """
    procs = {}
    mp = mp_context()
    for who, ops in trial.workers.items():
        log = os.path.join(d, f"log-{trial.no}-{who}")
        r, w = os.pipe()
        t_spawn = time.monotonic()
        p = mp.Process(target=_worker, args=(ctx.target, d, ops, log, w), daemon=False)
        p.start()
        os.close(w)
        during_open = rng.random() < 0.1
        span = open_time if during_open else len(ops) * op_time
        delay = rng.uniform(0, span * 1.1)
        procs[who] = {"p": p, "r": r, "log": log, "during_open": during_open,
                      "due": t_spawn + delay if during_open else None,
                      "delay": delay, "killed": False, "done": False}
    deadline = time.monotonic() + 120
    while any(not i["done"] for i in procs.values()) and time.monotonic() < deadline:
        waiting = [i for i in procs.values() if not i["done"] and i["due"] is None]
        if waiting:
            ready, _, _ = select.select([i["r"] for i in waiting], [], [], 0)
            now = time.monotonic()
            for i in waiting:
                if i["r"] in ready:
                    i["due"] = now + i["delay"]
        now = time.monotonic()
        for i in procs.values():
            if not i["done"] and i["due"] is not None and now >= i["due"]:
                if i["p"].is_alive():
                    try:
                        os.kill(i["p"].pid, signal.SIGKILL)
                        i["killed"] = True
                    except ProcessLookupError:
                        pass
                i["done"] = True
        dues = [i["due"] for i in procs.values() if not i["done"] and i["due"] is not None]
        pause = min(dues) - time.monotonic() if dues else 0.0005
        if waiting:
            pause = min(pause, 0.0005)
        if pause > 0:
            time.sleep(pause)
    logs = {}
    for who, info in procs.items():
        info["p"].join(120)
        if info["p"].is_alive():
            os.kill(info["p"].pid, signal.SIGKILL)
            info["p"].join(10)
        os.close(info["r"])
        logs[who] = _parse_log(info["log"])
        logs[who]["killed"] = info["killed"]
        logs[who]["during_open"] = info["during_open"]
    return logs


def _check_trial(trial: Trial, logs: Dict[str, Any], snap: Dict[str, Any], model: CrashModel,
                 warnings: List[str], counters: Dict[str, int]) -> List[Tuple[str, str, List[str]]]:
    """Compare the reopened state with what the logs prove; update the model. Returns violations."""
    bad: List[Tuple[str, str, List[str]]] = []
    pre = set(model.refs)
    committed_now = set(snap["all_ids"])
    new_present: Dict[str, List[str]] = {}
    inflight_ack = None
    done_acks = []
    context: Dict[Tuple[str, int], str] = {}

    for who, ops in trial.workers.items():
        lg = logs[who]
        if lg["error"]:
            bad.append(("exception", f"worker {who} of trial {trial.no}: the store raised {lg['error']}", []))
            continue
        seen_by_worker: set = set()
        for k, op in enumerate(ops):
            began, done = k in lg["began"], k in lg["done"]
            state = "returned" if done else ("in flight at the kill" if began else "never began")
            context[(who, k)] = _fmt_op(who, k, op) + f"  [{state}]"
            if op[0] == "commit":
                refs = op[1]
                expected = []
                for r in refs:
                    expected.append(r.sample_id not in pre and r.sample_id not in seen_by_worker)
                    seen_by_worker.add(r.sample_id)
                new_ids = list(dict.fromkeys(r.sample_id for r, e in zip(refs, expected) if e))
                if done:
                    got = lg["done"][k]
                    if got != expected:
                        i = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), 0)
                        prop = "P4 dedup" if (i < len(got) and got[i]) else "freshness"
                        bad.append((prop, f"worker {who} op {k}: commit_samples returned {got}, expected {expected} "
                                    f"(flag {i}, {refs[i].sample_id!r}; ids committed before this trial are not "
                                    "fresh)", [(who, k)]))
                    missing = [s for s in new_ids if s not in committed_now]
                    if missing:
                        bad.append(("P6 durability", f"worker {who} op {k}: commit_samples returned {got} before "
                                    f"the crash, but after reopening {short(missing)} are not committed", [(who, k)]))
                    new_present.setdefault(who, []).extend(new_ids)
                elif began:
                    present = [s for s in new_ids if s in committed_now]
                    if present and len(present) < len(new_ids):
                        counters["torn_batches"] = counters.get("torn_batches", 0) + 1
                        if counters["torn_batches"] <= 3:
                            warnings.append(
                                f"trial {trial.no}: a commit batch torn by the crash ({len(present)} of {len(new_ids)} "
                                "new ids present); DESIGN section 2 asks a durable backend to commit a batch in one "
                                "transaction"
                            )
                    new_present.setdefault(who, []).extend(present)
                    if present:
                        counters["inflight_commits_applied"] = counters.get("inflight_commits_applied", 0) + 1
                else:
                    ghost = [s for s in new_ids if s in committed_now]
                    if ghost:
                        bad.append(("P4 dedup", f"worker {who} op {k} never began, yet {short(ghost)} are committed",
                                    [(who, k)]))
            else:
                if done:
                    done_acks.append(op)
                elif began:
                    inflight_ack = op
    # the committed set: exactly what was before, plus what the logs allow
    allowed = pre | {s for ids in new_present.values() for s in ids}
    extra = committed_now - allowed
    if extra:
        bad.append(("P4 dedup", f"ids committed that no commit produced: {short(extra)}", []))
    lost_old = pre - committed_now
    if lost_old:
        bad.append(("P6 durability", f"ids committed and verified before this trial are gone: {short(lost_old)}", []))
    if len(set(snap["all_ids"])) != len(snap["all_ids"]):
        bad.append(("P4 dedup", "all_committed_ids lists an id twice", []))
    if snap["count"] != len(set(snap["all_ids"])):
        bad.append(("committed_count", f"committed_count() is {snap['count']} but all_committed_ids has "
                                       f"{len(set(snap['all_ids']))} ids", []))
    # order: the old prefix unchanged, each worker's new ids in its own order
    n = len(model.order)
    if snap["all_ids"][:n] != model.order and not lost_old:
        bad.append(("all_committed_ids order",
                    "ids committed in earlier trials moved in all_committed_ids after the crash", []))
    pos = {s: i for i, s in enumerate(snap["all_ids"])}
    for who, ids in new_present.items():
        seq = [pos[s] for s in ids if s in pos]
        if any(a > b for a, b in zip(seq, seq[1:])):
            bad.append(("all_committed_ids order",
                        f"worker {who}'s commits are not in first-commit order in all_committed_ids", []))
    wrong = [sid for sid, c in snap.get("committed", {}).items() if c != (sid in committed_now)]
    if wrong:
        bad.append(("is_committed",
                    f"after reopen is_committed() disagrees with all_committed_ids() for {short(wrong)}", []))
    # refs round-trip (new ones and the sampled old ones)
    for sid, got in snap["refs"].items():
        want = model.refs.get(sid)
        if want is None and sid in committed_now:
            want = trial_refs(trial).get(sid)
        if want is None:
            continue
        if got is None:
            if sid in committed_now:
                bad.append(("round-trip",
                            f"get_committed({sid!r}) is None after reopen though the id is committed", []))
            continue
        dd = diff_refs(want, got)
        if dd:
            bad.append(("round-trip", f"get_committed({sid!r}) after reopen differs from the committed ref: {dd}", []))
    # the marker: all returned acks, and the in-flight one whole or not at all
    m_done = model.marker()
    for op in done_acks:
        m_done = _apply_ack(m_done, op)
    got = snap["marker"]
    candidates = [m_done] + ([_apply_ack(m_done, inflight_ack)] if inflight_ack else [])
    if got not in candidates:
        lost = m_done["acked"] - got["acked"]
        if lost and not (inflight_ack and (got["acked"] - m_done["acked"])):
            bad.append(("P6 durability",
                        f"acks that returned before the crash are missing after reopen: acked lacks {short(lost)}", []))
        elif inflight_ack is not None:
            part = set(inflight_ack[1]) & got["acked"]
            bad.append(("P5 ack atomicity",
                        f"the ack in flight at the kill ({short(inflight_ack[1])}, global_step={inflight_ack[2]!r}, "
                        f"optimizer_durable={inflight_ack[3]!r}) is partly applied after reopen: {len(part)} of "
                        f"{len(inflight_ack[1])} ids acked, global_step={got['global_step']!r}, "
                        f"optimizer_durable={got['optimizer_durable']!r}", []))
        else:
            why = []
            if got["acked"] != m_done["acked"]:
                why.append(f"acked differs ({short(got['acked'] ^ m_done['acked'])})")
            if got["global_step"] != m_done["global_step"]:
                why.append(f"global_step {got['global_step']!r}, expected {m_done['global_step']!r}")
            if got["optimizer_durable"] != m_done["optimizer_durable"]:
                why.append(f"optimizer_durable {got['optimizer_durable']!r}, expected {m_done['optimizer_durable']!r}")
            bad.append(("P6 durability",
                        "after reopen the marker is not the state the returned acks left: " + "; ".join(why), []))
    elif inflight_ack is not None and got == candidates[-1] and len(candidates) == 2:
        counters["inflight_acks_applied"] = counters.get("inflight_acks_applied", 0) + 1
    if bad:
        ack_keys = [key for key, line in context.items() if "record_train_ack" in line and "never began" not in line]
        out = []
        for p, t, keys in bad:
            if not keys and p in ("P5 ack atomicity", "P6 durability") and ("ack" in t or "marker" in t):
                keys = ack_keys
            out.append((p, t, [context[k] for k in keys] if keys else list(context.values())))
        return out
    # accept the new state
    refs_now = trial_refs(trial)
    for s in snap["all_ids"][n:]:
        model.refs[s] = refs_now[s]
    model.order = list(snap["all_ids"])
    model.acked, model.step, model.flag = set(got["acked"]), got["global_step"], got["optimizer_durable"]
    return []


def trial_refs(trial: Trial) -> Dict[str, Dict[str, Any]]:
    cache = getattr(trial, "_refs", None)
    if cache is None:
        cache = {}
        for ops in trial.workers.values():
            for op in ops:
                if op[0] == "commit":
                    for r in op[1]:
                        cache.setdefault(r.sample_id, active().canon(r))
        trial._refs = cache
    return cache


def _calibrate(ctx: Context, d: str, seed: int):
    """One worker run to its end (no kill): times to open and per op, and what it committed and acked."""
    rng = random.Random(seed)
    ops = []
    for i in range(6):
        refs = [random_ref(rng, f"cal.{i}.{j}") for j in range(6)]
        ops.append(("commit", refs))
        ops.append(("ack", [r.sample_id for r in refs], 1_000_000 + i, i % 2 == 1))
    log = os.path.join(d, "log-calibrate")
    r, w = os.pipe()
    t0 = time.monotonic()
    p = mp_context().Process(target=_worker, args=(ctx.target, d, ops, log, w), daemon=False)
    p.start()
    os.close(w)
    select.select([r], [], [], 120)
    t1 = time.monotonic()
    p.join(300)
    t2 = time.monotonic()
    os.close(r)
    lg = _parse_log(log)
    if lg["error"]:
        raise Violation("exception", f"a worker without any crash failed: the store raised {lg['error']}")
    if not lg["end"]:
        raise Violation("liveness", "a worker without any crash did not finish in 300 s")
    if lg["t_ready"] is not None and lg["t_ops_done"] is not None:
        # the worker's own clock: process start-up and exit do not count as operation time
        t1, t2 = lg["t_ready"], lg["t_ops_done"]
    model = CrashModel()
    for op in ops:
        if op[0] == "commit":
            for ref in op[1]:
                model.refs[ref.sample_id] = active().canon(ref)
                model.order.append(ref.sample_id)
        else:
            m = _apply_ack(model.marker(), op)
            model.acked, model.step, model.flag = m["acked"], m["global_step"], m["optimizer_durable"]
    return max(0.002, t1 - t0), max(0.0005, (t2 - t1) / len(ops)), model


#: Trials on one store before a fresh one (keeps each store, and the model, small).
TRIALS_PER_STORE = 100


def _fresh_store(ctx: Context, seed: int):
    """A new store directory, its calibration, and the model of what calibration left."""
    d = ctx.subdir("tier3")
    open_time, op_time, model = _calibrate(ctx, d, seed)
    snap = in_child(_snapshot, ctx.target, d, list(model.order), workdir=d, timeout=120, name="calibrate-read")
    if not snap["ok"]:
        raise Violation(snap.get("prop") or "reopenable", snap["error"])
    s = snap["value"]
    if s["all_ids"] != model.order or s["marker"] != model.marker():
        raise Violation(
            "P6 durability",
            "without any crash, a new process does not see what a finished worker committed and acked "
            f"({len(s['all_ids'])} of {len(model.order)} ids; marker acked {len(s['marker']['acked'])} of "
            f"{len(model.acked)} ids, global_step {s['marker']['global_step']!r}, expected {model.step!r})",
        )
    return d, open_time, op_time, model


class FreshStores:
    """The store of each trial: a fresh one (`_fresh_store`) every `per_store` trials, the last one removed.

    `for_trial(no)` returns (directory, open time, op time, model) of trial `no`'s store;
    `remove()` removes the current one.
    """

    def __init__(self, ctx: Context, seed: int, counters: Dict[str, Any], per_store: int) -> None:
        self.ctx, self.seed, self.counters, self.per_store = ctx, seed, counters, per_store
        self.d: Optional[str] = None
        self.store: Tuple[Any, ...] = ()

    def for_trial(self, no: int) -> Tuple[Any, ...]:
        if no % self.per_store == 0:
            self.remove()
            self.store = _fresh_store(self.ctx, self.seed + no)
            self.d = self.store[0]
            self.counters["stores"] += 1
        return self.store

    def remove(self) -> None:
        if self.d is not None:
            shutil.rmtree(self.d, ignore_errors=True)
            self.d = None


def run(ctx: Context) -> TierResult:
    t0 = time.monotonic()
    res = TierResult(tier=3, status=PASSED, properties=list(PROPERTIES))
    crashes = int(ctx.overrides.get("crashes") or ctx.budget.t3_crashes)
    rng = random.Random(ctx.seed * 31 + 3)
    seed = rng.randrange(1 << 30)
    counters: Dict[str, int] = {"trials": 0, "kills": 0, "kills_during_open": 0, "kills_inside_op": 0, "stores": 0}
    ctx.progress(f"tier 3 crash: {crashes} trials of SIGKILL inside commits and acks")
    stores = FreshStores(ctx, seed, counters, TRIALS_PER_STORE)
    try:
        for no in range(crashes):
            d, open_time, op_time, model = stores.for_trial(no)
            trial = Trial(no, rng, model, seed, ops_per_worker=rng.randint(2, 8))
            logs = _run_trial(ctx, d, trial, rng, op_time, open_time)
            counters["trials"] += 1
            for lg in logs.values():
                if lg["killed"]:
                    counters["kills"] += 1
                    if not lg["ready"]:
                        counters["kills_during_open"] += 1
                    elif lg["began"] - set(lg["done"]):
                        counters["kills_inside_op"] += 1
            ids = sorted(set(trial_refs(trial)))
            old = [s for s in model.order if s in model.refs]
            last_on_store = (no + 1) % TRIALS_PER_STORE == 0 or no + 1 == crashes
            sample = old if last_on_store else rng.sample(old, min(len(old), 20))
            snap = in_child(_snapshot, ctx.target, d, ids + sample, workdir=d, timeout=120, name="reopen")
            if not snap["ok"]:
                prop = snap.get("prop") or "reopenable"
                raise Violation(prop, f"after trial {no}: {snap['error']}")
            bad = _check_trial(trial, logs, snap["value"], model, res.warnings, counters)
            if bad:
                for prop, text, context in bad[:4]:
                    res.counterexamples.append(
                        Counterexample(
                            tier=3,
                            property=prop,
                            message=f"trial {no}: {text}",
                            steps=[f"{len(model.order)} ids committed and verified in earlier trials on this store"]
                            + context
                            + ["SIGKILL " + ", ".join(f"worker {w}" for w, lg in logs.items() if lg["killed"]),
                               "reopen in a new process and read the state"],
                            reproduce=ctx.reproduce(3, f"--crashes {no + 1}") + "  (kill timing varies between runs)",
                        )
                    )
                break
            if (no + 1) % max(1, crashes // 4) == 0:
                ctx.progress(f"tier 3 crash: {no + 1}/{crashes} trials, {counters['kills']} kills, "
                             f"{counters['kills_inside_op']} inside an operation")
    except Violation as e:
        res.counterexamples.append(
            Counterexample(tier=3, property=e.prop, message=e.message, reproduce=ctx.reproduce(3))
        )
    if res.counterexamples:
        res.status = FAILED
    res.counters = counters
    if counters.get("torn_batches", 0) > 3:
        res.warnings.append(f"{counters['torn_batches']} commit batches in all were torn by crashes")
    stores.remove()
    res.duration_s = time.monotonic() - t0
    return res
