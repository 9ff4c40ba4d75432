"""Certification of a MetadataStore backend (DESIGN section 6).

    python -m harness certify package.module:Factory [--profile durable|volatile]
                              [--quick | --thorough] [--tiers 1,2,3,4,5] [--seed N]
                              [--reports-dir DIR] [--records MODULE] [--call-timeout S]

Five tiers, each reported separately: 1 contract (Hypothesis stateful testing
against a pure model), 2 concurrency (processes and threads), 3 crash (SIGKILL
inside transactions, then reopen), 4 end-to-end (the reference pipeline through
the harness's crash scenarios), 5 power loss (traced processes, a power cut that
drops every unsynced write, then reopen: `tier_powercut`; durable profile only). The result is `certificate.json` and
`certificate.md` in `<reports-dir>/certify-<backend>-<time>/`.

Refs are built from the backend's own record types (`records`); every store
call runs under a call timeout (`guard`); the first calls (`probe`) stop with
exit 2 when the store takes other records than the harness built, and give a
store that retains nothing its own verdict. Each failed property gets a plain
guarantee, a likely cause and a standalone reproducer (`findings`). Temporary
folders, and a certificate folder left empty, are removed on any exit, SIGTERM
included.

From Python: `certify("pkg.mod:Factory", budget="quick")` returns a
`Certificate`; from pytest: subclass `harness.certify.suite.MetadataStoreSuite`.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from typing import Any, Callable, Dict, Iterable, Optional, Union

from . import certificate as _cert
from . import findings as _findings
from . import guard
from . import records as _records
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
from .loader import PROFILES, LoadError, StoreTarget, describe_call, from_factory, load

__all__ = [
    "certify",
    "Certificate",
    "TierResult",
    "Counterexample",
    "LoadError",
    "BUDGETS",
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


def certify(
    factory: Union[str, Any],
    *,
    profile: Optional[str] = None,
    budget: Union[str, Budget] = "standard",
    tiers: Iterable[int] = (1, 2, 3, 4, 5),
    seed: Optional[int] = None,
    reports_dir: Optional[str] = "reports",
    progress: Optional[Callable[[str], None]] = _stderr_progress,
    overrides: Optional[Dict[str, Any]] = None,
    command: Optional[str] = None,
    spec: Optional[str] = None,
    repro_prefix: Optional[str] = None,
    records: Optional[str] = None,
    call_timeout: Optional[float] = None,
) -> Certificate:
    """Run the selected tiers; write the certificate when `reports_dir` is given.

    Raises LoadError (bad input) before any tier runs.
    """
    with _sigterm_unwinds():
        return _certify(factory, profile=profile, budget=budget, tiers=tiers, seed=seed, reports_dir=reports_dir,
                        progress=progress, overrides=overrides, command=command, spec=spec,
                        repro_prefix=repro_prefix, records=records, call_timeout=call_timeout)


def _certify(factory, *, profile, budget, tiers, seed, reports_dir, progress, overrides, command, spec,
             repro_prefix, records, call_timeout) -> Certificate:
    t_start = time.monotonic()
    progress = progress or (lambda m: None)
    if call_timeout is not None and not (call_timeout > 0 and call_timeout < 1e6):
        raise LoadError(f"--call-timeout {call_timeout!r}: must be a number of seconds above 0")
    guard.configure(call_timeout if call_timeout is not None else guard.DEFAULT_CALL_TIMEOUT_S)
    target = resolve_target(factory, spec, records)
    with _records.using(target.records):  # the tiers (and their forked children) build these records
        return _certify_target(target, profile=profile, budget=budget, tiers=tiers, seed=seed,
                               reports_dir=reports_dir, progress=progress, overrides=overrides, command=command,
                               repro_prefix=repro_prefix, records=records, call_timeout=call_timeout,
                               t_start=t_start)


def _certify_target(target, *, profile, budget, tiers, seed, reports_dir, progress, overrides, command,
                    repro_prefix, records, call_timeout, t_start) -> Certificate:
    if profile is not None and profile not in PROFILES:
        raise LoadError(f"unknown profile {profile!r}; allowed: {', '.join(PROFILES)}")
    if profile is None:
        profile, source = target.default_profile()
    else:
        source = "chosen with --profile"
        if target.declared_profile and target.declared_profile != profile:
            source += f" (the store declares {target.declared_profile!r})"
    b = BUDGETS[budget] if isinstance(budget, str) else budget
    if seed is None:
        seed = random.SystemRandom().randrange(1, 1 << 31)
    selected = sorted(set(int(t) for t in tiers))
    bad = [t for t in selected if t not in _cert.ALL_TIERS]
    if bad:
        raise LoadError(f"unknown tier(s) {bad}; tiers are 1, 2, 3, 4, 5")
    if repro_prefix is None and target.spec:
        repro_prefix = f"python -m harness certify {target.spec} --profile {profile}"
        if records:
            repro_prefix += f" --records {records}"
        if call_timeout is not None:
            repro_prefix += f" --call-timeout {call_timeout:g}"
    report_dir = None
    if reports_dir is not None:
        try:
            report_dir = _cert.make_report_dir(reports_dir, target.label)
        except OSError as e:
            raise LoadError(f"cannot create the report folder under {reports_dir!r}: {e}") from e
    try:
        return _run_tiers(target, profile, source, b, seed, selected, report_dir, progress, overrides, command,
                          repro_prefix, t_start)
    finally:
        _remove_if_empty(report_dir)


def _run_tiers(target, profile, source, b, seed, selected, report_dir, progress, overrides, command, repro_prefix,
               t_start) -> Certificate:
    workroot = tempfile.mkdtemp(prefix="certify-work-")
    ctx = Context(
        target=target,
        profile=profile,
        budget=b,
        seed=seed,
        workroot=workroot,
        progress=progress,
        repro_prefix=repro_prefix,
        overrides=dict(overrides or {}),
    )
    cert = Certificate(
        backend=target.label,
        spec=target.spec,
        profile=profile,
        profile_source=source,
        adapter=target.adapter,
        factory_call=describe_call(target),
        budget=b.name,
        seed=seed,
        command=command or (f"{repro_prefix} --{b.name} --seed {seed} --tiers {','.join(map(str, selected))}"
                            if repro_prefix else ""),
        started_at=time.strftime("%Y-%m-%d %H:%M:%S"),
        records=target.records.describe(),
        call_timeout_s=guard.timeout_s(),
    )
    if target.adapter:
        cert.warnings.append(target.adapter)
    progress(f"certifying {target.label}: profile {profile} ({source}), budget {b.name}, seed {seed}; "
             f"records {target.records.names()} ({target.records.source}); call timeout {guard.timeout_s():g} s")
    try:
        store_level = _findings.store_level(target, ctx, cert, report_dir)
        for n in _cert.ALL_TIERS:
            if store_level:
                cert.tiers.append(TierResult(tier=n, status=NOT_RUN, reason=store_level))
                continue
            cert.tiers.append(_run_tier(n, ctx, selected, report_dir))
            t = cert.tiers[-1]
            progress(
                f"tier {n} {t.name}: {t.status}" + (f" ({t.reason})" if t.reason else "")
                + (f" in {t.duration_s:.1f}s" if t.status in (PASSED, FAILED) else "")
                + (f"; violated: {', '.join(t.failed_properties())}" if t.counterexamples else "")
            )
        _findings.annotate(cert, target, ctx, report_dir)
    finally:
        shutil.rmtree(workroot, ignore_errors=True)
    cert.duration_s = time.monotonic() - t_start
    if report_dir is not None:
        _cert.write(cert, report_dir)
    return cert


def _tier1_in_child(ctx: Context) -> TierResult:
    """Tier 1 in a forked process: a store that crashes the interpreter (or Hypothesis's
    memory) stays out of the certifier, and later forks stay small."""
    from . import tier1_contract as mod
    from .common import in_child

    r = in_child(mod.run, ctx, workdir=ctx.workroot, timeout=6 * 3600, name="tier1")
    if r["ok"]:
        return r["value"]
    if r.get("hang"):
        return TierResult(tier=1, status=FAILED, reason="a store call did not return",
                          counterexamples=[_findings.liveness_counterexample(1, r, ctx)])
    if r.get("hung"):
        return TierResult(tier=1, status=FAILED, reason="the contract tier did not finish (a store call hangs?)",
                          counterexamples=[Counterexample(1, "liveness", r["error"], reproduce=ctx.reproduce(1))])
    if "died without a result" in r["error"]:
        return TierResult(tier=1, status=FAILED, reason="the process running the store died",
                          counterexamples=[Counterexample(1, "exception", r["error"] + " (a crash inside the store?)",
                                                          reproduce=ctx.reproduce(1))])
    raise RuntimeError(r["error"] + "\n" + r.get("traceback", ""))


def _run_tier(n: int, ctx: Context, selected, report_dir: Optional[str]) -> TierResult:
    if ctx.profile == "volatile" and n in (3, 4, 5):
        why = {
            3: "volatile profile: nothing is expected to survive a crash",
            4: "volatile profile: the crash scenarios restart processes, which a volatile store does not survive",
            5: "volatile profile: nothing is expected to survive a power cut",
        }[n]
        return TierResult(tier=n, status=NOT_APPLICABLE, reason=why)
    if n not in selected:
        return TierResult(tier=n, status=NOT_SELECTED, reason="left out with --tiers")
    ctx.progress(f"tier {n} {_cert.TIER_NAMES[n]}: running")
    t0 = time.monotonic()
    try:
        if n == 1:
            return _tier1_in_child(ctx)
        if n == 2:
            from . import tier2_concurrency as mod

            return mod.run(ctx)
        if n == 3:
            from . import tier3_crash as mod

            executor = ctx.overrides.get("executor") or "local"
            if executor != "local" and ctx.target.spec:
                from .tier3_shares import run_on

                return run_on(executor, ctx)
            return mod.run(ctx)
        if n == 5:
            from . import tier_powercut as mod

            return mod.run(ctx, tier=5)
        from . import tier4_end_to_end as mod

        return mod.run(ctx, reports_dir=os.path.join(report_dir, "tier4") if report_dir else None)
    except Exception as e:  # noqa: BLE001 - a harness fault must never read as a pass
        tb = traceback.format_exc()
        return TierResult(
            tier=n,
            status=NOT_RUN,
            harness_error=True,
            reason=f"internal error in the certifier: {type(e).__name__}: {e}",
            notes=tb.splitlines()[-8:],
            duration_s=time.monotonic() - t0,
        )
