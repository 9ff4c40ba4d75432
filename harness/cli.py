"""`python -m harness`: run, replay, campaign, shrink, report, list, certify, simulate, bench.

Exit codes (harness/exit_codes.py): 0 everything as expected; 1 an unexpected
verdict (a violation, or a known-bad configuration that was not caught); 2
usage or bad input (the message names the option, file, key or value); 3 the
harness or its environment could not finish (an I/O error naming the path, a
full disk, an internal bug, an interruption, an inconclusive run).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

from .exit_codes import ExitCode, UsageError, guarded
from .paths import check_output_dir, check_output_file, read_json_file

EXIT_OK, EXIT_UNEXPECTED, EXIT_USAGE, EXIT_HARNESS = (ExitCode.AS_EXPECTED, ExitCode.UNEXPECTED, ExitCode.USAGE,
                                                      ExitCode.HARNESS)
DEFAULT_SCENARIO = "kill-random"


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v} is not >= 1")
    return v


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m harness",
                                 description="Fault-injection harness for the DataFlow control plane.")
    sub = ap.add_subparsers(dest="cmd", parser_class=argparse.ArgumentParser)
    r = sub.add_parser("run", help="run one scenario with one seed on real processes")
    r.add_argument("scenario", nargs="?", default=DEFAULT_SCENARIO, help="scenario name or .toml path")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--backend", help="override the scenario's store backend (sqlite, inmemory, pkg.mod:Factory)")
    r.add_argument("--reports", default="reports", help="reports directory (default: reports)")
    r.add_argument("--keep-work", action="store_true", help="keep the run's work files even when as expected")
    r.add_argument("--quiet", action="store_true")
    p = sub.add_parser("replay", help="rerun a report's scenario copy with its seed and schedule")
    p.add_argument("report_dir")
    p.add_argument("--reports", default="reports")
    c = sub.add_parser("campaign", help="many seeds of one or more scenarios in parallel")
    c.add_argument("scenarios", nargs="+")
    c.add_argument("--seeds", default="0..9", help="A..B inclusive, A,B,C, or N (default 0..9)")
    c.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 2,
                   help="trials at once: local worker processes, or the CPUs of a local Ray instance "
                   "(with --address the cluster decides)")
    c.add_argument("--backend")
    c.add_argument("--reports", default="reports")
    c.add_argument("--keep-all", action="store_true", help="keep the reports of runs that were as expected too")
    c.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="where trials run: local worker processes (default) or Ray tasks")
    c.add_argument("--address", help="with --executor ray: an existing Ray cluster (e.g. auto or HOST:6379); "
                   "default: start a local instance with -j CPUs")
    c.add_argument("--max-retries", type=int, default=2,
                   help="with --executor ray: retries of a trial whose worker or node died (default 2)")
    c.add_argument("--connect-timeout", type=float, default=30.0, metavar="S",
                   help="with --address: seconds to reach the cluster before giving up with exit 2 (default 30)")
    c.add_argument("--ship-code", action="store_true",
                   help="with --address: upload harness and reference_impl to the cluster (runtime_env py_modules)")
    c.add_argument("--junit", help="also write the results as JUnit XML to this file")
    c.add_argument("--require-coverage", action="store_true",
                   help="inconclusive (exit 3) when a scenario's runs, summed, never reached a condition of its "
                        "expect.sometimes or a failpoint it aims faults at")
    s = sub.add_parser("shrink", help="reduce a failing run to the fewest faults that still fail")
    s.add_argument("report_dir")
    s.add_argument("--tries", type=_positive_int, default=2, help="runs per candidate (>= 1)")
    s.add_argument("--out")
    rp = sub.add_parser("report", help="re-render report.md, report.html and timeline.png of a run")
    rp.add_argument("report_dir")
    sub.add_parser("list", help="list the scenarios")
    ce = sub.add_parser("certify", help="certify a MetadataStore backend (see --help)", add_help=False)
    ce.add_argument("rest", nargs=argparse.REMAINDER)
    si = sub.add_parser("simulate", help="simulation engine: many crash schedules in one process", add_help=False)
    si.add_argument("rest", nargs=argparse.REMAINDER)
    b = sub.add_parser("bench", help="performance figures", add_help=False)
    b.add_argument("rest", nargs=argparse.REMAINDER)
    return ap


def _need_report(d: str) -> str:
    if not os.path.isdir(d):
        raise UsageError(f"report directory {d} does not exist" if not os.path.exists(d)
                         else f"{d} is not a directory (a report directory was expected)")
    if not os.path.isfile(os.path.join(d, "result.json")):
        raise UsageError(f"{d} is not a report directory (no result.json)")
    result = read_json_file(os.path.join(d, "result.json"), "result")
    if not isinstance(result, dict) or "verdict" not in result or "seed" not in result:
        raise UsageError(f"{os.path.join(d, 'result.json')}: not a run's result (no 'verdict' or 'seed')")
    return d


def _print_result(r) -> None:
    from .reports.render import _verdict_line

    with open(os.path.join(r.report_dir, "result.json")) as f:
        result = json.load(f)
    print(_verdict_line(result))
    for prop, d in sorted(r.properties.items()):
        mark = {True: "ok ", False: "VIOLATED", None: "n/a"}[d.get("valid")]
        print(f"  {prop} {d.get('name', ''):28s} {mark}")
        for a in (d.get("anomalies") or [])[:5]:
            print(f"      {a['kind']}: {a['message']}")
    print(f"report: {r.report_dir}/report.md")
    print(f"replay: {r.replay_command}")


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        argv = ["run"]
    # Sub-tools with their own argument parsers (and the same exit-code policy).
    if argv[0] == "certify":
        from .certify.cli import main as certify_main

        return certify_main(argv[1:])
    if argv[0] == "simulate":
        from .simulate.cli import main as simulate_main

        return simulate_main(argv[1:])
    if argv[0] == "bench":
        from .bench import main as bench_main

        return bench_main(argv[1:])
    return guarded(_main, argv)


def _main(argv: List[str]) -> int:
    ap = _parser()
    try:
        args, extra = ap.parse_known_args(argv)
        if extra:  # the subcommand's own usage, not the top-level one
            sub = _subparser(ap, args.cmd)
            (sub or ap).error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as e:
        return EXIT_USAGE if e.code else EXIT_OK
    return _dispatch(args)


def _subparser(ap: argparse.ArgumentParser, cmd: Optional[str]) -> Optional[argparse.ArgumentParser]:
    for action in ap._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(cmd)
    return None


def _dispatch(args) -> int:
    from .scenario import load_scenario, scenario_paths
    from .validation import check_against_topology, check_seed

    if args.cmd == "list":
        for p in scenario_paths():
            sc = load_scenario(str(p))
            exp = ("violates " + "/".join(sc.expect["violates"])) if sc.expect["violates"] else \
                "expects " + "|".join(sc.expect["outcome"])
            print(f"{sc.name:30s} {sc.backend:9s} {exp:22s} {sc.description}")
        return EXIT_OK
    if args.cmd == "run":
        from .process_engine.runner import run_scenario

        sc = load_scenario(args.scenario)
        check_seed(args.seed, "--seed")
        if args.backend:
            _check_backend(args.backend)
            sc = sc.with_backend(args.backend)
        check_against_topology(sc)
        check_output_dir(args.reports, "--reports")
        r = run_scenario(sc, args.seed, reports_dir=args.reports, quiet=args.quiet, keep_work=args.keep_work)
        _print_result(r)
        return _run_exit(r)
    if args.cmd == "replay":
        from .process_engine.runner import run_scenario
        from .verdict import verdict_word

        d = _need_report(args.report_dir)
        result = read_json_file(os.path.join(d, "result.json"), "result")
        schedule = read_json_file(os.path.join(d, "schedule.json"), "schedule")
        if not isinstance(schedule, dict) or not isinstance(schedule.get("faults"), list):
            raise UsageError(f"{os.path.join(d, 'schedule.json')}: not a schedule (no 'faults' list)")
        sc = load_scenario(os.path.join(d, "scenario.toml"))
        check_output_dir(args.reports, "--reports")
        print(f"replaying {sc.name} seed {result['seed']} ({len(schedule['faults'])} faults); "
              f"original verdict: {verdict_word(result['verdict']).lower()} "
              f"({', '.join(result['verdict']['violated']) or result['outcome']})", file=sys.stderr)
        r = run_scenario(sc, result["seed"], reports_dir=args.reports, schedule=schedule, quiet=False)
        _print_result(r)
        return _run_exit(r)
    if args.cmd == "campaign":
        from .campaign import exit_code, parse_seeds, run_campaign, summary_table

        if args.jobs < 1:
            raise UsageError(f"-j/--jobs {args.jobs}: must be at least 1")
        if args.max_retries < 0:
            raise UsageError(f"--max-retries {args.max_retries}: must be at least 0")
        if args.address and args.executor != "ray":
            raise UsageError(f"--address {args.address!r} needs --executor ray")
        try:
            seeds = parse_seeds(args.seeds)
        except ValueError as e:  # bad --seeds: usage
            raise UsageError(str(e)) from None
        scenarios = [load_scenario(s) for s in args.scenarios]  # fail fast on a bad name or file
        if args.backend:
            _check_backend(args.backend)
        check_output_dir(args.reports, "--reports")
        summary = run_campaign(scenarios, seeds, jobs=args.jobs, reports_dir=args.reports,
                               backend=args.backend, keep_all=args.keep_all, executor=args.executor,
                               address=args.address, junit=args.junit, max_retries=args.max_retries,
                               ship_code=args.ship_code, connect_timeout_s=args.connect_timeout,
                               require_coverage=args.require_coverage)
        print(summary_table(summary))
        print(f"{summary['runs']} runs: {summary['as_expected']} as expected, {summary['unexpected']} unexpected, "
              f"{summary['inconclusive']} inconclusive, {summary['harness_error']} harness errors, "
              f"{summary['incomplete']} incomplete; faults landed {summary['faults_landed']}"
              f"/{summary['faults_planned']}; {summary['wall_s']} s on {summary['executor']}"
              f"{' (INTERRUPTED)' if summary['interrupted'] else ''}; "
              f"summary and kept reports in {summary['campaign_dir']}")
        if summary.get("coverage_inconclusive"):
            print(f"INCONCLUSIVE coverage: {', '.join(summary['coverage_inconclusive'])} (see the summary's gaps)")
        return exit_code(summary)
    if args.cmd == "shrink":
        from .shrink import shrink_report

        d = _need_report(args.report_dir)
        if args.out:
            check_output_file(args.out, "--out")
        try:
            shrink_report(d, tries=args.tries, out=args.out)
        except RuntimeError as e:  # the report's run was not a failure: nothing to shrink
            print(f"error: {e}", file=sys.stderr)
            return EXIT_USAGE
        return EXIT_OK
    if args.cmd == "report":
        from .reports.render import render_report

        render_report(_need_report(args.report_dir))
        print(f"rendered {args.report_dir}/report.md, report.html, timeline.png")
        return EXIT_OK
    raise UsageError(f"unknown command {args.cmd!r}")


def _run_exit(r) -> int:
    if getattr(r, "inconclusive", False):
        print("harness error: inconclusive: planned faults did not land (see faults.missed in "
              f"{os.path.join(r.report_dir, 'result.json')})", file=sys.stderr)
        return EXIT_HARNESS
    return EXIT_OK if r.as_expected else EXIT_UNEXPECTED


def _check_backend(backend: str) -> None:
    from .validation import check_backend

    check_backend(backend, "--backend")
