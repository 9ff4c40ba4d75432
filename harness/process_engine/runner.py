"""Run one scenario with one seed on real processes: the process engine.

`run_scenario(scenario, seed)` validates the scenario, draws the schedule
(`harness.faults.make_schedule`), builds the run directory, and hands the
processes and the faults to one `Run` (`harness.process_engine.run`), which
starts the store server (in-memory and Redis backends), the producer and the
consumer under the supervisor, fires the faults, restarts what was killed
with the next incarnation, and stops at completion, at a clean failure, or at
the time limit. It then reads the final state, merges the history, runs the
checkers P1-P8, judges the verdict, writes the report directory and returns
the `RunResult` (the CLI prints it from memory):

    reports/<scenario>-<seed>-<time>/
        scenario.toml schedule.json history.jsonl result.json report.md report.html timeline.png
        work/   (the run's files: kept when the verdict is unexpected, else removed; while the
                run lasts, a link to its work dir on a tmpfs: `harness.process_engine.work_dir`)
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Dict, Optional, Union

from reference_impl.config import RunConfig, write_config
from reference_impl.private_files import make_private_dir

from ..exit_codes import HarnessError, describe_os_error
from ..faults import Schedule, make_schedule
from ..run_plumbing import abandon_run_dir, check_disk_after, disk_full, durable_store
from ..run_plumbing import scenario_config as config_for  # noqa: F401 (bench, tests)
from ..scenario import Scenario, load_scenario
from ..validation import check_for_run
from ..verdict import judge, verdict_line, verdict_word
from . import store_servers
from .fault_ledger import FaultLedger
from .powercut import KEEP_JOURNALS_ENV, PowerLoss, require_tracer
from .run import POLL_S, Run  # noqa: F401 (POLL_S: bench)
from .run_summary import incarnations, witness_summary
from .supervisor import Supervisor
from .work_dir import make_work_dir, settle_work_dir

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

    @property
    def verdict_line(self) -> str:
        """The verdict in one line, as the report heads it."""
        return verdict_line(self.verdict, self.outcome)


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
    work = None
    try:
        make_private_dir(rdir)  # (0700: the work dir holds the store server's authkey)
        work = cfg.workdir = make_work_dir(rdir)  # (on a tmpfs when there is one: work_dir.py)
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
        _discard(rdir, work)
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
        run = Run(cfg, schedule, sup, ledger, timeout_s=sc.expect["timeout_s"], say=say, pl=pl, net=net)
        outcome, reason = run.drive()
        final = _final_state(sc, cfg, outcome, reason, sup, net)
        check_disk_after(work, final["outcome"])  # (a full disk is the environment's failure, not a finding)
    except BaseException as e:
        sup.shutdown()  # (before the run dir is removed: nothing may write into it any more)
        if pl is not None:  # (stops its compactor; a diagnosis rarely needs the journal)
            pl.close(keep=bool(os.environ.get(KEEP_JOURNALS_ENV)) and not disk_full(e))
        settle_work_dir(rdir, work, keep=not disk_full(e))  # (left for diagnosis, in the run dir)
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
        _discard(rdir, work)
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


def _discard(rdir: str, work: Optional[str] = None) -> None:
    if work is not None:
        shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(rdir, ignore_errors=True)


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
    if pl is not None:
        pl.close(keep=kept)
    settle_work_dir(rdir, work, kept)
    word = verdict_word(verdict)
    say(f"{sc.name} seed {seed}: {outcome}, {word} ({wall:.1f} s) -> {rdir}")
    return RunResult(sc.name, seed, outcome, valid, verdict["as_expected"], rdir, props, replay_command(rdir),
                     wall, verdict, faults["landed"], bool(verdict.get("inconclusive")), faults, cov)
