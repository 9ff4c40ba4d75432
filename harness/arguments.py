"""The one argument tree of `python -m harness`: every subcommand, its options and their defaults.

Options that mean the same thing have one name and one default in every
subcommand: `--reports DIR` (where reports go), `-j/--jobs N` (trials or
shares at once, default one per CPU), `--seed`, `--backend`, `-q/--quiet`,
and the executor group (`--executor`, `--address`, `--connect-timeout`).
Each subcommand names its handler (`module:function`, imported only when that
subcommand runs); `harness.cli.main` parses, then calls it under one exit
policy (`harness.exit_codes.guarded`).
"""

from __future__ import annotations

import argparse
import os

from .exit_codes import UsageError

DEFAULT_JOBS = os.cpu_count() or 2
DEFAULT_REPORTS = "reports"
DEFAULT_SCENARIO = "kill-random"
DEFAULT_CONNECT_TIMEOUT_S = 30.0
EXECUTORS = ("local", "ray")


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v} is not >= 1")
    return v


def jobs_of(args: argparse.Namespace, default: int = DEFAULT_JOBS) -> int:
    """`-j/--jobs` (`default` when not given), checked: bad input names the option."""
    if args.jobs is None:
        return default
    if args.jobs < 1:
        raise UsageError(f"-j/--jobs {args.jobs}: must be at least 1")
    return args.jobs


def check_executor(args: argparse.Namespace) -> None:
    """The executor group, checked; an unreachable --address fails here (exit 2), before any work."""
    if args.address and args.executor != "ray":
        raise UsageError(f"--address {args.address!r} needs --executor ray")
    if not args.connect_timeout > 0:
        raise UsageError(f"--connect-timeout {args.connect_timeout}: must be a number of seconds > 0")
    if getattr(args, "max_retries", 0) < 0:
        raise UsageError(f"--max-retries {args.max_retries}: must be at least 0")
    from .executors.ray import check_reachable, set_default_connect_timeout

    set_default_connect_timeout(args.connect_timeout)
    if args.address:
        check_reachable(args.address, args.connect_timeout)


def _reports(p: argparse.ArgumentParser, what: str = "reports") -> None:
    p.add_argument("--reports", default=DEFAULT_REPORTS, metavar="DIR",
                   help=f"where {what} are written (default: {DEFAULT_REPORTS})")


def _jobs(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("-j", "--jobs", type=int,
                   help=f"{what} at once (default: one per CPU, {DEFAULT_JOBS} here)")


def _quiet(p: argparse.ArgumentParser, what: str = "no progress lines") -> None:
    p.add_argument("-q", "--quiet", action="store_true", help=what)


def _executor(p: argparse.ArgumentParser, what: str) -> None:
    g = p.add_argument_group("executor")
    g.add_argument("--executor", choices=EXECUTORS, default="local",
                   help=f"where {what} run: local worker processes (default) or Ray tasks")
    g.add_argument("--address", help="with --executor ray: an existing Ray cluster (HOST:PORT, ray://HOST:PORT or "
                                     "auto); default: a local instance with --jobs CPUs")
    g.add_argument("--connect-timeout", type=float, default=DEFAULT_CONNECT_TIMEOUT_S, metavar="S",
                   help="with --address: seconds to reach the cluster before stopping with exit 2 "
                        f"(default {DEFAULT_CONNECT_TIMEOUT_S:g})")


def _command(sub, name: str, handler: str, help: str, **kw) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=kw.pop("description", help), **kw)
    p.set_defaults(handler=handler)
    return p


def _run_commands(sub) -> None:
    r = _command(sub, "run", "harness.cli:cmd_run", "run one scenario with one seed on real processes")
    r.add_argument("scenario", nargs="?", default=DEFAULT_SCENARIO,
                   help=f"scenario name or .toml path (default: {DEFAULT_SCENARIO})")
    r.add_argument("--seed", type=int, default=0, help="the seed every random choice flows from (default 0)")
    r.add_argument("--backend", help="override the scenario's store backend (sqlite, inmemory, pkg.mod:Factory)")
    _reports(r)
    r.add_argument("--keep-work", action="store_true", help="keep the run's work files even when as expected")
    _quiet(r, "print only the verdict")
    p = _command(sub, "replay", "harness.cli:cmd_replay", "rerun a report's scenario copy with its seed and schedule")
    p.add_argument("report_dir")
    _reports(p)
    s = _command(sub, "shrink", "harness.cli:cmd_shrink", "reduce a failing run to the fewest faults that still fail")
    s.add_argument("report_dir")
    s.add_argument("--tries", type=positive_int, default=2, help="runs per candidate (>= 1, default 2)")
    s.add_argument("--out", metavar="FILE", help="where to write the shrunk scenario (default: in the report dir)")
    rp = _command(sub, "report", "harness.cli:cmd_report", "re-render report.md, report.html and timeline.png")
    rp.add_argument("report_dir")
    _command(sub, "list", "harness.cli:cmd_list", "list the scenarios")


def _campaign(sub) -> None:
    c = _command(sub, "campaign", "harness.cli:cmd_campaign", "many seeds of one or more scenarios in parallel")
    c.add_argument("scenarios", nargs="+", metavar="SCENARIO")
    c.add_argument("--seeds", default="0..9", help="A..B inclusive, A,B,C, or N (default 0..9)")
    _jobs(c, "trials (local worker processes, or the CPUs of a local Ray instance)")
    c.add_argument("--backend", help="override every scenario's store backend")
    _reports(c, "the campaign dir and kept reports")
    c.add_argument("--keep-all", action="store_true", help="keep the reports of runs that were as expected too")
    _executor(c, "trials")
    c.add_argument("--max-retries", type=int, default=2,
                   help="retries of a trial whose worker (or Ray node) died (default 2)")
    c.add_argument("--ship-code", action="store_true",
                   help="with --address: upload harness and reference_impl to the cluster (runtime_env py_modules)")
    c.add_argument("--junit", metavar="FILE", help="also write the results as JUnit XML to this file")
    c.add_argument("--require-coverage", action="store_true",
                   help="inconclusive (exit 3) when a scenario's runs, summed, never reached a condition of its "
                        "expect.sometimes or a failpoint it aims faults at")
    g = _command(sub, "gpu-lane", "harness.gpu_lane:cmd_gpu_lane",
                 "the GPU checks in one command: the gpu-marked tests, then a campaign of the -gpu scenarios")
    g.add_argument("--seeds", default="0..5", help="seeds of the campaign (default 0..5)")
    _jobs(g, "campaign trials")
    _reports(g, "the campaign dir")
    g.add_argument("--junit", metavar="FILE", help="also write the campaign's results as JUnit XML")


def _certify(sub) -> None:
    ce = _command(sub, "certify", "harness.certify.cli:cmd_certify", "certify a MetadataStore backend",
                  description="Certify a MetadataStore backend: contract, concurrency, crash, end-to-end and "
                              "power-cut tiers. Exit 0 certified, 1 the backend failed a tier, 2 bad input, "
                              "3 the harness could not finish.")
    ce.add_argument("factory", help="module:attr, a MetadataStore class or a callable taking a working directory")
    ce.add_argument("--profile", choices=("durable", "volatile"),
                    help="durable (default for stores that take a path) or volatile (tiers 3 to 5 not applicable)")
    g = ce.add_mutually_exclusive_group()
    g.add_argument("--quick", dest="budget", action="store_const", const="quick", help="CI budget (about a minute)")
    g.add_argument("--thorough", dest="budget", action="store_const", const="thorough",
                   help="many more examples and crashes")
    ce.set_defaults(budget="standard")
    _reports(ce, "certify-<backend>-<time>/")
    ce.add_argument("--reports-dir", dest="reports", help=argparse.SUPPRESS)  # the older spelling
    ce.add_argument("--tiers", help="comma-separated tiers to run (default: every tier, 1,2,3,4,5)")
    ce.add_argument("--seed", type=int, help="seed for every random choice (printed in the certificate)")
    ce.add_argument("--examples", type=int, help="tier 1: number of Hypothesis examples (overrides the budget)")
    ce.add_argument("--crashes", type=int, help="tier 3: number of crash trials (overrides the budget)")
    ce.add_argument("--records", metavar="MODULE",
                    help="module whose SampleRef/FeatureSpec the store takes (default: found from the store)")
    ce.add_argument("--call-timeout", type=float, metavar="S",
                    help="seconds each construction and store call may take before it is a liveness finding "
                         "(default 120)")
    _executor(ce, "tier 3's crash trials and tier 5's power-cut trials")
    _jobs(ce, "with --executor ray: shares of the tier 3 and 5 trials")
    _quiet(ce, "no progress lines on stderr")


def _simulate(sub) -> None:
    si = _command(sub, "simulate", "harness.simulate.cli:cmd_simulate",
                  "simulation engine: many crash schedules in one process, each failure shrunk",
                  description="Simulation engine: crash schedules of the reference pipeline in one process, "
                              "driven and shrunk by Hypothesis.")
    si.add_argument("scenario", nargs="?", help="scenario name or .toml path: its workload, backend, variant, "
                                                "expectation (default: the simulation's small workload on SQLite)")
    si.add_argument("--examples", type=int, default=200, help="schedules to draw (default 200)")
    si.add_argument("--seed", type=int, default=0, help="Hypothesis seed (default 0)")
    si.add_argument("--json", metavar="FILE", help="write the figures (schedules_per_min, failures, ...) to this file")
    si.add_argument("--variant", help="protocol variant pkg.mod:name (e.g. tests.pipeline_zoo:no_roll_forward)")
    si.add_argument("--expect-violation", action="append", default=None, metavar="P",
                    help="the variant must violate P (P1..P8; repeatable): exit 0 when found")
    si.add_argument("--backend", help="store backend: sqlite | inmemory | private | pkg.mod:Factory")
    _jobs(si, "search shares (fewer than 50 examples run in one process)")
    _executor(si, "the search's shares")
    si.add_argument("--store-kills", action="store_true",
                    help="also kill the in-memory store server (its ledger is lost; the run must fail closed)")
    si.add_argument("--powercuts", action="store_true",
                    help="also cut the power: all processes crash at once and unsynced writes are lost "
                         "(clean or torn; needs a C compiler for the durability tracer); with --exhaustive, "
                         "a cut at each sync-boundary hit")
    si.add_argument("--samples", type=int, help="override the workload's number of samples")
    si.add_argument("--max-ops", type=int, help="longest schedule before the drain (default 24)")
    _reports(si, "counterexample scenarios")
    si.add_argument("--out", metavar="FILE", help="where to write the counterexample scenario "
                                                  "(default: REPORTS/sim-<scenario>-<seed>-<time>.toml)")
    si.add_argument("--no-shrink", action="store_true", help="report the first failing schedule as found")
    si.add_argument("--shrink-budget", type=float, default=60.0, help="seconds of shrinking at most (default 60)")
    si.add_argument("--schedule", metavar="FILE",
                    help="run the schedule of a JSON file (a list of ops, or a --json output) once")
    si.add_argument("--exhaustive", action="store_true",
                    help="run every schedule of up to --max-faults faults (a crash or a pause at each failpoint "
                         "hit of each process; with --powercuts, a power cut at each sync boundary) instead of "
                         "drawing schedules; prints the count, time and coverage")
    si.add_argument("--max-faults", type=int, default=2, help="with --exhaustive: faults per schedule (default 2)")
    si.add_argument("--impolite", action="store_true",
                    help="also the impolite channel: duplicates (producer) and replays (consumer) at failpoints "
                         "(with --exhaustive: at each hit)")
    _quiet(si, "print only failures")


def _bench(sub) -> None:
    b = _command(sub, "bench", "harness.bench:cmd_bench", "performance figures, each next to its baseline and goal")
    b.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    b.add_argument("--quick", action="store_true", help="fewer repetitions (about 2 minutes instead of 8)")
    b.add_argument("--only", metavar="NAME,...", help="comma-separated sections (default: all)")
    b.add_argument("--trials", type=int, help="trials in the throughput/hygiene campaign (default 200, quick 20)")
    _jobs(b, "worker processes of the trial campaign")
    b.add_argument("--keep", action="store_true", help="keep the scratch directory")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m harness",
                                 description="Fault-injection harness for the DataFlow control plane. Exit codes: "
                                             "0 as expected, 1 unexpected, 2 bad input, 3 the harness could not "
                                             "finish.")
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND")
    _run_commands(sub)
    _campaign(sub)
    _certify(sub)
    _simulate(sub)
    _bench(sub)
    return ap


def subcommand_parser(ap: argparse.ArgumentParser, cmd: str) -> argparse.ArgumentParser:
    """The parser of subcommand `cmd` (for its own usage line), or `ap` itself."""
    for action in ap._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(cmd) or ap
    return ap
