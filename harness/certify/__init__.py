"""Certification of a MetadataStore backend (DESIGN section 6).

    python -m harness certify package.module:Factory [--profile durable|volatile]
                              [--quick | --thorough] [--tiers 1,2,3,4,5] [--seed N]
                              [--reports DIR] [--records MODULE] [--call-timeout S]

The tiers, listed once in `tiers` (each reported separately): 1 contract
(Hypothesis stateful testing against a pure model), 2 concurrency (processes
and threads), 3 crash (SIGKILL inside transactions, then reopen), 4 end-to-end
(the reference pipeline through the harness's crash scenarios), 5 power loss
(traced processes, a power cut that drops every unsynced write, then reopen;
durable profile only). The result is `certificate.json` and `certificate.md`
in `<reports>/certify-<backend>-<time>/`.

Refs are built from the backend's own record types (`records`); every store
call runs under a call timeout (`guard`); the first calls (`probe`) stop with
exit 2 when the store takes other records than the harness built, and give a
store that retains nothing its own verdict. Each failed property gets a plain
guarantee, a likely cause and a standalone reproducer (`findings`). Temporary
folders, and a certificate folder left empty, are removed on any exit, SIGTERM
included.

From Python: `certify("pkg.mod:Factory", budget="quick")` returns a
`Certificate` (the options are `request.CertifyRequest`'s fields); from
pytest: subclass `harness.certify.suite.MetadataStoreSuite`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from typing import Any, List, Optional, Union

from . import certificate as _cert
from . import findings as _findings
from . import guard
from . import records as _records
from . import tiers as _tiers
from .certificate import (
    BUDGETS,
    FAILED,
    NOT_APPLICABLE,
    NOT_RUN,
    NOT_SELECTED,
    PASSED,
    Budget,
    Certificate,
    Counterexample,
    TierResult,
)
from .common import Context
from .loader import LoadError, StoreTarget, describe_call, from_factory, load
from .request import CertifyRequest

__all__ = [
    "certify",
    "CertifyRequest",
    "Certificate",
    "TierResult",
    "Counterexample",
    "LoadError",
    "BUDGETS",
    "Budget",
    "PASSED",
    "FAILED",
    "NOT_APPLICABLE",
    "NOT_RUN",
    "NOT_SELECTED",
]


def _stderr_progress(msg: str) -> None:
    print(f"[certify] {msg}", file=sys.stderr, flush=True)


def resolve_target(factory: Union[str, Any], spec: Optional[str] = None, records: Optional[str] = None) -> StoreTarget:
    if isinstance(factory, str):
        return load(factory, records=records)
    if isinstance(factory, StoreTarget):
        return factory
    return from_factory(factory, spec=spec, records=records)


class Interrupted(SystemExit):
    """SIGTERM reached the certifier: unwind (cleaning up) and exit 3."""


@contextlib.contextmanager
def _sigterm_unwinds():
    """SIGTERM raises Interrupted in the main thread, so every `finally` runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Interrupted(3)

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _remove_if_empty(path: Optional[str]) -> None:
    if path and os.path.isdir(path):
        try:
            os.rmdir(path)  # only an empty folder
        except OSError:
            pass


def certify(factory: Union[str, Any], **options: Any) -> Certificate:
    """Run the selected tiers; write the certificate when `reports_dir` is given.

    `options` are the fields of `CertifyRequest` (profile, budget, tiers, seed,
    reports_dir, progress, overrides, ...); progress lines go to stderr unless
    `progress` is given (None: silent). Raises LoadError (bad input) before any
    tier runs.
    """
    options.setdefault("progress", _stderr_progress)
    return certify_request(CertifyRequest(factory, **options))


def certify_request(req: CertifyRequest) -> Certificate:
    with _sigterm_unwinds():
        t_start = time.monotonic()
        req.check()
        guard.configure(req.call_timeout if req.call_timeout is not None else guard.DEFAULT_CALL_TIMEOUT_S)
        target = resolve_target(req.factory, req.spec, req.records)
        with _records.using(target.records):  # the tiers (and their children) build these records
            return _certify_target(req, target, t_start)


def _certify_target(req: CertifyRequest, target: StoreTarget, t_start: float) -> Certificate:
    profile, source = req.profile_for(target)
    budget, seed = req.the_budget(), req.the_seed()
    prefix = req.reproduce_prefix(target, profile)
    report_dir = None
    if req.reports_dir is not None:
        try:
            report_dir = _cert.make_report_dir(req.reports_dir, target.label)
        except OSError as e:
            raise LoadError(f"cannot create the report folder under {req.reports_dir!r}: {e}") from e
    workroot = tempfile.mkdtemp(prefix="certify-work-")
    ctx = Context(target=target, profile=profile, budget=budget, seed=seed, workroot=workroot,
                  progress=req.say, repro_prefix=prefix, overrides=dict(req.overrides or {}), report_dir=report_dir)
    cert = Certificate(
        backend=target.label, spec=target.spec, profile=profile, profile_source=source, adapter=target.adapter,
        factory_call=describe_call(target), budget=budget.name, seed=seed,
        command=req.command_line(prefix, budget, seed), started_at=time.strftime("%Y-%m-%d %H:%M:%S"),
        records=target.records.describe(), call_timeout_s=guard.timeout_s(), store_server=target.store_server,
    )
    if target.adapter:
        cert.warnings.append(target.adapter)
    req.say(f"certifying {target.label}: profile {profile} ({source}), budget {budget.name}, seed {seed}; "
            f"records {target.records.names()} ({target.records.source}); call timeout {guard.timeout_s():g} s")
    try:
        try:
            _run_tiers(ctx, cert, req.selected())
        finally:
            shutil.rmtree(workroot, ignore_errors=True)
        cert.duration_s = time.monotonic() - t_start
        if report_dir is not None:
            _cert.write(cert, report_dir)
    finally:
        _remove_if_empty(report_dir)
    return cert


def _run_tiers(ctx: Context, cert: Certificate, selected: List[int]) -> None:
    store_level = _findings.store_level(ctx.target, ctx, cert, ctx.report_dir)
    for tier in _tiers.TIERS:
        if store_level:
            cert.tiers.append(TierResult(tier=tier.number, status=NOT_RUN, reason=store_level))
            continue
        t = _run_tier(tier, ctx, selected)
        cert.tiers.append(t)
        ctx.progress(
            f"tier {t.tier} {t.name}: {t.status}" + (f" ({t.reason})" if t.reason else "")
            + (f" in {t.duration_s:.1f}s" if t.status in (PASSED, FAILED) else "")
            + (f"; violated: {', '.join(t.failed_properties())}" if t.counterexamples else "")
        )
    _findings.annotate(cert, ctx.target, ctx, ctx.report_dir)


def _run_tier(tier: _tiers.Tier, ctx: Context, selected: List[int]) -> TierResult:
    why = tier.not_applicable(ctx)
    if why:
        return TierResult(tier=tier.number, status=NOT_APPLICABLE, reason=why)
    if tier.number not in selected:
        return TierResult(tier=tier.number, status=NOT_SELECTED, reason="left out with --tiers")
    ctx.progress(f"tier {tier.number} {tier.name}: running")
    t0 = time.monotonic()
    try:
        return tier.run(ctx)
    except Exception as e:  # noqa: BLE001 - a harness fault must never read as a pass
        return TierResult(
            tier=tier.number,
            status=NOT_RUN,
            harness_error=True,
            reason=f"internal error in the certifier: {type(e).__name__}: {e}",
            notes=traceback.format_exc().splitlines()[-8:],
            duration_s=time.monotonic() - t0,
        )
