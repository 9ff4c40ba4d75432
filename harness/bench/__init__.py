"""`python -m harness bench [--json FILE] [--quick]`: the harness's performance figures.

Every figure is printed next to its baseline measured in the same run and the
goal it is held to:

* restart: SIGKILL of a consumer to its replacement's first channel event
  (`read` or `skip`), zygote launcher vs cold spawn (`python -m`);
* trials per minute: the default scenario (kill-random: 3 kills, 300 samples)
  on a pool of 2 worker processes, with CPU seconds per trial (the worker, its
  zygote and every process they started); baseline: the same with spawn;
* checkers: `check_all` on synthetic histories of 10k, 100k and 1M events, on
  one core (`checks`, on `harness.synthetic_history`);
* SQLite: `commit_samples` per second at batch 1 divided by the raw
  append+fsync rate of the same directory, measured interleaved; batch 16, 64,
  256 and `record_train_ack`;
* memory and hygiene: peak memory of a campaign worker on a 4-rank scenario;
  processes, open descriptors and temp directories before and after N
  consecutive trials (N = 200, 20 with --quick);
* harness overhead: the default scenario with history logging on and off;
* power loss: tracing overhead, rebuild time, power-cut trials per minute
  (`powerloss`);
* campaigns on Ray: throughput of a local Ray instance against the local
  executor on the same seeds, and a two-node cluster's verdicts (`ray`).

This is a measurement, not a test: nothing here is run by CI. Figures depend
on the machine and on whatever else runs on it (the load average is recorded).
Each section runs in a fresh interpreter (multiprocessing "spawn"), so no
section inherits another's imports or memory. Sections are registered by name
(`registry.section`), one module each: restart, trials, checks, sqlite,
memory, overhead; `--only NAME,...` selects them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from typing import Any, Dict, List, Optional

from . import checks, memory, overhead, powerloss, ray, restart, sqlite, trials  # noqa: F401 (they register their sections)
from .registry import GOALS, BenchRun, goal_met
from .registry import sections as registered


def _parse(argv: Optional[List[str]]):
    ap = argparse.ArgumentParser(prog="python -m harness bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (about 2 minutes instead of 8)")
    known = registered()
    ap.add_argument("--only", default=",".join(known),
                    help=f"comma-separated sections (default: all: {', '.join(known)})")
    ap.add_argument("--trials", type=int, help="trials in the throughput/hygiene campaign (default 200, quick 20)")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes of the trial campaign (default 2)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = ap.parse_args(argv)
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in sections if s not in known]
    if unknown:
        ap.error(f"--only: unknown section {unknown[0]!r} (known: {', '.join(known)})")
    return args, sections


def main(argv: Optional[List[str]] = None) -> int:
    """Exit codes (harness/exit_codes.py): 0 done, 2 bad options or --json path, 3 the bench could not finish."""
    from ..exit_codes import guarded

    return guarded(_main, argv)


def _main(argv: Optional[List[str]] = None) -> int:
    from ..exit_codes import UsageError
    from ..paths import check_output_file

    try:
        args, sections = _parse(argv)
    except SystemExit as e:
        return 2 if e.code else 0
    if args.trials is not None and args.trials < 1:
        raise UsageError(f"--trials {args.trials}: allowed an integer >= 1")
    if args.jobs < 1:
        raise UsageError(f"--jobs {args.jobs}: allowed an integer >= 1")
    if args.json:
        check_output_file(args.json, "--json")
    base = tempfile.mkdtemp(prefix="dfh-bench-")
    out: Dict[str, Any] = {"mode": "quick" if args.quick else "full", "cpus": os.cpu_count(),
                           "loadavg_start": [round(x, 2) for x in os.getloadavg()]}
    say = lambda *a: print(*a, flush=True)  # noqa: E731
    say(f"harness bench ({out['mode']}), {out['cpus']} CPUs, load average {out['loadavg_start']}")
    run = BenchRun(args=args, base=base, out=out, say=say)
    try:
        for name, fn in registered().items():
            if name in sections:
                fn(run)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    out["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    out["goals"] = {k: goal_met(k, out.get(k)) for k in GOALS}
    if "hygiene" in out:
        out["goals"]["hygiene_no_growth"] = out["hygiene"]["no_growth"]
    say(f"load average at the end {out['loadavg_end']}; goals: "
        + ", ".join(f"{k} {'met' if v else ('n/a' if v is None else 'NOT MET')}" for k, v in out["goals"].items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, sort_keys=True)
        say(f"wrote {args.json}")
    return 0
