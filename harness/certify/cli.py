"""`python -m harness certify module:Factory ...`: exit 0 certified (every
selected, applicable tier passed), 1 the backend failed (a tier failed or could
not run because of the store, a liveness or retains-nothing verdict), 2 bad
input (including a store that rejects the harness's records on its first
call), 3 the harness could not finish (its own error, or SIGTERM)."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from ..exit_codes import ExitCode
from .common import quote_cmd


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m harness certify",
        description="Certify a MetadataStore backend: contract, concurrency, crash and end-to-end tiers.",
    )
    ap.add_argument("factory", help="module:attr, a MetadataStore class or a callable taking a working directory")
    ap.add_argument(
        "--profile",
        choices=("durable", "volatile"),
        help="durable (default for stores that take a path) or volatile (tiers 3 and 4 not applicable)",
    )
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", dest="budget", action="store_const", const="quick", help="CI budget (about a minute)")
    g.add_argument("--thorough", dest="budget", action="store_const", const="thorough",
                   help="many more examples and crashes")
    ap.set_defaults(budget="standard")
    ap.add_argument("--reports-dir", default="reports",
                    help="where certify-<backend>-<time>/ is written (default: reports)")
    ap.add_argument("--tiers", default="1,2,3,4,5", help="comma-separated tiers to run (default: 1,2,3,4,5)")
    ap.add_argument("--seed", type=int, help="seed for every random choice (printed in the certificate)")
    ap.add_argument("--examples", type=int, help="tier 1: number of Hypothesis examples (overrides the budget)")
    ap.add_argument("--crashes", type=int, help="tier 3: number of crash trials (overrides the budget)")
    ap.add_argument("--records", metavar="MODULE",
                    help="module whose SampleRef/FeatureSpec the store takes (default: found from the store)")
    ap.add_argument("--call-timeout", type=float, metavar="S",
                    help="seconds each construction and store call may take before it is a liveness finding "
                         "(default 120)")
    ap.add_argument("--executor", choices=("local", "ray"), default="local",
                    help="where tier 3's crash trials and tier 5's power-cut trials run: this machine "
                    "(default) or Ray tasks (--jobs shares)")
    ap.add_argument("--jobs", type=int, default=2, help="with --executor ray: shares of the tier 3 and 5 trials")
    ap.add_argument("--address", help="with --executor ray: an existing Ray cluster (default: a local instance)")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    return ap


def parse_tiers(text: str) -> List[int]:
    out = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        if not part.isdigit() or int(part) not in (1, 2, 3, 4, 5):
            raise ValueError(f"--tiers: {part!r} is not a tier; tiers are 1, 2, 3, 4, 5 (for example --tiers 1,2)")
        out.append(int(part))
    if not out:
        raise ValueError("--tiers: no tier given; tiers are 1, 2, 3, 4, 5")
    return sorted(set(out))


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = _parser()
    try:
        args = ap.parse_args(argv)
    except SystemExit as e:  # argparse: 2 on a usage error, 0 for --help
        return int(e.code or 0)
    try:
        tiers = parse_tiers(args.tiers)
    except ValueError as e:
        print(f"certify: error: {e}", file=sys.stderr)
        return ExitCode.USAGE
    if args.examples is not None and args.examples < 1 or args.crashes is not None and args.crashes < 1:
        print("certify: error: --examples and --crashes must be at least 1", file=sys.stderr)
        return ExitCode.USAGE

    from . import Interrupted, LoadError, certify

    overrides = {}
    if args.examples:
        overrides["examples"] = args.examples
    if args.crashes:
        overrides["crashes"] = args.crashes
    bad = (f"--jobs {args.jobs}: must be at least 1" if args.jobs < 1 else
           f"--address {args.address!r} needs --executor ray" if args.address and args.executor != "ray" else None)
    if bad:
        print(f"certify: error: {bad}", file=sys.stderr)
        return ExitCode.USAGE
    if args.executor != "local":
        overrides.update(executor=args.executor, jobs=args.jobs, address=args.address)
    command = quote_cmd(["python", "-m", "harness", "certify"] + argv)
    try:
        cert = certify(
            args.factory,
            profile=args.profile,
            budget=args.budget,
            tiers=tiers,
            seed=args.seed,
            reports_dir=args.reports_dir,
            progress=(lambda m: None) if args.quiet else _progress,
            overrides=overrides,
            command=command,
            records=args.records,
            call_timeout=args.call_timeout,
        )
    except LoadError as e:
        print(f"certify: error: {e}", file=sys.stderr)
        return ExitCode.USAGE
    except Interrupted:
        print("certify: interrupted by SIGTERM; temporary folders and an empty certificate folder removed",
              file=sys.stderr)
        return ExitCode.HARNESS
    print(f"{cert.verdict}")
    if cert.finding and cert.finding.get("reproducer"):
        print(f"  reproducer: python {cert.finding['reproducer']}")
    for t in cert.tiers:
        line = f"  tier {t.tier} {t.name:<12} {t.status}"
        if t.reason:
            line += f" ({t.reason})"
        if t.counterexamples:
            line += f": {', '.join(t.failed_properties())}"
        print(line)
    for t in cert.tiers:
        for c in t.counterexamples[:1]:
            print(f"  tier {t.tier} counterexample [{c.property}]: {c.message}")
            for s in c.steps[:12]:
                print(f"      {s}")
            if c.cause:
                print(f"    likely cause: {c.cause}")
            if c.reproducer:
                print(f"    reproducer: python {c.reproducer}")
            if c.reproduce:
                print(f"    reproduce: {c.reproduce}")
    if cert.report_dir:
        print(f"certificate: {cert.report_dir}/certificate.md")
    return cert.exit_code


def _progress(msg: str) -> None:
    print(f"[certify] {msg}", file=sys.stderr, flush=True)
