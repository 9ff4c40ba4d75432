"""Run one scenario with one seed on real processes: the process engine.

`run_scenario(scenario, seed)` builds the run directory, draws the schedule
(`harness.faults.make_schedule`), starts the store server (in-memory backend), the producer and the
consumer under the supervisor, fires the faults, restarts what was killed with
the next incarnation, and stops at completion, at a clean failure, or at the
time limit. It then reads the final state, merges the history, runs the
checkers P1-P8, judges the verdict and writes the report directory:

    reports/<scenario>-<seed>-<time>/
        scenario.toml schedule.json history.jsonl result.json report.md report.html timeline.png
        work/   (the run's files: kept when the verdict is unexpected, else removed)
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Dict, List, Optional, Union

from reference_impl.channel import read_json
from reference_impl.config import EXIT_FAIL_CLOSED, EXIT_FAILED, EXIT_OK, RunConfig, write_config
from reference_impl.private_files import make_private_dir

from ..exit_codes import HarnessError, describe_os_error
from ..faults import NETWORK_KINDS, Kill, Powercut, Schedule, Timed, make_schedule, rank_of
from ..run_plumbing import Progress, abandon_run_dir, check_disk_after, disk_full, durable_store, roll_up
from ..run_plumbing import scenario_config as config_for  # noqa: F401 (bench, tests)
from ..scenario import Scenario, load_scenario
from ..validation import check_for_run
from ..verdict import judge, verdict_word
from . import store_servers
from .fault_ledger import FaultLedger
from .powercut import KEEP_JOURNALS_ENV, PowerLoss, require_tracer, stopped_at_powercut
from .run_summary import incarnations, witness_summary
from .supervisor import Supervisor, pid_stopped

POLL_S = 0.005
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass
class RunResult:
    scenario: str
    seed: int
    outcome: str
    valid: bool  # no property violated
    as_expected: bool  # the verdict the scenario expects
    report_dir: str
    properties: Dict[str, Dict[str, Any]]
    replay_command: str
    wall_s: float
    verdict: Dict[str, Any] = field(default_factory=dict)
    faults_landed: int = 0
    inconclusive: bool = False  # planned faults did not all land: neither a pass nor a failure
    faults: Dict[str, Any] = field(default_factory=dict)
    coverage: Dict[str, Any] = field(default_factory=dict)  # harness.coverage.coverage_of

    @property
    def exit_code(self) -> int:
        if self.inconclusive:
            return 3
        return 0 if self.as_expected else 1


@dataclass(frozen=True)
class Resume:
    """A SIGCONT due at `at` for incarnation `inc` of `target` (by process group, or by
    `pid` for one rank of the consumer group); `fault` is the pause's id, None for a
    failpoint's own stop."""

    at: float
    target: str
    inc: int
    fault: Optional[int]
    pid: Optional[int] = None


@dataclass
class RunFrame:
    """What writing a run's result needs besides the final state."""

    sc: Scenario
    seed: int
    cfg: RunConfig
    rdir: str
    work: str
    ledger: FaultLedger
    keep_work: bool
    render: bool
    say: Callable[[str], None]
    pl: Optional[PowerLoss] = None


def check_devices(sc: Scenario) -> None:
    """A scenario that demands CUDA where there is none is bad input, said before anything starts."""
    wants = [k for k in ("producer_device", "consumer_device") if sc.topology[k] == "cuda"]
    if not wants:
        return
    from reference_impl.devices import DeviceError, pick_device

    try:
        pick_device("cuda", "harness")
    except DeviceError as e:
        from ..scenario import ScenarioError

        raise ScenarioError(f"{sc.path or sc.name}: topology.{wants[0]} = 'cuda' but {e}") from None


def _report_dir(reports_dir: str, scenario: str, seed: int) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    return os.path.join(reports_dir, f"{scenario}-{seed}-{stamp}")


def replay_command(report_dir: str) -> str:
    return f"python -m harness replay {shlex.quote(report_dir)}"


def run_scenario(scenario: Union[str, Scenario], seed: int, *, backend: Optional[str] = None,
                 reports_dir: str = "reports", quiet: bool = True, keep_work: bool = False,
                 history: bool = True, schedule: Union[Schedule, Dict[str, Any], None] = None,
                 on_event: Optional[Callable[[str], None]] = None, render: bool = True) -> RunResult:
    sc = load_scenario(scenario) if isinstance(scenario, str) else scenario
    if backend:
        sc = sc.with_backend(backend)
    seed = int(seed)
    check_for_run(sc, seed, reports_dir)
    check_devices(sc)
    schedule = Schedule.from_dict(schedule, "schedule") if schedule is not None else make_schedule(sc, seed)
    if schedule.has_powercut:
        require_tracer()  # UsageError (exit 2) without a compiler: refused before anything is written
    store_servers.check_for_run(sc.backend, schedule.has_powercut)
    # Validate the run's configuration before anything is written: a rejected
    # scenario leaves no report directory behind.
    cfg = config_for(sc, seed, os.path.join(reports_dir, "(not yet created)", "work"))
    rdir = _report_dir(reports_dir, sc.name, seed)
    work = os.path.join(rdir, "work")
    cfg.workdir = work
    try:
        make_private_dir(rdir)  # (0700: the work dir holds the store server's authkey)
        make_private_dir(work)
        os.mkdir(os.path.join(work, "history"))
        if not history:
            cfg.extra["history"] = False
        write_config(cfg)
        with open(os.path.join(rdir, "scenario.toml"), "w") as f:
            f.write(sc.to_toml())
        schedule.write(os.path.join(rdir, "schedule.json"))
    except FileExistsError as e:
        raise HarnessError(f"the run directory {rdir} exists already") from e
    except OSError as e:
        _discard(rdir)
        raise HarnessError(f"cannot write the run directory {rdir}: {describe_os_error(e)}; removed it") from e
    say = (lambda m: None) if quiet else (on_event or (lambda m: print(m, file=sys.stderr, flush=True)))
    t0 = time.monotonic()
    env = {}
    if sc.topology.get("variant"):
        from reference_impl.variant import ENV_VAR as VARIANT_VAR

        env[VARIANT_VAR] = sc.topology["variant"]
        # Variants live outside the installed packages (the bug zoo in tests/).
        env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), _REPO_ROOT, os.environ.get("PYTHONPATH", "")])
    sup = Supervisor(work, extra_env=env)
    ledger = FaultLedger(schedule.faults)
    pl = PowerLoss(rdir, work, sc.powercut_mode, seed) if schedule.has_powercut else None
    net = store_servers.for_run(cfg.backend, work, sup, sc.store, cfg.world_size, seed)
    try:
        if pl is not None:
            sup.extra_env.update(pl.arm())
        outcome, reason = _drive(sc, cfg, schedule, sup, say, ledger, pl, net)
        final = _final_state(sc, cfg, outcome, reason, sup, net)
        check_disk_after(work, final["outcome"])  # (a full disk is the environment's failure, not a finding)
    except BaseException as e:
        sup.shutdown()  # (before the run dir is removed: nothing may write into it any more)
        if pl is not None and not disk_full(e):
            pl.close(keep=bool(os.environ.get(KEEP_JOURNALS_ENV)))  # (a diagnosis rarely needs the journal)
        err = abandon_run_dir(rdir, e)
        if err is e:
            raise
        raise err from e
    finally:
        sup.shutdown()
        store_servers.close(net)
    wall = time.monotonic() - t0
    try:
        frame = RunFrame(sc, seed, cfg, rdir, work, ledger, keep_work, render, say, pl)
        return _finish(frame, final, wall)
    except OSError as e:  # e.g. ENOSPC: a half-written report is worse than none
        _discard(rdir)
        raise HarnessError(f"writing the report {rdir} failed: {describe_os_error(e)}; "
                           f"removed the half-written {rdir}") from e


@contextlib.contextmanager
def _naming(path: str):
    """An OSError raised while writing `path` names it (a write() failing with ENOSPC names nothing)."""
    try:
        yield path
    except OSError as e:
        if e.filename is None:
            e.filename = path
        raise


def _discard(rdir: str) -> None:
    shutil.rmtree(rdir, ignore_errors=True)


def _drive(sc: Scenario, cfg: RunConfig, schedule, sup: Supervisor, say, ledger: FaultLedger,
           pl: Optional[PowerLoss] = None, net: Optional[store_servers.ServedStore] = None) -> tuple:
    config_path = cfg.path("config.json")
    expect = sc.expect
    t0 = time.monotonic()
    deadline = t0 + float(expect["timeout_s"])
    prog = Progress(cfg.workdir)

    def start(name: str) -> None:
        inc = sup.incarnations.get(name, -1) + 1
        rules = schedule.failpoint_rules(name, inc)
        if name == "store_server":
            return net.start()
        if name == "producer":
            module = "reference_impl.producer"
        else:  # several data-parallel ranks run under one group process
            module = "reference_impl.consumer" if cfg.world_size == 1 else "reference_impl.dp_consumer"
        args = ["--config", config_path] + (["--resume"] if name == "consumer" and inc > 0 else [])
        p = sup.spawn(name, module, args, failpoints=rules, env=net.env_for(name) if net is not None else None)
        say(f"  spawn {name}#{inc} pid {p.pid}" + (f" failpoints {rules}" if rules else ""))

    if net is not None:
        start("store_server")
    start("producer")
    start("consumer")
    status = {"producer": "running", "consumer": "running"}
    pending = schedule.timed()
    # `pause` failpoints: each stop they cause is resumed after its duration (in
    # schedule order when one incarnation has several).
    fp_pause_s: Dict[tuple, List[float]] = {}
    for f in schedule.failpoints():
        if f.action == "pause":
            fp_pause_s.setdefault((f.target, f.incarnation), []).append(f.duration_s)
    fp_stops: Dict[tuple, int] = {}  # (name, inc) -> stops seen so far
    resume_at: List[Resume] = []
    first_try: Dict[int, float] = {}  # fault id -> when its delivery first failed
    outcome, reason = None, None

    def settle(outcome_now: str) -> None:
        why = (f"the run ended ({outcome_now}) before the trigger held "
               f"(published {prog.published}, consumed {prog.consumed})")
        for f in pending:
            ledger.miss(f.id, f"the run ended ({outcome_now}) before {f.target} could take it"
                        if f.id in first_try else why)
        for p in sup.reap():
            ledger.on_exit(p.name, p.inc, p.code)

    while True:
        now = time.monotonic()
        if now > deadline:
            sup.h.emit("timeout", bound_s=float(expect["timeout_s"]), state={
                "status": status, "published": prog.published, "consumed": prog.consumed})
            settle("timeout")
            return "timeout", f"no completion within {expect['timeout_s']} s"
        for p in sup.reap():
            code = p.code
            ledger.on_exit(p.name, p.inc, code)
            if p.name == "store_server":
                if status.get("producer") == "running" or status.get("consumer") == "running":
                    start("store_server")
                continue
            if code == EXIT_OK:
                status[p.name] = "done"
            elif code == EXIT_FAIL_CLOSED:
                status[p.name] = "fail_closed"
            elif code == EXIT_FAILED:
                status[p.name] = "failed"
            elif code < 0 or code == 128 + signal.SIGKILL:
                say(f"  {p.name}#{p.inc} killed ({code}); restarting")
                start(p.name)
            else:
                status[p.name] = "error"
                reason = f"{p.name}#{p.inc} exited {code}: {p.stderr_tail(1500).strip()}"
        vals = set(status.values())
        if "running" not in vals or ({"fail_closed", "failed", "error"} & vals and _peers_settled(sup, now)):
            outcome = roll_up(vals) or "completed"
            if outcome != "completed" and reason is None:
                failed = read_json(cfg.path("channel.failed")) or {}
                reason = failed.get("reason")
            settle(outcome)
            return outcome, reason
        if net is not None:
            net.arm_at_failpoints(sup, cfg.workdir, schedule.failpoints())
        cut = _powercut_due(pl, sup, cfg, schedule, ledger, status)
        if cut is not None:
            _cut_and_restart(pl, sup, cfg, ledger, status, cut, start, say)
            prog = Progress(cfg.workdir)  # the channel may be shorter now
            continue
        prog.update()
        for f in list(pending):
            if not (_incarnation_reached(f, sup, status) and f.holds(prog.published, prog.consumed, now - t0)):
                continue
            if isinstance(f, Powercut):
                pending.remove(f)
                _cut_and_restart(pl, sup, cfg, ledger, status, (f.id, "timed"), start, say)
                prog = Progress(cfg.workdir)
                break
            verdict = (net.deliver(f) if net is not None and f.kind in NETWORK_KINDS
                       else _deliver(f, sup, cfg, status, now, resume_at, ledger, pl))
            if verdict == "retry":
                first = first_try.setdefault(f.id, now)
                if now - first > DELIVERY_RETRY_S:
                    pending.remove(f)
                    p = sup.procs.get(f.target)
                    ledger.miss(f.id, f"could not signal {f.target} for {DELIVERY_RETRY_S:.0f} s: "
                                         f"{(p.last_signal_error if p else None) or 'its ranks were not published'}")
                continue
            pending.remove(f)
            if isinstance(verdict, str) and verdict != "sent":
                ledger.miss(f.id, verdict)
        for fid in ledger.poll(now):
            sup.h.emit("fault_landed_stop", fault=fid)
        for fid, how in net.landed() if net is not None else ():
            ledger.land(fid, how)
        for name in ("producer", "consumer"):
            p = sup.procs.get(name)
            key = (name, p.inc) if p else None
            if not p or key not in fp_pause_s or ledger.in_flight(name, p.inc):
                continue  # (a timed pause in flight is resumed by its own fault)
            if any(it.target.startswith(name) and it.inc == p.inc for it in resume_at):
                continue  # this stop's resume is scheduled already
            durations = fp_pause_s[key]
            if p.is_stopped():
                n = fp_stops[key] = fp_stops.get(key, 0) + 1
                resume_at.append(Resume(now + durations[min(n, len(durations)) - 1], name, p.inc, None))
            elif name == "consumer" and cfg.world_size > 1:
                # A `pause` failpoint inside one rank stops that rank, not the group.
                info = read_json(cfg.path(RANKS_FILE)) or {}
                for rank, pid in sorted((info.get("pids") or {}).items()):
                    if info.get("inc") == p.inc and pid_stopped(pid):
                        n = fp_stops[key] = fp_stops.get(key, 0) + 1
                        resume_at.append(Resume(now + durations[min(n, len(durations)) - 1],
                                                f"consumer.rank{rank}", p.inc, None, pid))
        for item in list(resume_at):
            if item.at <= now:
                resume_at.remove(item)
                if item.pid is not None:  # one rank: SIGCONT by pid
                    _signal_pid(item.pid, signal.SIGCONT)
                    sup.h.emit("cont", target=item.target, target_inc=item.inc, fault=item.fault)
                    if item.fault is not None:
                        ledger.resume_sent(item.fault)
                    continue
                p = sup.procs.get(item.target)
                if p and p.inc == item.inc and sup.cont(item.target, fault=item.fault) and item.fault is not None:
                    ledger.resume_sent(item.fault)
        time.sleep(POLL_S)


def _powercut_due(pl, sup: Supervisor, cfg: RunConfig, schedule, ledger: FaultLedger, status) -> Optional[tuple]:
    """(fault id, cause) when a process stopped itself at a `powercut` failpoint, else None."""
    if pl is None:
        return None
    for name in ("producer", "consumer"):
        p = sup.procs.get(name)
        if p is None or status.get(name) != "running" or p.code is not None:
            continue  # (never poll here: an end is reaped, and reported, at the top of the loop)
        stopped = p.is_stopped()
        if not stopped and name == "consumer" and cfg.world_size > 1:
            info = read_json(cfg.path(RANKS_FILE)) or {}
            stopped = info.get("inc") == p.inc and any(pid_stopped(x) for x in (info.get("pids") or {}).values())
        if not stopped:
            continue
        fid = stopped_at_powercut(cfg.workdir, name, p.inc, schedule.failpoints())
        if fid is not None and not ledger.settled(fid):
            return fid, f"failpoint in {name}#{p.inc}"
    return None


def _cut_and_restart(pl: PowerLoss, sup: Supervisor, cfg: RunConfig, ledger: FaultLedger, status, cut, start,
                     say) -> None:
    """Cut power to every process, settle what the cut killed, restart every process that was running."""
    fid, cause = cut
    if pl is None:  # cannot happen: a schedule with a power cut always has its PowerLoss
        raise HarnessError(f"fault {fid}: a power cut in a run started without tracing")
    rec = pl.cut(sup, fid, cause, cfg.path(RANKS_FILE))
    for p in sup.reap():
        ledger.on_exit(p.name, p.inc, p.code)
    ledger.land(fid, f"power cut ({cause}): every process reaped dead ({', '.join(rec['killed']) or 'none running'}) "
                     f"and the work dir rebuilt ({rec['unsynced_writes_dropped']} unsynced writes dropped, "
                     f"{len(rec['files_reverted'])} files reverted)")
    say(f"  power cut #{rec['index']} ({cause}): killed {rec['killed']}; {rec['unsynced_writes_dropped']} unsynced "
        f"writes dropped, {rec['bytes_lost']} bytes lost; restarting")
    if "store_server" in sup.procs:
        start("store_server")
    for name in ("producer", "consumer"):
        if status.get(name) == "running":
            start(name)


DELIVERY_RETRY_S = 30.0  # a target that exists but cannot be signalled for this long: the fault is missed


def _deliver(f: Timed, sup: Supervisor, cfg: RunConfig, status: Dict[str, str], now: float,
             resume_at, ledger: FaultLedger, pl: Optional[PowerLoss] = None):
    """Send one timed fault: "sent", "retry" (deliver as soon as the target can take it), or a miss reason."""
    target = f.target
    if target == "store_server" and "store_server" not in sup.procs:
        return f"no store_server: backend {cfg.backend!r} runs none (inmemory and redis do)"
    n = rank_of(target)
    if n is not None:
        if n >= cfg.world_size:
            return f"no such rank: {target} with consumer_ranks = {cfg.world_size}"
        if status.get("consumer") != "running":
            return f"target exited already: consumer is {status.get('consumer')}"
        group = sup.procs.get("consumer")
        if group is None or group.poll() is not None or ledger.in_flight(target, group.inc):
            return "retry"
        return "sent" if _signal_rank(sup, cfg, n, f, now, resume_at, ledger, pl) else "retry"
    if target not in ("producer", "consumer", "store_server"):
        return f"target not in topology: {target!r}"
    if target != "store_server" and status.get(target) != "running":
        return f"target exited already: {target} is {status.get(target)}"
    p = sup.procs.get(target)
    if p is None or p.poll() is not None:
        return "retry"  # being restarted: the next incarnation takes it
    if ledger.in_flight(target, p.inc):
        return "retry"  # one fault at a time per incarnation: a second kill of a dying process proves nothing
    if isinstance(f, Kill):
        if pl is not None and not pl.stop_for_kill(p, cfg.path(RANKS_FILE)):
            return "retry"  # traced: not while a system call may lack its journal record
        sig = f.signal or signal.SIGKILL
        if not sup.kill(target, fault=f.id, sig=sig):
            return "retry"
        ledger.kill_sent(f.id, target, p.inc, p.pid, sig=sig)
        return "sent"
    if not sup.pause(target, fault=f.id):
        return "retry"
    ledger.pause_sent(f.id, target, p.inc, p.pid)
    resume_at.append(Resume(now + f.duration_s, target, p.inc, f.id))
    return "sent"


RANKS_FILE = "consumer.ranks.json"  # {"inc": N, "pids": {"0": pid, ...}} written by the group process


def _signal_rank(sup: Supervisor, cfg: RunConfig, rank: int, f: Timed, now: float, resume_at,
                 ledger: FaultLedger, pl: Optional[PowerLoss] = None) -> int:
    """Kill or pause one rank of the consumer group by its pid; 1 if it fired."""
    info = read_json(cfg.path(RANKS_FILE)) or {}
    group = sup.procs.get("consumer")
    pid = (info.get("pids") or {}).get(str(rank))
    if pid is None or group is None or info.get("inc") != group.inc:
        return 0
    target = f"consumer.rank{rank}"
    if isinstance(f, Kill):
        if pl is not None and not pl.stop_pid_for_kill(int(pid)):
            return 0  # traced: not while a system call may lack its journal record
        if not _signal_pid(pid, signal.SIGKILL):
            return 0
        sup.h.emit("kill", target=target, target_inc=group.inc, signal=int(signal.SIGKILL), fault=f.id)
        ledger.kill_sent(f.id, target, group.inc, int(pid), by_pid=True)
    else:
        if not _signal_pid(pid, signal.SIGSTOP):
            return 0
        sup.h.emit("pause", target=target, target_inc=group.inc, fault=f.id)
        ledger.pause_sent(f.id, target, group.inc, int(pid), by_pid=True)
        resume_at.append(Resume(now + f.duration_s, target, group.inc, f.id, pid))
    return 1


def _signal_pid(pid: int, sig: int) -> bool:
    """Signal one pid; False when it is gone (ESRCH) or not ours (EPERM)."""
    try:
        os.kill(int(pid), sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _peers_settled(sup: Supervisor, now: float, grace_s: float = 10.0) -> bool:
    """After a clean failure, give the peer time to see the sentinel and exit."""
    live = [p for n, p in sup.procs.items() if n != "store_server" and p.poll() is None]
    if not live:
        return True
    if not hasattr(sup, "_settle_since"):
        sup._settle_since = now
    if now - sup._settle_since > grace_s:
        for p in live:
            sup.kill(p.name)
        return True
    return False


def _incarnation_reached(f: Timed, sup: Supervisor, status: Dict[str, str]) -> bool:
    """Whether the incarnations the plan holds `f` back for are alive (or their process has ended)."""
    need = dict(f.after or {}) if isinstance(f, Powercut) else (
        {f.process: f.incarnation} if f.incarnation is not None else {})
    for name, inc in need.items():
        p = sup.procs.get(name)
        if status.get(name, "running") == "running" and (p is None or p.inc < inc):
            return False
    return True


def _final_state(sc, cfg, outcome, reason, sup, net=None) -> Dict[str, Any]:
    from ..final_state import read_final_state

    durable = durable_store(cfg.backend, sup.incarnations.get("store_server", 0))
    # Stop pipeline processes before reading the store; keep the store server up.
    for name, p in sup.procs.items():
        if name != "store_server" and p.poll() is None:
            sup.kill(name)
            try:
                p.popen.wait(timeout=10)
            except Exception:
                pass
    final = read_final_state(cfg, outcome=outcome, durable_store=durable, bound_s=float(sc.expect["bound_s"]),
                             fail_closed_reason=reason if outcome == "fail_closed" else None)
    final["reason"] = reason
    final["store_server_restarts"] = sup.incarnations.get("store_server", 0)
    final["store_server"] = net.summary() if net is not None else None
    return final


def _finish(frame: "RunFrame", final: Dict[str, Any], wall: float) -> RunResult:
    sc, seed, cfg, rdir, work = frame.sc, frame.seed, frame.cfg, frame.rdir, frame.work
    ledger, keep_work, render, say, pl = frame.ledger, frame.keep_work, frame.render, frame.say, frame.pl
    from ..checkers import check_all
    from ..coverage import coverage_of, gaps, scenario_points
    from ..history import load_history, write_merged

    events = load_history(work)
    with _naming(os.path.join(rdir, "history.jsonl")) as path:
        write_merged(events, path)
    # Failpoints are seen only in the processes' own histories.
    ledger.finish(events, f"the run ended ({final['outcome']})")
    faults = ledger.summary()
    results = check_all(events, final)
    props = {r.prop: r.to_dict() for r in results}
    outcome = final["outcome"]
    verdict = judge(props, outcome, sc.expect, faults=faults)
    valid = not any(r.get("valid") is False for r in props.values())
    cov = coverage_of(events, final, list(ledger.faults.values()))
    result = {
        "scenario": sc.name,
        "scenario_path": sc.path,
        "seed": seed,
        "backend": cfg.backend,
        "outcome": outcome,
        "reason": final.get("reason"),
        "valid": valid,
        "verdict": verdict,
        "properties": props,
        "wall_s": round(wall, 3),
        "faults": faults,
        "incarnations": incarnations(events),
        "final": {k: v for k, v in final.items() if k not in ("witness", "planned_ids", "channel_ids")},
        "witness_summary": witness_summary(final),
        "coverage": cov,
        "coverage_gaps": gaps(cov, sc.expect.get("sometimes") or (), scenario_points(sc)),
        **({"powerloss": pl.summary()} if pl is not None else {}),
        "replay_command": replay_command(rdir),
        "report_dir": rdir,
        "created": datetime.now().isoformat(timespec="seconds"),
    }
    with _naming(os.path.join(rdir, "result.json")) as path, open(path, "w") as f:
        json.dump(result, f, indent=2, sort_keys=True, default=str)
    if render:
        from ..reports.render import render_report

        render_report(rdir)
    kept = keep_work or not verdict["as_expected"]
    if not kept:
        shutil.rmtree(work, ignore_errors=True)
    if pl is not None:
        pl.close(keep=kept)
    word = verdict_word(verdict)
    say(f"{sc.name} seed {seed}: {outcome}, {word} ({wall:.1f} s) -> {rdir}")
    return RunResult(sc.name, seed, outcome, valid, verdict["as_expected"], rdir, props, replay_command(rdir),
                     wall, verdict, faults["landed"], bool(verdict.get("inconclusive")), faults, cov)
