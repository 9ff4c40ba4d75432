"""Power-cut trials: commits and acks in traced processes, a power cut, then reopen.

Model: the store's directory is the traced root (harness.powerloss). Each trial
arms the tracer (the directory as it is is the durable baseline), starts the
tier-3 workers (a committer and an acker, same operation mix as tier 3) as
fresh traced processes, each reporting "began op k" and "op k returned
<result>" to the parent through a pipe (never through a file in the traced
tree). At a seeded point (a chosen worker beginning a chosen op, plus a seeded
delay; sometimes while the store is being opened; sometimes after the last
op) the whole process group is killed with SIGKILL, the directory is rebuilt
to a state a disk could hold after a power failure (`clean` or `torn`,
strict POSIX namespace), and a fresh process reopens the store and reads it.

Checked after each cut, with tier 3's checker:
1. every commit and ack whose return was reported before the cut is there (P6);
2. the marker is the state before or after the ack in flight, never a mix (P5);
3. freshness and dedup hold across the cut (P4); nothing never begun is there;
4. the store reopens.

`run_powercut_trials(factory_spec, workdir, trials, seed)` returns a list of
findings (empty: passed); `run(ctx)` wraps it as a certify tier result.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import select
import shutil
import signal
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from harness.exit_codes import HarnessError
from harness.powerloss.rebuild import arm, powercut

from .certificate import BUDGETS, FAILED, NOT_RUN, PASSED, Counterexample, TierResult
from .children import raise_if_harness_died
from .common import Context, in_child
from .loader import load
from .model import Violation
from .tier3_crash import PROPERTIES as T3_PROPERTIES
from .tier3_crash.check import check_trial
from .tier3_crash.trials import FreshStores, Trial, raise_if_died, snapshot, trial_refs

PROPERTIES = list(T3_PROPERTIES)
#: trials on one store directory before a fresh one
TRIALS_PER_STORE = 40


# -- the traced worker (a fresh process: the tracer is preloaded at exec) ------------------


def _child_main(argv: List[str]) -> None:
    spec, adapter, d, ops_path, wfd = argv[0], argv[1] == "1", argv[2], argv[3], int(argv[4])
    from .common import Retrier
    from .loader import classify, resolve

    def say(line: str) -> None:
        os.write(wfd, (line + "\n").encode())

    try:
        with open(ops_path, "rb") as f:
            ops = pickle.load(f)
        target = classify(resolve(spec), spec)
        if adapter:
            target.adapter = "one-by-one"
        store = Retrier(60).call(target.open, d)
        say("ready")
        for k, op in enumerate(ops):
            say(f"b {k}")
            if op[0] == "commit":
                flags = [bool(x) for x in Retrier(60).call(store.commit_samples, op[1])]
                say(f"d {k} " + json.dumps(flags))
            else:
                _, ids, step, flag = op
                Retrier(60).call(store.record_train_ack, list(ids), global_step=step, optimizer_durable=flag)
                say(f"d {k} null")
        say("ops_done")
        say("end")
    except BaseException as e:  # noqa: BLE001
        try:
            say("error " + json.dumps(f"{type(e).__name__}: {e}"))
        except OSError:
            pass
    os._exit(0)


def _new_log() -> Dict[str, Any]:
    return {"ready": False, "end": False, "began": set(), "done": {}, "error": None, "killed": False,
            "during_open": False, "buf": b""}


def _feed(log: Dict[str, Any], data: bytes) -> List[str]:
    log["buf"] += data
    *lines, log["buf"] = log["buf"].split(b"\n")
    events = []
    for raw in lines:
        ln = raw.decode("utf-8", "replace")
        if ln == "ready":
            log["ready"] = True
        elif ln == "end":
            log["end"] = True
        elif ln.startswith("b "):
            log["began"].add(int(ln[2:]))
        elif ln.startswith("d "):
            k, _, rest = ln[2:].partition(" ")
            log["done"][int(k)] = json.loads(rest)
        elif ln.startswith("error "):
            log["error"] = json.loads(ln[6:])
        events.append(ln)
    return events


# -- one trial ----------------------------------------------------------------------------


def _plan_cut(trial: Trial, rng: random.Random, op_time: float) -> Tuple[str, Tuple[str, Any], float]:
    """(victim, when, delay): the cut comes while the victim opens the store, after a
    seeded delay once it began a chosen op, or after it returned every op."""
    victim = rng.choice(list(trial.workers))
    n_ops = len(trial.workers[victim])
    r = rng.random()
    if r < 0.1:
        when: Tuple[str, Any] = ("open", rng.uniform(0.0, 0.4))  # seconds after spawn (or earlier, at ready)
    elif r < 0.2:
        when = ("after", n_ops)  # after every op returned
    else:
        when = ("began", rng.randrange(n_ops))
    return victim, when, rng.uniform(0.0, op_time * 1.5)


def _spawn_workers(spec: str, adapter: bool, d: str, meta: str, trial: Trial, env: Dict[str, str],
                   errf) -> Tuple[Dict[str, Dict[str, Any]], int]:
    """One traced process per worker, all in one new process group; (workers, the group id)."""
    procs: Dict[str, Dict[str, Any]] = {}
    pgid = 0
    for who in trial.workers:
        ops_path = os.path.join(meta, f"ops-{trial.no}-{who}.pkl")
        with open(ops_path, "wb") as f:
            pickle.dump(trial.workers[who], f)
        rfd, wfd = os.pipe()
        p = subprocess.Popen(
            [sys.executable, "-m", "harness.certify.tier5_power_loss", "--child", spec, "1" if adapter else "0", d,
             ops_path, str(wfd)],
            env=env, pass_fds=(wfd,), process_group=pgid,  # the first starts the group, the others join it
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errf,
        )
        os.close(wfd)
        pgid = pgid or p.pid
        procs[who] = {"p": p, "r": rfd, "log": _new_log(), "open": True}
    return procs, pgid


def _wait_for_cut(procs: Dict[str, Dict[str, Any]], victim: str, when: Tuple[str, Any], delay: float,
                  t_spawn: float) -> bool:
    """Read the workers' reports until the victim reaches the planned moment; False after 120 s."""
    due: Optional[float] = t_spawn + when[1] if when[0] == "open" else None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        live = [i for i in procs.values() if i["open"]]
        if not live and due is None:
            due = time.monotonic()
        timeout = 0.05 if due is None else max(0.0, due - time.monotonic())
        ready = select.select([i["r"] for i in live], [], [], timeout)[0] if live else []
        for who, info in procs.items():
            if info["r"] not in ready:
                continue
            data = os.read(info["r"], 65536)
            if not data:
                info["open"] = False
                if who == victim and due is None:
                    due = time.monotonic()
                continue
            for ev in _feed(info["log"], data):
                if who != victim or due is not None:
                    continue
                if when[0] == "open" and ev == "ready":
                    due = time.monotonic()
                elif when[0] == "began" and ev == f"b {when[1]}":
                    due = time.monotonic() + delay
                elif when[0] == "after" and ev == "ops_done":
                    due = time.monotonic()
        if due is not None and time.monotonic() >= due:
            return True
    return False


def _collect(procs: Dict[str, Dict[str, Any]], meta: str, trial: Trial) -> Dict[str, Any]:
    """Each worker's log, with what it reported before the kill (it returned before the cut)."""
    logs: Dict[str, Any] = {}
    for who, info in procs.items():
        info["p"].wait(60)
        while True:
            try:
                data = os.read(info["r"], 65536)
            except OSError:
                break
            if not data:
                break
            _feed(info["log"], data)
        os.close(info["r"])
        lg = info["log"]
        lg["killed"] = not lg["end"]
        lg["during_open"] = not lg["ready"]
        lg["exit_code"] = info["p"].returncode
        logs[who] = lg
        os.unlink(os.path.join(meta, f"ops-{trial.no}-{who}.pkl"))
    return logs


def _run_trial(spec: str, adapter: bool, d: str, meta: str, trial: Trial, rng: random.Random,
               op_time: float, mode: str, cut_seed: int) -> Dict[str, Any]:
    journal = os.path.join(meta, "journal.bin")
    env = dict(os.environ)
    env.update(arm(d, journal))
    env["PYTHONPATH"] = os.pathsep.join([p for p in sys.path if p] + [env.get("PYTHONPATH", "")])
    victim, when, delay = _plan_cut(trial, rng, op_time)
    t_spawn = time.monotonic()
    with open(os.path.join(meta, "stderr.txt"), "wb") as errf:
        procs, pgid = _spawn_workers(spec, adapter, d, meta, trial, env, errf)
        cut = _wait_for_cut(procs, victim, when, delay, t_spawn)
        try:
            os.killpg(pgid, signal.SIGKILL)  # every process of the run at the same instant
        except ProcessLookupError:
            pass
        logs = _collect(procs, meta, trial)
    for who, lg in logs.items():
        code = lg["exit_code"]
        if code != -signal.SIGKILL and not lg["end"] and lg["error"] is None:
            if not lg["ready"] or lg["began"] - set(lg["done"]):  # it ended inside a store call
                raise_if_died(who, trial.workers[who], lg, code)
            with open(os.path.join(meta, "stderr.txt"), "rb") as f:
                tail = f.read().decode("utf-8", "replace")[-2000:]
            raise HarnessError(f"power-cut worker {who} for {spec} exited with {code} before the cut "
                               f"without reporting why (store dir {d}): {tail}")
    stats = powercut(d, journal, mode=mode, seed=cut_seed)
    return {"logs": logs, "stats": stats, "when": when, "victim": victim, "timed_out": not cut}


# -- the trials ---------------------------------------------------------------------------


def run_powercut_trials(factory_spec: str, workdir: str, trials: int = 20, seed: int = 0, mode: str = "mixed",
                        progress: Callable[[str], None] = lambda m: None,
                        counters: Optional[Dict[str, Any]] = None) -> List[Dict[str, Any]]:
    """Run power-cut trials on a store; returns findings (dicts with property, message,
    trial, steps, powercut); empty if every trial passed. Stops at the first failing trial."""
    if mode not in ("clean", "torn", "mixed"):
        raise ValueError(f"power-cut trial mode {mode!r} is not clean, torn or mixed")
    target = load(factory_spec)
    adapter = target.adapter is not None
    os.makedirs(workdir, exist_ok=True)
    ctx = Context(target=target, profile="durable", budget=BUDGETS["quick"], seed=seed, workroot=workdir)
    meta = ctx.subdir("powercut-meta")
    rng = random.Random(seed * 977 + 5)
    base_seed = rng.randrange(1 << 30)
    warnings: List[str] = []
    c: Dict[str, Any] = counters if counters is not None else {}
    c.update({"trials": 0, "stores": 0, "unsynced_writes_dropped": 0, "bytes_lost": 0, "files_reverted": 0,
              "entries_undone": 0, "rebuild_ms_max": 0.0})
    findings: List[Dict[str, Any]] = []
    stores = FreshStores(ctx, base_seed, c, TRIALS_PER_STORE)
    try:
        for no in range(trials):
            d, _open_time, op_time, model = stores.for_trial(no)
            trial = Trial(no, rng, model, base_seed, ops_per_worker=rng.randint(2, 8))
            mode_now = rng.choice(["clean", "torn"]) if mode == "mixed" else mode
            out = _run_trial(factory_spec, adapter, d, meta, trial, rng, op_time, mode_now, rng.randrange(1 << 30))
            st = out["stats"]
            c["trials"] += 1
            c["unsynced_writes_dropped"] += st.unsynced_writes_dropped
            c["bytes_lost"] += st.bytes_lost
            c["files_reverted"] += len(st.files_reverted)
            c["entries_undone"] += len(st.entries_undone)
            c["rebuild_ms_max"] = max(c["rebuild_ms_max"], st.rebuild_ms)
            ids = sorted(set(trial_refs(trial)))
            old = [s for s in model.order if s in model.refs]
            snap = in_child(snapshot, target, d, ids + rng.sample(old, min(len(old), 20)), workdir=meta,
                            timeout=120, name="reopen")
            raise_if_harness_died(snap)
            cut_desc = (f"power cut ({mode_now}, seed {st.seed}) when worker {out['victim']} "
                        + {"open": "was opening the store", "after": "had returned every op",
                           "began": f"began op {out['when'][1]}"}[out["when"][0]]
                        + f": {st.summary()}")
            if not snap["ok"]:
                findings.append({"property": snap.get("prop") or "reopenable", "trial": no,
                                 "message": f"trial {no}: after the {cut_desc}: {snap['error']}",
                                 "steps": [cut_desc], "powercut": st.as_dict()})
                break
            bad = check_trial(trial, out["logs"], snap["value"], model, warnings, c)
            for prop, text, context in bad[:4]:
                findings.append({"property": prop, "trial": no, "message": f"trial {no}: {text}",
                                 "steps": context + [cut_desc, "reopen in a new process and read the state"],
                                 "powercut": st.as_dict()})
            if bad:
                break
            if (no + 1) % max(1, trials // 4) == 0:
                progress(f"power-cut trials: {no + 1}/{trials}")
    except Violation as e:
        findings.append({"property": e.prop, "trial": c["trials"], "message": e.message, "steps": [], "powercut": None})
    finally:
        stores.remove()
        shutil.rmtree(meta, ignore_errors=True)
    c["warnings"] = warnings
    return findings


TIER = 5


def run(ctx: Context) -> TierResult:
    """The trials as certify's tier 5 (power loss)."""
    tier = TIER
    t0 = time.monotonic()
    res = TierResult(tier=tier, status=PASSED, properties=list(PROPERTIES))
    trials = int(ctx.overrides.get("powercuts") or max(20, ctx.budget.t3_crashes // 5))
    spec = ctx.target.spec
    if spec is None:  # applicable but impossible: never a pass
        res.status = NOT_RUN
        res.reason = "power-cut trials need an importable store factory (module:attr) to start traced processes"
        res.duration_s = time.monotonic() - t0
        return res
    counters: Dict[str, Any] = {}
    executor = ctx.overrides.get("executor") or "local"
    if executor == "local":
        findings = run_powercut_trials(spec, ctx.subdir("powercut"), trials, ctx.seed, progress=ctx.progress,
                                       counters=counters)
    else:
        findings = _trials_on(executor, spec, trials, ctx.seed, int(ctx.overrides.get("jobs") or 2),
                              ctx.overrides.get("address"), counters, ctx.progress)
    for f in findings:
        res.counterexamples.append(Counterexample(tier=tier, property=f["property"], message=f["message"],
                                                  steps=f["steps"], reproduce=ctx.reproduce(tier) +
                                                  "  (process timing varies between runs)",
                                                  detail={"powercut": f["powercut"]}))
    res.warnings.extend(counters.pop("warnings", []))
    res.counters = counters
    if res.counterexamples:
        res.status = FAILED
    res.duration_s = time.monotonic() - t0
    return res


def _trials_share(args) -> Dict[str, Any]:
    """One share of the trials in a Ray task: its own scratch dir, its own seed."""
    import tempfile

    spec, trials, seed = args
    d = tempfile.mkdtemp(prefix="certify-powercut-")
    try:
        counters: Dict[str, Any] = {}
        findings = run_powercut_trials(spec, d, trials, seed, counters=counters)
        return {"findings": findings, "counters": counters}
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _trials_on(executor: str, spec: str, trials: int, seed: int, jobs: int, address: Optional[str],
               counters: Dict[str, Any], progress: Callable[[str], None]) -> List[Dict[str, Any]]:
    """The trials split into `jobs` shares (seeds seed*1000+i) on `executor` (harness.executors.map_trials);
    a lost share is a harness error, never a pass."""
    from harness.executors import map_shares, split_shares

    shares = [(spec, n, s) for n, s in split_shares(trials, jobs, seed)]
    findings: List[Dict[str, Any]] = []
    for item, res in map_shares(_trials_share, shares, executor, what="power-cut trials", jobs=len(shares),
                                address=address):
        findings.extend(res["findings"])
        for k, v in res["counters"].items():
            if k == "warnings":
                counters.setdefault(k, []).extend(v)
            elif k == "rebuild_ms_max":
                counters[k] = max(counters.get(k, 0.0), v)
            elif isinstance(v, (int, float)):
                counters[k] = counters.get(k, 0) + v
        progress(f"power-cut trials: share seed {item[2]} done on {executor} ({len(res['findings'])} findings)")
    return findings


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "--child":
        _child_main(sys.argv[2:])
    print("usage: python -m harness.certify.tier5_power_loss --child SPEC ADAPTER DIR OPS FD (internal)",
          file=sys.stderr)
    sys.exit(2)
