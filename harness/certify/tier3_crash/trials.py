"""Tier 3's trials: the worker that is killed, its log, the model across trials, one trial.

`Trial` plans the operations of a committer (A) and an acker (B); `run_trial`
starts them as children and kills each at its seeded moment; `parse_log`
reads what each proved (began op k, op k returned); `snapshot` reopens the
store in a fresh process and reads its whole state; `FreshStores` gives each
trial its store (a fresh, calibrated one every `TRIALS_PER_STORE` trials).
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

from harness.exit_codes import HarnessError

from ..children import _parent_state, raise_if_harness_died, signal_name, start, use_parent_state
from ..common import Context, Retrier, in_child, mp_context, random_ref, safe_close
from ..model import Violation, canon_ref, normalise_marker, short
from ..records import active

# -- the worker ------------------------------------------------------------------


def _worker(target, d: str, ops: List[Tuple], log_path: str, ready_w, state: Dict[str, Any]) -> None:
    """Runs in a child; killed at any moment by the parent. `ready_w` is a pipe end: one byte once open."""
    use_parent_state(state)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def log(line: str) -> None:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)

    try:
        store = Retrier(60).call(target.open, d)
        log(f"ready {time.monotonic():.6f}")
        try:
            ready_w.send_bytes(b"r")
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


def parse_log(path: str) -> Dict[str, Any]:
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


def snapshot(target, d: str, ids: List[str]) -> Dict[str, Any]:
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


def apply_ack(m: Dict[str, Any], op) -> Dict[str, Any]:
    _, ids, step, flag = op
    return {
        "acked": m["acked"] | set(ids),
        "global_step": m["global_step"] if step is None else step,
        "optimizer_durable": flag,
    }


def fmt_op(who: str, k: int, op) -> str:
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


def run_trial(ctx: Context, d: str, trial: Trial, rng: random.Random, op_time: float,
               open_time: float) -> Dict[str, Any]:
    """Start the workers, kill each at its random moment, return their parsed logs.

    A worker is killed either while it opens the store (10%: a random moment
    after its start) or while it runs its operations (a random moment after it
    reported ready, spread over the time its operations take).
    """
    procs = {}
    mp = mp_context()
    state = _parent_state()
    for who, ops in trial.workers.items():
        log = os.path.join(d, f"log-{trial.no}-{who}")
        r, w = mp.Pipe(duplex=False)
        t_spawn = time.monotonic()
        p = mp.Process(target=_worker, args=(ctx.target, d, ops, log, w, state), daemon=False)
        start(p)
        w.close()
        during_open = rng.random() < 0.1
        span = open_time if during_open else len(ops) * op_time
        delay = rng.uniform(0, span * 1.1)
        procs[who] = {"p": p, "r": r, "log": log, "during_open": during_open,
                      "due": t_spawn + delay if during_open else None,
                      "delay": delay, "killed": False, "done": False}
    _kill_when_due(procs)
    logs = {}
    for who, info in procs.items():
        info["p"].join(120)
        if info["p"].is_alive():
            os.kill(info["p"].pid, signal.SIGKILL)
            info["p"].join(10)
        info["r"].close()
        logs[who] = parse_log(info["log"])
        logs[who]["killed"] = info["killed"]
        logs[who]["during_open"] = info["during_open"]
        if not info["killed"]:
            raise_if_died(who, trial.workers[who], logs[who], info["p"].exitcode)
    return logs


def _kill_when_due(procs: Dict[str, Dict[str, Any]]) -> None:
    """SIGKILL each worker at its moment (a delay after it reported ready, or after its start)."""
    deadline = time.monotonic() + 120
    while any(not i["done"] for i in procs.values()) and time.monotonic() < deadline:
        waiting = [i for i in procs.values() if not i["done"] and i["due"] is None]
        if waiting:
            ready, _, _ = select.select([i["r"].fileno() for i in waiting], [], [], 0)
            now = time.monotonic()
            for i in waiting:
                if i["r"].fileno() in ready:
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


def raise_if_died(who: str, ops: List[Tuple], lg: Dict[str, Any], exit_code: Optional[int]) -> None:
    """A worker that ended on its own without finishing (no `end`, no error logged) died
    inside the store: Violation naming how it ended and the call it was in."""
    if lg["end"] or lg["error"]:
        return
    in_flight = sorted(lg["began"] - set(lg["done"]))
    if not lg["ready"]:
        call = "opening the store (the constructor)"
    elif in_flight:
        call = fmt_op(f"worker {who}", in_flight[0], ops[in_flight[0]]).split(": ", 1)[1]
    elif len(lg["done"]) == len(ops):
        call = "closing the store"
    else:  # between two operations: in the harness's own code
        raise HarnessError(f"crash worker {who} {signal_name(exit_code)} between two store calls "
                           f"(after op {max(lg['done'], default=-1)}): not the store's finding")
    raise Violation("exception", f"the process running the store (worker {who}) {signal_name(exit_code)} during "
                                 f"{call}: the store's code ended the process")


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


def calibrate(ctx: Context, d: str, seed: int):
    """One worker run to its end (no kill): times to open and per op, and what it committed and acked."""
    rng = random.Random(seed)
    ops = []
    for i in range(6):
        refs = [random_ref(rng, f"cal.{i}.{j}") for j in range(6)]
        ops.append(("commit", refs))
        ops.append(("ack", [r.sample_id for r in refs], 1_000_000 + i, i % 2 == 1))
    log = os.path.join(d, "log-calibrate")
    mp = mp_context()
    r, w = mp.Pipe(duplex=False)
    t0 = time.monotonic()
    p = mp.Process(target=_worker, args=(ctx.target, d, ops, log, w, _parent_state()), daemon=False)
    start(p)
    w.close()
    r.poll(120)
    t1 = time.monotonic()
    p.join(300)
    t2 = time.monotonic()
    r.close()
    hung = p.is_alive()
    if hung:
        p.kill()
        p.join(10)
    lg = parse_log(log)
    if lg["error"]:
        raise Violation("exception", f"a worker without any crash failed: the store raised {lg['error']}")
    if hung:
        raise Violation("liveness", "a worker without any crash did not finish in 300 s")
    raise_if_died("calibration", ops, lg, p.exitcode)
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
            m = apply_ack(model.marker(), op)
            model.acked, model.step, model.flag = m["acked"], m["global_step"], m["optimizer_durable"]
    return max(0.002, t1 - t0), max(0.0005, (t2 - t1) / len(ops)), model


#: Trials on one store before a fresh one (keeps each store, and the model, small).
TRIALS_PER_STORE = 100


def fresh_store(ctx: Context, seed: int):
    """A new store directory, its calibration, and the model of what calibration left."""
    d = ctx.subdir("tier3")
    open_time, op_time, model = calibrate(ctx, d, seed)
    snap = in_child(snapshot, ctx.target, d, list(model.order), workdir=d, timeout=120, name="calibrate-read")
    raise_if_harness_died(snap)
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
    """The store of each trial: a fresh one (`fresh_store`) every `per_store` trials, the last one removed.

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
            self.store = fresh_store(self.ctx, self.seed + no)
            self.d = self.store[0]
            self.counters["stores"] += 1
        return self.store

    def remove(self) -> None:
        if self.d is not None:
            shutil.rmtree(self.d, ignore_errors=True)
            self.d = None


