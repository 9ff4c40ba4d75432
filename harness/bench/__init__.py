"""`python -m harness bench [--json FILE] [--quick]`: the harness's performance figures.

Every figure is printed next to its baseline measured in the same run and the
goal it is held to:

* restart: SIGKILL of a consumer to its replacement's first channel event
  (`read` or `skip`), zygote launcher vs cold spawn (`python -m`);
* simulation: schedules per CPU-minute of the default simulated workload, fixed seed;
* trials per minute: the default scenario (kill-random: 3 kills, 300 samples)
  on a pool of -j worker processes (default one per CPU), with CPU seconds per trial (the worker, its
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
  executor on the same seeds, and a two-node cluster's verdicts (`ray`);
* soak: a campaign of 2,000 small trials; descriptors, threads, RSS and disk
  used at its start and its end (`soak`);
* the test suite: wall time of the fast lane and (not with --quick) of the
  full suite, the README's pytest commands, in this checkout (`suite`).

This is a measurement, not a test: nothing here is run by CI. Figures depend
on the machine and on whatever else runs on it (the load average is recorded).
Each section runs in a fresh interpreter (multiprocessing "spawn"), so no
section inherits another's imports or memory. Sections are registered by name
(`registry.section`), one module each: restart, simulate, trials, checks, sqlite,
memory, overhead, powerloss, ray, redis, soak, suite; `--only NAME,...` selects them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Dict, List, Optional

from . import (  # noqa: F401 (they register their sections)
    checks,
    memory,
    overhead,
    powerloss,
    ray,
    redis,
    restart,
    simulate,
    soak,
    sqlite,
    suite,
    trials,
)
from .registry import GOALS, BenchRun, goal_met
from .registry import sections as registered


def main(argv: Optional[List[str]] = None) -> int:
    """`python -m harness.bench ARGS`: the same as `python -m harness bench ARGS`."""
    import sys

    from ..cli import main as harness_main

    return harness_main(["bench", *(sys.argv[1:] if argv is None else argv)])


def _sections(only: Optional[str]) -> List[str]:
    from ..exit_codes import UsageError

    known = registered()
    if not only:
        return list(known)
    sections = [s.strip() for s in only.split(",") if s.strip()]
    unknown = [s for s in sections if s not in known]
    if unknown:
        raise UsageError(f"--only: unknown section {unknown[0]!r} (known: {', '.join(known)})")
    return sections


def cmd_bench(args) -> int:
    """Exit codes (harness/exit_codes.py): 0 done, 2 bad options or --json path, 3 the bench could not finish."""
    from ..arguments import jobs_of
    from ..exit_codes import UsageError
    from ..paths import check_output_file

    sections = _sections(args.only)
    args.jobs = jobs_of(args)
    if args.trials is not None and args.trials < 1:
        raise UsageError(f"--trials {args.trials}: allowed an integer >= 1")
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
    if "soak" in out:
        out["goals"]["soak_no_growth"] = out["soak"].get("no_growth")
    say(f"load average at the end {out['loadavg_end']}; goals: "
        + ", ".join(f"{k} {'met' if v else ('n/a' if v is None else 'NOT MET')}" for k, v in out["goals"].items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, sort_keys=True)
        say(f"wrote {args.json}")
    return 0
