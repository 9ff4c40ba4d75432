"""`run_campaign`: every (scenario, seed) on an executor, into one campaign dir it owns.

The campaign dir is `<reports>/campaign-<time>-<pid>-<random>`, created with
exist_ok=False, so two campaigns never share one. A run that matches its
expected verdict is removed unless `keep_all`; every run dir left there is a
seed that needs a look, with its full report. `summary.json`, `summary.md`
(and `--junit FILE`) are written atomically at the end.

Interrupts: SIGINT and SIGTERM stop the campaign: the executor's workers are
killed (their zygotes and runs follow by parent-death signal), every run dir
without a result.json gets an `INCOMPLETE.json` marker, every unfinished
(scenario, seed) becomes an `incomplete` row, and a partial summary marked
`interrupted` is written. `DFH_CAMPAIGN_ID` is set in the environment of
everything the campaign starts, so leftovers can be found by that marker.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import sys
import threading
import time
from datetime import datetime
from typing import Any, Dict, List, Optional, Sequence

from reference_impl.fileio import write_json_atomic

from ..executors import TrialLost, make_executor
from ..exit_codes import HarnessError, UsageError
from .reaper import Reaper
from .summary import progress_bar, summarize, summary_table, write_junit, write_text_atomic
from .trial import INCOMPLETE_MARKER, error_row, run_trial, scratch_root, unpack_report

CAMPAIGN_ENV = "DFH_CAMPAIGN_ID"
MAX_SEED = 2 ** 63 - 1


class CampaignInterrupted(BaseException):
    """The campaign loop stops: SIGINT, SIGTERM or SIGHUP was received."""

    def __init__(self, signame: str) -> None:
        super().__init__(signame)
        self.signame = signame


def parse_seeds(spec: str) -> List[int]:
    """`A..B` (inclusive), `A,B,C`, or `N` (seeds 0..N-1); at least one seed, each in 0..2**63-1."""
    s = spec.strip()
    allowed = "allowed: A..B (inclusive), A,B,C, or N for 0..N-1"
    try:
        if ".." in s:
            a, b = s.split("..", 1)
            lo, hi = int(a), int(b)
            if hi < lo:
                raise ValueError
            seeds = range(lo, hi + 1)
        elif "," in s:
            seeds = [int(x) for x in s.split(",") if x.strip()]
        else:
            seeds = range(int(s))
    except ValueError:
        raise UsageError(f"bad --seeds {spec!r}; {allowed}") from None
    if len(seeds) == 0:
        raise UsageError(f"--seeds {spec!r} selects no seeds; {allowed}")
    bad = [x for x in (min(seeds), max(seeds)) if not 0 <= x <= MAX_SEED]
    if bad:
        raise UsageError(f"--seeds {spec!r}: seed {bad[0]} out of range 0..{MAX_SEED}")
    return list(dict.fromkeys(seeds))


def make_campaign_dir(reports_dir: str) -> str:
    try:
        os.makedirs(reports_dir, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--reports {reports_dir!r}: cannot create it: {e.strerror or e}") from None
    if not os.access(reports_dir, os.W_OK | os.X_OK):
        raise UsageError(f"--reports {reports_dir!r}: not writable")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for _ in range(20):
        cdir = os.path.join(reports_dir, f"campaign-{stamp}-{os.getpid()}-{secrets.token_hex(3)}")
        try:
            os.mkdir(cdir, 0o700)
            os.chmod(cdir, 0o700)  # (private: trials keep work dirs with keys in it)
            return cdir
        except FileExistsError:
            continue
    raise UsageError(f"--reports {reports_dir!r}: could not create a unique campaign dir")


def check_junit_path(path: Optional[str]) -> None:
    if not path:
        return
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UsageError(f"--junit {path!r} is a directory")
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"--junit {path!r}: folder {parent!r} does not exist or is not writable")


def _mark_incomplete(cdir: str, unfinished: Dict[tuple, Dict[str, Any]], reason: str) -> Dict[tuple, str]:
    """Mark each run dir without result.json; return {(scenario, seed): dir} for the unfinished ones."""
    found: Dict[tuple, str] = {}
    try:
        entries = sorted(os.listdir(cdir))
    except OSError:
        return found
    for d in entries:
        p = os.path.join(cdir, d)
        if not os.path.isdir(p) or os.path.exists(os.path.join(p, "result.json")):
            continue
        key = next((k for k in unfinished if d.startswith(f"{k[0]}-{k[1]}-")), None)
        write_json_atomic(os.path.join(p, INCOMPLETE_MARKER),
                          {"status": "incomplete", "reason": reason, "scenario": key and key[0],
                           "seed": key and key[1]})
        if key:
            found[key] = p
    return found


def run_campaign(scenarios: Sequence[Any], seeds: Sequence[int], *, jobs: int = 2, reports_dir: str = "reports",
                 backend: Optional[str] = None, keep_all: bool = False, progress: bool = True,
                 executor: str = "local", address: Optional[str] = None, junit: Optional[str] = None,
                 max_retries: int = 2, ship_code: bool = False,
                 connect_timeout_s: float = 30.0, require_coverage: bool = False) -> Dict[str, Any]:
    """Run every (scenario, seed); `scenarios` are names, paths or loaded Scenario objects.

    `require_coverage`: a scenario whose runs, summed, never reached one of its
    `expect.sometimes` conditions or one of the failpoints it aims at makes
    the campaign inconclusive (`summary.coverage_inconclusive`)."""
    if jobs < 1:
        raise UsageError(f"-j/--jobs {jobs}: must be at least 1")
    if not seeds:
        raise UsageError("--seeds selects no seeds")
    check_junit_path(junit)
    loaded = _load_scenarios(scenarios, backend, seeds, reports_dir)
    cdir = make_campaign_dir(reports_dir)
    cid = os.path.basename(cdir)
    ship = executor == "ray"
    specs = [{"scenario": sc, "name": sc.name, "seed": seed, "reports": cdir, "backend": None,
              "keep_all": keep_all, "ship": ship, "campaign_id": cid} for sc in loaded for seed in seeds]
    extra = ({"max_retries": max_retries, "env": {CAMPAIGN_ENV: cid}, "ship_code": ship_code,
              "connect_timeout_s": connect_timeout_s} if ship else {"max_retries": max_retries})
    ex = make_executor(executor, jobs, address, **extra)
    rows: List[Dict[str, Any]] = []
    t0 = time.monotonic()
    # Started before anything carries the marker; sweeps when this process dies or finishes.
    reaper = Reaper(cid, ex.temp_dirs() + ([scratch_root(cid)] if ship else []))
    old_env = os.environ.get(CAMPAIGN_ENV)
    os.environ[CAMPAIGN_ENV] = cid
    try:
        interrupted = _run_specs(ex, specs, cdir, rows, progress, t0)
    finally:
        if old_env is None:
            os.environ.pop(CAMPAIGN_ENV, None)
        else:
            os.environ[CAMPAIGN_ENV] = old_env
        if ship:
            shutil.rmtree(scratch_root(cid), ignore_errors=True)
        reaper.close()
    if progress:
        print(file=sys.stderr)
    if interrupted:
        _account_unfinished(cdir, specs, rows, interrupted)
    else:
        _sweep_lost_attempts(cdir, rows)
    from ..coverage import scenario_points

    require = ({sc.name: (list(sc.expect.get("sometimes") or []), scenario_points(sc)) for sc in loaded}
               if require_coverage else None)
    summary = summarize(rows, require)
    summary.update({"campaign_dir": cdir, "wall_s": round(time.monotonic() - t0, 1), "jobs": jobs,
                    "executor": executor, "address": address, "interrupted": bool(interrupted),
                    "signal": interrupted, "seeds": list(seeds), "executor_start_s": getattr(ex, "start_s", None),
                    "executor_stop_s": getattr(ex, "stop_s", None),
                    "ray_monitor_stopped": getattr(ex, "monitor_stopped", None),
                    "trials_retried": getattr(ex, "retried", None)})
    # Each run's coverage is summed into its scenario's row (and kept in its report, if kept).
    runs = sorted(({k: v for k, v in r.items() if k != "coverage"} for r in rows),
                  key=lambda r: (r["scenario"], r["seed"]))
    write_json_atomic(os.path.join(cdir, "summary.json"), {"summary": summary, "runs": runs})
    write_text_atomic(os.path.join(cdir, "summary.md"), summary_table(summary))
    if junit:
        write_junit(junit, runs, summary)
    return summary


def _load_scenarios(scenarios: Sequence[Any], backend: Optional[str], seeds: Sequence[int],
                    reports_dir: str) -> List[Any]:
    """The distinct scenarios (on `backend` if given), their output names checked against the file system."""
    from ..scenario import load_scenario
    from ..validation import check_output_names

    loaded: List[Any] = []
    for s in scenarios:
        sc = load_scenario(s) if isinstance(s, str) else s
        if backend:
            sc = sc.with_backend(backend)
        if sc.name not in [x.name for x in loaded]:
            loaded.append(sc)
    for sc in loaded:  # (the campaign's own folder is one more level: its longest name stands for it)
        check_output_names(sc.name, max(seeds), reports_dir, f"{sc.path or sc.name}: name",
                           parents=[f"campaign-20260101-000000-{4194304}-abcdef"])
    return loaded


def _run_specs(ex: Any, specs: List[Dict[str, Any]], cdir: str, rows: List[Dict[str, Any]], progress: bool,
               t0: float) -> Optional[str]:
    """Every spec on the executor, its row appended to `rows`; the name of the signal that stopped it, if any."""
    caught: List[str] = []
    restore = _trap_signals(caught)
    interrupted: Optional[str] = None
    try:
        with ex:
            _trap_signals(caught)  # again: ray.init installs its own SIGTERM handler
            try:
                for batch in ex.run(run_trial, specs):
                    for spec, res in batch:
                        rows.append(_row(spec, res, cdir))
                    if progress:
                        progress_bar(len(rows), len(specs), rows, time.monotonic() - t0)
                    if caught:
                        raise CampaignInterrupted(caught[0])
            except (KeyboardInterrupt, CampaignInterrupted) as e:
                # Inside the `with`: its exit would wait for the running trials.
                interrupted = e.signame if isinstance(e, CampaignInterrupted) else "SIGINT"
                _ignore_signals()
                ex.abort()
    except (KeyboardInterrupt, CampaignInterrupted) as e:  # while the executor started or stopped
        interrupted = e.signame if isinstance(e, CampaignInterrupted) else "SIGINT"
        _ignore_signals()
        ex.abort()
    except (UsageError, HarnessError):  # the executor could not start: no campaign was run
        if not os.listdir(cdir):
            os.rmdir(cdir)
        raise
    finally:
        restore()
    return interrupted


def _account_unfinished(cdir: str, specs: List[Dict[str, Any]], rows: List[Dict[str, Any]], interrupted: str) -> None:
    """An `incomplete` row (and a marked run dir, if it has one) for every spec the interrupt left unfinished."""
    done = {(r["scenario"], r["seed"]) for r in rows}
    unfinished = {(s["name"], s["seed"]): s for s in specs if (s["name"], s["seed"]) not in done}
    dirs = _mark_incomplete(cdir, unfinished, f"campaign interrupted by {interrupted}")
    for key in unfinished:
        row = error_row(key[0], key[1], f"not finished: campaign interrupted by {interrupted}", status="incomplete")
        row["report_dir"] = dirs.get(key)
        rows.append(row)


def _sweep_lost_attempts(cdir: str, rows: List[Dict[str, Any]]) -> None:
    """Run dirs without result.json left by attempts whose worker died: removed when a retry of
    the same (scenario, seed) finished, marked incomplete otherwise."""
    kept = {r.get("report_dir") for r in rows}
    lost = {(r["scenario"], r["seed"]): r for r in rows if r["status"] == "harness_error"}
    try:
        entries = sorted(os.listdir(cdir))
    except OSError:
        return
    for d in entries:
        p = os.path.join(cdir, d)
        if not os.path.isdir(p) or p in kept or os.path.exists(os.path.join(p, "result.json")):
            continue
        key = next((k for k in lost if d.startswith(f"{k[0]}-{k[1]}-")), None)
        if key is None:
            shutil.rmtree(p, ignore_errors=True)
        else:
            write_json_atomic(os.path.join(p, INCOMPLETE_MARKER),
                              {"status": "incomplete", "reason": lost[key].get("error"), "scenario": key[0],
                               "seed": key[1]})


def _row(spec: Dict[str, Any], res: Any, cdir: str) -> Dict[str, Any]:
    if isinstance(res, TrialLost):
        return error_row(spec["name"], spec["seed"], res.reason)
    if res.get("archive") is not None:
        try:
            unpack_report(res, cdir)
        except Exception as e:  # a report that cannot come back is the harness's failure, not a pass
            res.pop("archive", None)
            res.update(status="harness_error", as_expected=False, error=f"shipping the report back failed: {e!r}")
    return res


def _trap_signals(caught: List[str]):
    """SIGINT, SIGTERM and SIGHUP note their name in `caught`; the campaign loop stops at its next tick.

    The handlers never raise: an exception raised inside Ray's native wait is a
    SystemError, not an interrupt. Returns the restorer (a no-op off the main thread).
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def on_signal(signum, frame):
        caught.append(signal.Signals(signum).name)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}

    def restore():
        for s, h in old.items():
            signal.signal(s, h)

    return restore


def _ignore_signals() -> None:
    if threading.current_thread() is threading.main_thread():
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)


def load_summary(cdir: str) -> Dict[str, Any]:
    with open(os.path.join(cdir, "summary.json")) as f:
        return json.load(f)
