"""Tier 1, contract: Hypothesis stateful testing of one store against the pure model.

A `RuleBasedStateMachine` drives one store instance (and, for the durable
profile, closes and reopens it on the same path) with commits, batches, acks
and lookups; after every step the store's observable state must equal the
model's. A failure is shrunk by Hypothesis to the fewest, simplest steps and
recorded as that step list.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import traceback
from typing import Any, List, Optional, Tuple

import hypothesis
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.reporting import with_reporter
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from ..minimize import ddmin, hypothesis_shrink_limit
from .certificate import FAILED, NOT_RUN, PASSED, Counterexample, TierResult
from .common import Context, in_child, safe_close
from .model import (
    ContractModel,
    Violation,
    canon_ref,
    diff_refs,
    marker_diff,
    normalise_marker,
    short,
)
from .records import RecordBuildError, active

PROPERTIES = [
    "freshness (P4)",
    "round-trip",
    "is_committed",
    "committed_count",
    "all_committed_ids order",
    "durable_marker",
    "global_step",
    "optimizer_durable",
    "reopen (P6)",
]

# Ids chosen to collide and to break naive storage: case, trailing space,
# quotes, newline, unicode, two long ids sharing a 300-character prefix.
ID_POOL = [
    "s0",
    "s1",
    "s2",
    "S0",
    "s0 ",
    "ü-样本-🙂",
    "a'b\"c;--",
    "line\nbreak",
    "L" * 300 + "-a",
    "L" * 300 + "-b",
    "0",
    "s3",
]

_text = st.text(
    alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=12
)
_ids = st.sampled_from(ID_POOL) | _text.filter(bool)
# Refs come from the backend's own record types (harness.certify.records): half of
# them only vary the id (cheap, and dedup bugs need many commits), the other half
# fill every field (round trip); a failure shrinks to plain refs.
STEPS = st.one_of(st.none(), st.integers(0, 3), st.integers(0, 2**40))


def _sid(s: str) -> str:
    return repr(s) if len(s) <= 60 else repr(s[:20]) + f"+...({len(s)} chars)...+" + repr(s[-6:])


def fmt_ref(ref) -> str:
    """The ref's constructor call, showing only the fields that differ from a plain ref's."""
    parts = [f"sample_id={_sid(ref.sample_id)}"]
    for k, v in active().minimal_fields().items():
        val = getattr(ref, k, None)
        if val != v:
            parts.append(f"{k}={val!r}")
    return f"{type(ref).__name__}(" + ", ".join(parts) + ")"


class _Stats:
    def __init__(self) -> None:
        self.examples = 0
        self.steps = 0
        self.reopens = 0
        self.last_steps: List[str] = []
        self.last_calls: List[tuple] = []


class _Steps(RuleBasedStateMachine):
    """The contract's steps on one store; `build_machine` binds them to Hypothesis rules.

    The subclass sets `cfg` = (target, stats, workroot, progress, every).
    """

    cfg: Tuple[Any, _Stats, str, Any, int]

    def __init__(self) -> None:
        super().__init__()
        target, stats, workroot, progress, every = self.cfg
        stats.examples += 1
        if stats.examples % every == 0:
            progress(f"tier 1 contract: {stats.examples} examples, {stats.steps} store calls")
        self.dir = tempfile.mkdtemp(prefix="t1-", dir=workroot)
        self.model = ContractModel()
        self.log: List[str] = []
        self.calls: List[tuple] = []  # (rule name, kwargs): replayable by minimise()
        stats.last_steps = self.log
        stats.last_calls = self.calls
        self.store = None
        self.log.append("store = open(fresh working directory)")
        try:
            self.store = target.open(self.dir)
        except Exception as e:  # noqa: BLE001
            raise Violation("open", f"constructing the store raised {type(e).__name__}: {e}") from e

    # -- helpers ---------------------------------------------------------------
    def _call(self, name: str, *args, **kw):
        self.cfg[1].steps += 1
        try:
            return getattr(self.store, name)(*args, **kw)
        except Violation:
            raise
        except Exception as e:  # noqa: BLE001
            raise Violation("exception", f"{name} raised {type(e).__name__}: {e}") from e

    def _check_refs(self, ids) -> None:
        for sid in dict.fromkeys(ids):
            if not self._call("is_committed", sid):
                raise Violation("is_committed", f"is_committed({_sid(sid)}) is False after it was committed")
            got = self._call("get_committed", sid)
            if got is None:
                raise Violation("round-trip", f"get_committed({_sid(sid)}) returned None after it was committed")
            d = diff_refs(self.model.refs[sid], canon_ref(got))
            if d:
                raise Violation("round-trip", f"get_committed({_sid(sid)}) differs from the first commit: {d}")

    # -- the steps -------------------------------------------------------------
    def do_commit_sample(self, ref) -> None:
        self.calls.append(("commit_sample", dict(ref=ref)))
        self.log.append(f"store.commit_sample({fmt_ref(ref)})")
        expected = self.model.commit([ref])[0]
        got = self._call("commit_sample", ref)
        if bool(got) != expected:
            raise Violation(
                "freshness",
                f"commit_sample({_sid(ref.sample_id)}) returned {got!r}, expected {expected!r} "
                + ("(the id was committed before)" if not expected else "(the id was never committed)"),
            )
        self._check_refs([ref.sample_id])

    def do_commit_samples(self, refs) -> None:
        self.calls.append(("commit_samples", dict(refs=refs)))
        self.log.append("store.commit_samples([" + ", ".join(fmt_ref(r) for r in refs) + "])")
        before = set(self.model.refs)
        expected = self.model.commit(refs)
        got = self._call("commit_samples", list(refs))
        try:
            got = [bool(x) for x in got]
        except TypeError:
            raise Violation("freshness", f"commit_samples returned {got!r}, not a list of flags")
        if len(got) != len(expected):
            raise Violation("freshness", f"commit_samples of {len(refs)} refs returned {len(got)} flags: {got!r}")
        if got != expected:
            i = next(i for i, (a, b) in enumerate(zip(got, expected)) if a != b)
            sid = refs[i].sample_id
            if expected[i]:
                why = "the id was never committed"
            elif sid in before:
                why = "the id was committed before"
            else:
                why = "the id appears earlier in the same batch (a repeated id is fresh once)"
            raise Violation(
                "freshness",
                f"commit_samples returned {got!r}, expected {expected!r}: flag {i} for "
                f"{_sid(sid)} is {got[i]!r} but {why}",
            )
        self._check_refs([r.sample_id for r in refs])

    def do_record_train_ack(self, picks, global_step, optimizer_durable) -> None:
        self.calls.append(("record_train_ack", dict(picks=picks, global_step=global_step,
                                                    optimizer_durable=optimizer_durable)))
        order = self.model.order
        ids = sorted({order[p % len(order)] for p in picks}) if order else []
        self.log.append(
            f"store.record_train_ack([{', '.join(_sid(i) for i in ids)}], global_step={global_step!r}, "
            f"optimizer_durable={optimizer_durable!r})"
        )
        self.model.ack(ids, global_step, optimizer_durable)
        self._call("record_train_ack", list(ids), global_step=global_step, optimizer_durable=optimizer_durable)

    def do_lookup(self, sid) -> None:
        self.calls.append(("lookup", dict(sid=sid)))
        self.log.append(f"store.is_committed({_sid(sid)}); store.get_committed({_sid(sid)})")
        if sid in self.model.refs:
            self._check_refs([sid])
            return
        if self._call("is_committed", sid):
            raise Violation("is_committed", f"is_committed({_sid(sid)}) is True but it was never committed")
        got = self._call("get_committed", sid)
        if got is not None:
            raise Violation("round-trip", f"get_committed({_sid(sid)}) returned {got!r} but it was never committed")

    def do_reopen(self) -> None:
        self.calls.append(("reopen", {}))
        self.log.append("store.close(); store = open(same working directory)")
        self.cfg[1].reopens += 1
        try:
            closer = getattr(self.store, "close", None)
            if callable(closer):
                closer()
        except Exception as e:  # noqa: BLE001
            raise Violation("exception", f"close raised {type(e).__name__}: {e}") from e
        self.store = None
        try:
            self.store = self.cfg[0].open(self.dir)
        except Exception as e:  # noqa: BLE001
            raise Violation("reopen", f"reopening the store raised {type(e).__name__}: {e}") from e
        count = self._call("committed_count")
        if count != len(self.model.order):
            raise Violation(
                "reopen",
                f"after reopen committed_count() is {count!r}, expected {len(self.model.order)} "
                "(commits that returned were lost)",
            )
        d = marker_diff(self.model.marker(), normalise_marker(self._call("durable_marker")))
        if d:
            raise Violation("reopen", f"after reopen {d[1]} (acks that returned were lost)")
        self._check_refs(self.model.order)

    def check_observable_state(self) -> None:
        """After every step: count, order and marker equal the model's."""
        if self.store is None:
            return
        count = self._call("committed_count")
        if count != len(self.model.order):
            raise Violation("committed_count", f"committed_count() is {count!r}, expected {len(self.model.order)}")
        ids = self._call("all_committed_ids")
        try:
            ids = [str(i) for i in ids]
        except TypeError:
            raise Violation("all_committed_ids order", f"all_committed_ids() returned {ids!r}")
        if ids != self.model.order:
            if sorted(ids) == sorted(self.model.order):
                msg = "not in first-commit order"
            else:
                msg = f"holds {short(set(ids) ^ set(self.model.order))} wrongly"
            raise Violation(
                "all_committed_ids order",
                f"all_committed_ids() is {[_sid(i) for i in ids]}, expected "
                f"{[_sid(i) for i in self.model.order]} ({msg})",
            )
        d = marker_diff(self.model.marker(), normalise_marker(self._call("durable_marker")))
        if d:
            raise Violation({"marker": "durable_marker"}.get(d[0], d[0]), d[1])

    def teardown(self):
        if self.store is not None:
            safe_close(self.store)
        shutil.rmtree(self.dir, ignore_errors=True)


def build_machine(ctx: Context, stats: _Stats, workroot: str):
    """The Hypothesis state machine: `_Steps` bound to rules over the backend's record types."""
    durable = ctx.profile == "durable"
    REFS = active().strategy(_ids)

    class StoreContract(_Steps):
        cfg = (ctx.target, stats, workroot, ctx.progress, max(10, ctx.budget.t1_examples // 4))

        @rule(ref=REFS)
        def commit_sample(self, ref):
            self.do_commit_sample(ref)

        @rule(refs=st.lists(REFS, max_size=5))
        def commit_samples(self, refs):
            self.do_commit_samples(refs)

        @rule(picks=st.lists(st.integers(0, 10**6), max_size=5), global_step=STEPS,
              optimizer_durable=st.booleans())
        def record_train_ack(self, picks, global_step, optimizer_durable):
            self.do_record_train_ack(picks, global_step, optimizer_durable)

        @rule(sid=_ids)
        def lookup(self, sid):
            self.do_lookup(sid)

        @precondition(lambda self: durable)
        @rule()
        def reopen(self):
            self.do_reopen()

        @invariant()
        def observable_state(self):
            self.check_observable_state()

    StoreContract.__name__ = "StoreContract"
    StoreContract.__qualname__ = "StoreContract"
    return StoreContract


def _tensor_probe(target, d: str) -> Optional[str]:
    """In a child process (importing torch is slow and heavy): commit a ref carrying a tensor."""
    try:
        import torch
    except Exception:  # noqa: BLE001
        return None
    store = target.open(d)
    try:
        ref = active().minimal_ref("tensor-ref")
        if not hasattr(ref, "metadata"):
            return None
        object.__setattr__(ref, "metadata", {"t": torch.zeros(2)})
        try:
            store.commit_samples([ref])
        except TypeError:
            return None
        except Exception as e:  # noqa: BLE001
            return (
                f"committing a ref with a tensor in metadata raised {type(e).__name__}, not TypeError "
                "(DESIGN section 2)"
            )
        return "the store accepted a ref with a torch tensor in metadata (DESIGN section 2 asks for TypeError)"
    finally:
        safe_close(store)


def _tensor_check(ctx: Context, workroot: str, res: TierResult) -> None:
    """DESIGN section 2: committing a ref with a tensor inside is a TypeError (a warning if not)."""
    if ctx.budget.name == "quick":
        res.notes.append("tensor rejection (TypeError) not checked in the quick budget")
        return
    d = tempfile.mkdtemp(prefix="t1-tensor-", dir=workroot)
    r = in_child(_tensor_probe, ctx.target, d, workdir=d, timeout=300, name="tensor")
    if r["ok"] and r["value"]:
        res.warnings.append(r["value"])
    elif not r["ok"]:
        res.warnings.append(f"committing a ref with a tensor inside failed unexpectedly: {r['error']}")
    shutil.rmtree(d, ignore_errors=True)


def _replay(machine_cls, calls) -> Tuple[Optional[Violation], List[str]]:
    """Run the calls on a fresh store and model, checking after each; (violation or None, step log)."""
    m = machine_cls()
    try:
        m.observable_state()
        for name, kw in calls:
            getattr(m, name)(**kw)
            m.observable_state()
        return None, list(m.log)
    except Violation as v:
        return v, list(m.log)
    except Exception as e:  # noqa: BLE001
        return Violation("exception", f"{type(e).__name__}: {e}"), list(m.log)
    finally:
        m.teardown()


def minimise(machine_cls, calls, prop: str, seconds: float) -> Optional[Tuple[List[tuple], List[str], Violation]]:
    """Delete steps one at a time while the same property still fails (a 1-minimal step list).

    Hypothesis shrinks the values inside the steps; it does not always manage to
    delete every irrelevant step of a stateful run, so this finishes the job.
    """
    deadline = time.monotonic() + seconds
    v, log = _replay(machine_cls, calls)
    if v is None or v.prop != prop:
        return None  # not reproducible outside Hypothesis: keep its own result

    def same_failure(trial):
        v2, log2 = _replay(machine_cls, trial)
        return (log2, v2) if v2 is not None and v2.prop == prop else None

    steps, got = ddmin(calls, same_failure, deadline=deadline)
    return (steps, *(got or (log, v)))


def run(ctx: Context) -> TierResult:
    """The tier in a child process: a store that crashes the interpreter (or Hypothesis's
    memory) stays out of the certifier, and later children stay small."""
    from .findings import child_failure

    r = in_child(run_in_this_process, ctx, workdir=ctx.workroot, timeout=6 * 3600, name="tier1")
    if r["ok"]:
        return r["value"]
    cex = child_failure(1, r, ctx)
    return TierResult(tier=1, status=FAILED, reason=cex.detail.get("reason", ""), counterexamples=[cex])


def run_in_this_process(ctx: Context) -> TierResult:
    t0 = time.monotonic()
    res = TierResult(tier=1, status=PASSED, properties=list(PROPERTIES))
    if ctx.profile != "durable":
        res.properties.remove("reopen (P6)")
        res.notes.append("volatile profile: reopen (close and open on the same path) not exercised")
    examples = int(ctx.overrides.get("examples") or ctx.budget.t1_examples)
    workroot = ctx.subdir("tier1")
    stats = _Stats()
    machine = build_machine(ctx, stats, workroot)
    hypothesis.seed(ctx.seed)(machine)
    cfg = settings(
        max_examples=examples,
        stateful_step_count=ctx.budget.t1_steps,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
        print_blob=True,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
    )
    report: List[str] = []
    ctx.progress(f"tier 1 contract: up to {examples} examples of up to {ctx.budget.t1_steps} steps")
    try:
        with with_reporter(report.append), hypothesis_shrink_limit(ctx.budget.t1_shrink_s):
            run_state_machine_as_test(machine, settings=cfg)
    except RecordBuildError as e:  # the harness's fault: never counted against the backend
        res.status = NOT_RUN
        res.harness_error = True
        res.reason = f"harness error, not the backend's: {e}"
    except Exception as e:  # noqa: BLE001
        res.status = FAILED
        prop = getattr(e, "prop", None) or "exception"
        msg = getattr(e, "message", None) or f"{type(e).__name__}: {e}"
        if not isinstance(e, Violation):
            tb = traceback.format_exception(type(e), e, e.__traceback__)
            msg = f"{type(e).__name__}: {e} (in the harness or the store; {tb[-2].strip() if len(tb) > 1 else ''})"
        steps = list(stats.last_steps)
        program: List[str] = []
        counted = (stats.examples, stats.steps, stats.reopens)
        if isinstance(e, Violation) and stats.last_calls:
            try:
                got = minimise(machine, list(stats.last_calls), e.prop, seconds=max(5.0, ctx.budget.t1_shrink_s / 2))
            except Exception:  # noqa: BLE001 - never lose Hypothesis's own result
                got = None
            program_calls = list(stats.last_calls)
            if got is not None:
                program_calls, steps, v = got
                msg = v.message
            stats.examples, stats.steps, stats.reopens = counted
            try:
                from .findings import tier1_program

                program = tier1_program(program_calls)
            except Exception:  # noqa: BLE001 - a reproducer is a help, never a reason to lose the result
                program = []
        lines = list(report) + [n for n in getattr(e, "__notes__", []) or [] if isinstance(n, str)]
        lines = [ln for chunk in lines for ln in str(chunk).splitlines()]
        blob = [line for line in lines if "reproduce_failure" in line]
        res.counterexamples.append(
            Counterexample(
                tier=1,
                property=prop,
                message=msg,
                steps=steps,
                reproduce=ctx.reproduce(1, f"--examples {examples}"),
                detail={
                    "program": program,
                    "hypothesis_program": [line for line in lines if "reproduce_failure" not in line],
                    "hypothesis_blob": blob,
                },
            )
        )
    res.counters = {"examples": stats.examples, "store_calls": stats.steps, "reopens": stats.reopens}
    if res.status == FAILED and time.monotonic() - t0 > ctx.budget.t1_shrink_s:
        res.notes.append(
            f"shrinking is capped at {ctx.budget.t1_shrink_s:.0f} s in the {ctx.budget.name} budget; "
            "the counterexample may not be the very smallest (--thorough shrinks longer)"
        )
    if res.status == PASSED:
        _tensor_check(ctx, workroot, res)
    shutil.rmtree(workroot, ignore_errors=True)
    res.duration_s = time.monotonic() - t0
    return res
