"""`python -m harness COMMAND`: the entry point of every subcommand, and the handlers of the core ones.

The argument tree is `harness.arguments`; run, replay, campaign, shrink,
report and list are handled here, certify, simulate, bench and gpu-lane in
their own packages.

Exit codes (harness/exit_codes.py): 0 everything as expected; 1 an unexpected
verdict (a violation, or a known-bad configuration that was not caught); 2
usage or bad input (the message names the option, file, key or value); 3 the
harness or its environment could not finish (an I/O error naming the path, a
full disk, an internal bug, an interruption, an inconclusive run).
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import List, Optional

from .exit_codes import ExitCode, UsageError, guarded
from .paths import check_output_dir, check_output_file

EXIT_OK, EXIT_UNEXPECTED, EXIT_USAGE, EXIT_HARNESS = (ExitCode.AS_EXPECTED, ExitCode.UNEXPECTED, ExitCode.USAGE,
                                                      ExitCode.HARNESS)


def _need_report(d: str) -> str:
    """`d` is a report directory whose result.json can be rendered (`harness.run_dir`)."""
    from .run_dir import need_report_dir, read_result

    read_result(need_report_dir(d), render=True)
    return d


def _print_result(r) -> None:
    print(r.verdict_line)
    for prop, d in sorted(r.properties.items()):
        mark = {True: "ok ", False: "VIOLATED", None: "n/a"}[d.get("valid")]
        print(f"  {prop} {d.get('name', ''):28s} {mark}")
        for a in (d.get("anomalies") or [])[:5]:
            print(f"      {a['kind']}: {a['message']}")
    print(f"report: {r.report_dir}/report.md")
    print(f"replay: {r.replay_command}")


def main(argv: Optional[List[str]] = None) -> int:
    """Parse `argv` with the one argument tree and run its subcommand under the exit-code policy."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return guarded(_main, argv or ["run"])


def _main(argv: List[str]) -> int:
    from .arguments import build_parser, subcommand_parser

    ap = build_parser()
    try:
        args, extra = ap.parse_known_args(argv)
        if extra:  # the subcommand's own usage, not the top-level one
            subcommand_parser(ap, args.cmd).error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as e:  # argparse: 2 after its usage message, 0 after --help
        return EXIT_USAGE if e.code else EXIT_OK
    if not args.cmd:
        ap.print_help()
        return EXIT_USAGE
    args.argv = argv[1:]  # the subcommand's own arguments (simulate reruns itself with them)
    module, func = args.handler.split(":")
    return int(getattr(importlib.import_module(module), func)(args))


def cmd_list(args) -> int:
    from .scenario import load_scenario, scenario_paths

    for p in scenario_paths():
        sc = load_scenario(str(p))
        exp = ("violates " + "/".join(sc.expect["violates"])) if sc.expect["violates"] else \
            "expects " + "|".join(sc.expect["outcome"])
        print(f"{sc.name:30s} {sc.backend:9s} {exp:22s} {sc.description}")
    return EXIT_OK


def cmd_run(args) -> int:
    from .process_engine.runner import run_scenario
    from .scenario import load_scenario
    from .validation import check_against_topology, check_seed

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


def cmd_replay(args) -> int:
    from .process_engine.runner import run_scenario
    from .run_dir import load_run_dir
    from .verdict import verdict_word

    rd = load_run_dir(args.report_dir)  # result.json, scenario.toml and schedule.json, each validated
    result, sc, schedule = rd.result, rd.scenario, rd.schedule
    check_output_dir(args.reports, "--reports")
    print(f"replaying {sc.name} seed {result['seed']} ({len(schedule.faults)} faults); "
          f"original verdict: {verdict_word(result['verdict']).lower()} "
          f"({', '.join(result['verdict']['violated']) or result['outcome']})", file=sys.stderr)
    r = run_scenario(sc, result["seed"], reports_dir=args.reports, schedule=schedule, quiet=False)
    _print_result(r)
    return _run_exit(r)


def cmd_campaign(args) -> int:
    from .arguments import check_executor, jobs_of
    from .campaign import exit_code, parse_seeds, run_campaign, summary_table
    from .scenario import load_scenario

    jobs = jobs_of(args)
    check_executor(args)
    seeds = parse_seeds(args.seeds)
    scenarios = [load_scenario(s) for s in args.scenarios]  # fail fast on a bad name or file
    if args.backend:
        _check_backend(args.backend)
    check_output_dir(args.reports, "--reports")
    summary = run_campaign(scenarios, seeds, jobs=jobs, reports_dir=args.reports,
                           backend=args.backend, keep_all=args.keep_all, executor=args.executor,
                           address=args.address, junit=args.junit, max_retries=args.max_retries,
                           ship_code=args.ship_code, connect_timeout_s=args.connect_timeout,
                           require_coverage=args.require_coverage)
    print(summary_table(summary))
    print(summary_line(summary))
    if summary.get("coverage_inconclusive"):
        print(f"INCONCLUSIVE coverage: {', '.join(summary['coverage_inconclusive'])} (see the summary's gaps)")
    return exit_code(summary)


def summary_line(summary) -> str:
    return (f"{summary['runs']} runs: {summary['as_expected']} as expected, {summary['unexpected']} unexpected, "
            f"{summary['inconclusive']} inconclusive, {summary['harness_error']} harness errors, "
            f"{summary['incomplete']} incomplete; faults landed {summary['faults_landed']}"
            f"/{summary['faults_planned']}; {summary['wall_s']} s on {summary['executor']}"
            f"{' (INTERRUPTED)' if summary['interrupted'] else ''}; "
            f"summary and kept reports in {summary['campaign_dir']}")


def cmd_shrink(args) -> int:
    from .run_dir import load_run_dir
    from .shrink import shrink_report

    rd = load_run_dir(args.report_dir)
    if args.out:
        check_output_file(args.out, "--out")
    try:
        shrink_report(rd, tries=args.tries, out=args.out)
    except RuntimeError as e:  # the report's run was not a failure: nothing to shrink
        raise UsageError(str(e)) from None
    return EXIT_OK


def cmd_report(args) -> int:
    from .reports.render import render_report
    from .run_dir import check_history

    check_history(_need_report(args.report_dir))
    render_report(args.report_dir)
    print(f"rendered {args.report_dir}/report.md, report.html, timeline.png")
    return EXIT_OK


def _run_exit(r) -> int:
    if getattr(r, "inconclusive", False):
        print("harness error: inconclusive: planned faults did not land (see faults.missed in "
              f"{os.path.join(r.report_dir, 'result.json')})", file=sys.stderr)
        return EXIT_HARNESS
    return EXIT_OK if r.as_expected else EXIT_UNEXPECTED


def _check_backend(backend: str) -> None:
    from .validation import check_backend

    check_backend(backend, "--backend")
