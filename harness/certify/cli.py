"""`python -m harness certify module:Factory ...` (options: harness.arguments): exit 0 certified (every
selected, applicable tier passed), 1 the backend failed (a tier failed or could
not run because of the store, a liveness or retains-nothing verdict), 2 bad
input (including a store that rejects the harness's records on its first
call), 3 the harness could not finish (its own error, or SIGTERM)."""

from __future__ import annotations

import sys
from typing import List, Optional

from ..exit_codes import HarnessError, UsageError
from . import tiers as _tiers
from .common import quote_cmd


def parse_tiers(text: str) -> List[int]:
    out = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        if not part.isdigit() or _tiers.get(int(part)) is None:
            raise UsageError(f"--tiers: {part!r} is not a tier; tiers are {_tiers.listing()} "
                             "(for example --tiers 1,2)")
        out.append(int(part))
    if not out:
        raise UsageError(f"--tiers: no tier given; tiers are {_tiers.listing()}")
    return sorted(set(out))


def main(argv: Optional[List[str]] = None) -> int:
    """`python -m harness.certify ARGS`: the same as `python -m harness certify ARGS`."""
    from ..cli import main as harness_main

    return harness_main(["certify", *(sys.argv[1:] if argv is None else argv)])


def cmd_certify(args) -> int:
    from ..arguments import check_executor, jobs_of
    from . import CertifyRequest, Interrupted, certify_request

    tiers = parse_tiers(args.tiers) if args.tiers is not None else list(_tiers.NUMBERS)
    if args.examples is not None and args.examples < 1 or args.crashes is not None and args.crashes < 1:
        raise UsageError("--examples and --crashes must be at least 1")
    jobs = jobs_of(args)
    check_executor(args)
    overrides = {}
    if args.examples:
        overrides["examples"] = args.examples
    if args.crashes:
        overrides["crashes"] = args.crashes
    if args.executor != "local":
        overrides.update(executor=args.executor, jobs=jobs, address=args.address)
    command = quote_cmd(["python", "-m", "harness", "certify"] + args.argv)
    req = CertifyRequest(args.factory, profile=args.profile, budget=args.budget, tiers=tiers, seed=args.seed,
                         reports_dir=args.reports, progress=None if args.quiet else _progress, overrides=overrides,
                         command=command, records=args.records, call_timeout=args.call_timeout)
    try:
        cert = certify_request(req)  # a LoadError is a UsageError: exit 2
    except Interrupted:
        raise HarnessError("certify interrupted by SIGTERM; temporary folders and an empty certificate folder "
                           "removed") from None
    _print_certificate(cert)
    return cert.exit_code


def _print_certificate(cert) -> None:
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


def _progress(msg: str) -> None:
    print(f"[certify] {msg}", file=sys.stderr, flush=True)
