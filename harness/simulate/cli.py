"""`python -m harness simulate`: many crash schedules in one process, each failure shrunk.

    python -m harness simulate [SCENARIO] --examples N [--seed S] [--json FILE]
                               [--variant pkg.mod:name] [--expect-violation P]
                               [--backend sqlite|inmemory] [--store-kills] [--powercuts] [--impolite]
                               [-j J] [--samples N]
                               [--reports DIR | --out FILE] [--no-shrink] [--shrink-budget S]
    python -m harness simulate --schedule FILE.json      (rerun one saved schedule)
    python -m harness simulate [SCENARIO] --exhaustive [--max-faults N] [--impolite] [--powercuts]
                               [--variant ...]

(options: harness.arguments)

SCENARIO (a name in scenarios/ or a .toml path) gives the workload, the
backend, the variant and the expectation; without it the simulation's small
default workload runs on SQLite. Each schedule runs to completion; the
invariants (P3 bounds, P4, P5) are checked at every step and P1-P8 at the end
with the process engine's checkers. The rate is printed; on a failure the
shrunk schedule is printed and written as a scenario file, which
`python -m harness run FILE --seed 0` replays in the process engine.

--impolite adds the impolite channel: a duplicate (the producer writes its
last records again at its next publish) or a replay (the consumer's read
position moves back) at a failpoint of the target, which runs on; a scenario
with duplicate or replay faults turns it on.

--exhaustive runs every schedule of up to --max-faults faults instead of
drawing them (`harness.simulate.exhaustive`): a crash or a pause at each
failpoint hit of each process (with --impolite, also a duplicate or a replay;
with --powercuts, a power cut at each sync boundary), under the deterministic
drain; it prints the count (by number of faults and by kind), the time and the
coverage.

--powercuts adds power cuts (`harness.simulate.powercut`): every process
crashes at once and the work dir reverts to what a disk could hold (clean or
torn). The simulation process must be traced from its start, so without the
tracer preloaded the command runs itself again as a child with LD_PRELOAD set;
without a C compiler to build the tracer it stops with exit 2.

Exit codes (harness/exit_codes.py): 0 nothing unexpected (with
--expect-violation: the violation was found); 1 an unexpected failure (or the
expected violation was not found); 2 bad input (options, scenario, variant,
backend, an unusable --json/--out path: all checked before the search); 3 the
harness could not finish (a worker error, an I/O error naming the path, an
interruption).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Dict, List, Optional

from harness.arguments import DEFAULT_JOBS
from harness.exit_codes import ExitCode, UsageError
from harness.paths import check_output_file, read_json_file

EXIT_OK, EXIT_FOUND, EXIT_USAGE, EXIT_HARNESS = (ExitCode.AS_EXPECTED, ExitCode.UNEXPECTED, ExitCode.USAGE,
                                                 ExitCode.HARNESS)
PROPS = tuple(f"P{i}" for i in range(1, 9))
BACKENDS = ("sqlite", "inmemory", "private")


class _Usage(UsageError):
    pass


def main(argv: Optional[List[str]] = None) -> int:
    """`python -m harness.simulate ARGS`: the same as `python -m harness simulate ARGS`."""
    from harness.cli import main as harness_main

    return harness_main(["simulate", *(sys.argv[1:] if argv is None else argv)])


def cmd_simulate(args) -> int:
    setup = _setup(args)
    if setup["spec"].powercuts:
        from .powercut import run_preloaded

        rc = run_preloaded(args.argv)  # None: this process is traced already
        if rc is not None:
            return rc
    if args.schedule:
        return _run_one(args, setup)
    if args.exhaustive:
        return _exhaustive(args, setup)
    return _search(args, setup)


def _exhaustive(args, setup) -> int:
    """Every schedule of up to --max-faults faults; exit as `_search` does."""
    from harness.coverage import gaps
    from harness.coverage.text import one_line

    from .exhaustive import explore

    spec, label = setup["spec"], setup["label"]
    if args.max_faults < 0:
        raise _Usage(f"--max-faults must be >= 0, got {args.max_faults}")
    if "store_server" in spec.targets:
        raise _Usage("--exhaustive plants crashes, pauses and power cuts at failpoint hits; it has no "
                     "store-server kills (drop --store-kills, or use a scenario without them)")
    jobs = args.jobs or min(os.cpu_count() or 1, 8)
    _say(args, f"simulate {label} --exhaustive: every schedule of up to {args.max_faults} fault(s), {jobs} job(s); "
               f"{_describe(spec)}")
    r = explore(spec.workload, spec.backend, args.max_faults, impolite=spec.impolite, powercuts=spec.powercuts,
                jobs=jobs, expect=spec.expect, stop_at_first=bool(spec.expect), variant=spec.variant)
    for err in r["errors"]:
        print(f"error: {err}", file=sys.stderr)
    per = ", ".join(f"{v} with {k}" for k, v in sorted(r["by_faults"].items()))
    kinds = ", ".join(f"{v} {k}" for k, v in sorted(r["by_kind"].items()))
    _say(args, f"{r['schedules']} schedules ({per}; by kind: {kinds}) in {r['wall_s']:.1f} s "
               f"({r['cpu_s']:.1f} CPU s)")
    _say(args, f"coverage: {one_line(r['coverage'])}")
    for f in r["failures"][:5]:
        print(f"{'FOUND' if spec.expect else 'FAILURE'}: {', '.join(f['violated']) or f['outcome']} with "
              f"{'; '.join(f['plan']) or 'no fault'}")
        for v in f["violations"][:3]:
            print(f"  {v['prop']} {v['kind']}: {v['message'][:300]}")
        print(f"  process-engine faults: {json.dumps(f['faults'])}"
              + (f" (powercut_mode {f['powercut_mode']})" if f.get("powercut_mode") else ""))
    gap = gaps(r["coverage"], setup.get("sometimes") or (), setup.get("points") or ())
    if args.json:
        check_output_file(args.json, "--json")
        with open(args.json, "w") as fh:
            json.dump({**r, "scenario": label, "variant": spec.variant, "expect_violation": spec.expect,
                       "coverage_gaps": gap}, fh, indent=2, sort_keys=True, default=str)
    if r["errors"]:
        return EXIT_HARNESS
    if spec.expect:
        if not r["failures"]:
            print(f"NOT FOUND: no schedule of {r['schedules']} violated {' or '.join(spec.expect)}")
            return EXIT_FOUND
        return EXIT_OK
    if r["failures"]:
        return EXIT_FOUND
    if gap:
        print(f"INCONCLUSIVE: {len(gap)} coverage gap(s): {'; '.join(gap)}")
        return EXIT_HARNESS
    return EXIT_OK


def _setup(args) -> Dict[str, Any]:
    from harness.arguments import check_executor, jobs_of

    from .engine import config_for
    from .search import MAX_OPS, SimSpec

    if args.examples < 1:
        raise _Usage(f"--examples must be >= 1, got {args.examples}")
    jobs_of(args)
    check_executor(args)
    if args.powercuts and args.executor == "ray":
        raise _Usage("--powercuts runs under the durability tracer, which Ray workers do not load; "
                     "use --executor local")
    d = _from_scenario(args)
    workload, backend, variant, expect = d["workload"], d["backend"], d["variant"], d["expect"]
    store_kills, powercuts, impolite = d["store_kills"], d["powercuts"], d["impolite"]
    if args.backend:
        backend = args.backend
    if backend not in BACKENDS and ":" not in backend:
        raise _Usage(f"--backend {backend!r}: allowed {' | '.join(BACKENDS)} | pkg.mod:Factory")
    if ":" in backend:
        from harness.validation import check_backend

        check_backend(backend, "--backend")
    if args.variant:
        variant = args.variant
    if variant:
        from harness.validation import check_variant

        check_variant(variant, "--variant" if args.variant else "topology.variant")
    if args.expect_violation:
        bad = [p for p in args.expect_violation if p not in PROPS]
        if bad:
            raise _Usage(f"--expect-violation {bad[0]!r}: allowed {', '.join(PROPS)}")
        expect = list(args.expect_violation)
    if args.samples is not None:
        if args.samples < 1:
            raise _Usage(f"--samples must be >= 1, got {args.samples}")
        workload["samples"] = args.samples
    max_ops = args.max_ops if args.max_ops is not None else MAX_OPS
    if max_ops < 0:
        raise _Usage(f"--max-ops must be >= 0, got {max_ops}")
    if store_kills and backend != "inmemory":
        raise _Usage(f"--store-kills: only the in-memory backend has a store server (backend {backend})")
    config_for("/nonexistent", workload, backend)  # ConfigError (exit 2) on a bad workload
    if powercuts:
        from .powercut import check_backend

        check_backend(backend)
    if args.shrink_budget is not None and not args.shrink_budget >= 0:
        raise _Usage(f"--shrink-budget must be a number of seconds >= 0, got {args.shrink_budget}")
    if args.json:
        check_output_file(args.json, "--json")
    if args.out:
        check_output_file(args.out, "--out")
    targets = ("producer", "consumer") + (("store_server",) if store_kills else ())
    spec = SimSpec(workload=workload, backend=backend, variant=variant, expect=expect, outcomes=d["outcomes"],
                   targets=targets, max_ops=max_ops, shrink=not args.no_shrink, shrink_budget_s=args.shrink_budget,
                   powercuts=powercuts, impolite=impolite)
    return {"spec": spec, "label": d["label"], "sometimes": d["sometimes"], "points": d["points"]}


def _from_scenario(args) -> Dict[str, Any]:
    """What the scenario argument sets (the simulation's small workload on SQLite without one)."""
    from .engine import DEFAULT_WORKLOAD

    d: Dict[str, Any] = {"workload": dict(DEFAULT_WORKLOAD), "backend": "sqlite", "variant": None, "expect": None,
                         "outcomes": ["completed"], "label": "default", "sometimes": [], "points": [],
                         "store_kills": bool(args.store_kills), "powercuts": bool(args.powercuts),
                         "impolite": bool(args.impolite)}
    if not args.scenario:
        return d
    from harness.faults.simulated import IMPOLITE_TARGET
    from harness.scenario import load_scenario

    sc = load_scenario(args.scenario)
    if sc.topology.get("consumer_ranks", 1) != 1:
        raise _Usage(f"scenario {sc.name}: the simulation runs one consumer rank "
                     f"(consumer_ranks = {sc.topology['consumer_ranks']})")
    d["workload"].update(sc.workload)
    rnd = sc.random_faults
    d.update(backend=sc.backend, variant=sc.topology.get("variant") or None,
             expect=list(sc.expect.get("violates") or []) or None,
             outcomes=list(sc.expect.get("outcome") or ["completed"]), label=sc.name,
             sometimes=list(sc.expect.get("sometimes") or []), points=_sim_points(sc))
    d["powercuts"] |= bool(rnd.get("count")) and "powercut" in rnd.get("kinds", []) or any(
        f.kind == "powercut" for f in sc.explicit_faults)
    d["store_kills"] |= bool(rnd.get("count")) and "store_server" in rnd.get("targets", []) or any(
        f.target == "store_server" for f in sc.explicit_faults)
    d["impolite"] |= any(f.kind in IMPOLITE_TARGET for f in sc.explicit_faults)
    return d


def _sim_points(sc) -> List[str]:
    """The scenario's failpoints that a simulated process reaches (the gate asks for each)."""
    from harness.coverage import scenario_points
    from harness.faults import PIPELINE, points_for

    here = {p for t in PIPELINE for p in points_for(t, sc.backend)}
    return [p for p in scenario_points(sc) if p in here]


def _say(args, msg: str) -> None:
    if not args.quiet:
        print(msg, flush=True)


def _describe(spec) -> str:
    w = spec.workload
    return (f"{w['samples']} samples, publish_batch {w['publish_batch']}, window "
            f"{w['train_batch'] * w['accumulation']}, checkpoint_every {w['checkpoint_every']}, "
            f"watermarks {w['high_watermark']}/{w['low_watermark']}, backend {spec.backend}"
            + (", store-server kills" if "store_server" in spec.targets else "")
            + (", power cuts" if spec.powercuts else "")
            + (", impolite channel" if spec.impolite else "")
            + (f", variant {spec.variant}" if spec.variant else ""))


def _search(args, setup) -> int:
    from .search import search_parallel

    spec, label = setup["spec"], setup["label"]
    from harness.arguments import jobs_of

    jobs = jobs_of(args, default=DEFAULT_JOBS if args.examples >= 50 else 1)
    expect_txt = (f"; expecting a violation of {' or '.join(spec.expect)}" if spec.expect else "")
    _say(args, f"simulate {label}: {args.examples} schedules, seed {args.seed}, {jobs} job(s); "
               f"{_describe(spec)}{expect_txt}")
    r = search_parallel(spec, args.examples, seed=args.seed, jobs=jobs, executor=args.executor,
                        address=args.address)
    for err in r["errors"]:
        print(f"error: {err}", file=sys.stderr)
    fired = ", ".join(f"{v} {k}" for k, v in sorted(r["faults_fired"].items())) or "none"
    _say(args, f"{r['schedules']} schedules in {r['search_s']:.1f} s: {r['schedules_per_min']:.0f} schedules/min "
               f"({r['ms_per_schedule_cpu'] or 0:.1f} ms CPU per schedule, {r['schedules_per_cpu_min']:.0f} per "
               f"CPU-minute, {r['jobs']} job(s)); faults fired: {fired}")
    gaps = _coverage(args, setup, r)
    found = r["failure"]
    scenario_path = None
    summary = None
    if found is not None:
        found, scenario_path = _report_failure(args, setup, r)
        summary = found.summary()
        summary["scenario"] = scenario_path
        summary["replay"] = f"python -m harness run {scenario_path} --seed 0" if scenario_path else None
    if args.json:
        out = {k: v for k, v in r.items() if k not in ("failure", "outcome")}
        best = r["outcome"]
        out.update({
            "scenario": label, "backend": spec.backend, "workload": spec.workload, "variant": spec.variant,
            "expect_violation": spec.expect, "found": found is not None,
            "time_to_find_s": round(best.time_to_find_s, 3) if best and best.time_to_find_s is not None else None,
            "schedules_to_find": best.schedules_to_find if best else None,
            "shrink_runs": best.shrink_runs if best else None,
            "shrink_s": round(best.shrink_s, 3) if best else None,
            "counterexamples": [summary] if summary else [],
            "coverage_gaps": gaps,
        })
        d = os.path.dirname(os.path.abspath(args.json))
        os.makedirs(d, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, sort_keys=True, default=str)
    if r["errors"]:  # the search itself failed (a worker error): the harness's failure
        return EXIT_HARNESS
    if spec.expect:
        if found is None:
            print(f"NOT FOUND: no schedule of {r['schedules']} violated {' or '.join(spec.expect)}")
            return EXIT_FOUND
        return EXIT_OK
    if found is not None:
        return EXIT_FOUND
    if gaps:  # nothing failed, but the search did not reach what the scenario exists to exercise
        print(f"INCONCLUSIVE: {len(gaps)} coverage gap(s): {'; '.join(gaps)}")
        return EXIT_HARNESS
    return EXIT_OK


def _coverage(args, setup, r) -> List[str]:
    """Print the search's coverage; return the gaps against what the scenario declared."""
    from harness.coverage import gaps
    from harness.coverage.text import one_line

    cov = r.get("coverage") or {}
    _say(args, f"coverage: {one_line(cov)}")
    return gaps(cov, setup.get("sometimes") or (), setup.get("points") or ())


def _report_failure(args, setup, r):
    from harness.faults.simulated import scenario_text

    from .engine import Simulation, format_op, normalize

    spec, label = setup["spec"], setup["label"]
    best = r["outcome"]
    res = best.failure
    # Consecutive steps of one target merged: same behaviour, shorter to read; rerun to be sure.
    norm = normalize(res.ops)
    if norm != list(res.ops):
        undo = _apply_variant(spec.variant)
        try:
            again = Simulation(spec.workload, spec.backend, workdir_root=spec.workdir_root,
                               powercuts=spec.powercuts).run(norm)
        finally:
            if undo:
                undo()
        if again.failed(spec.expect, spec.outcomes):
            res = again
    head = "FOUND" if spec.expect else "FAILURE"
    print(f"{head}: {', '.join(res.violated) or res.outcome} (outcome {res.outcome}) after "
          f"{best.schedules_to_find} schedules in {best.time_to_find_s:.2f} s; shrunk in {best.shrink_runs} runs "
          f"({best.shrink_s:.1f} s) from {len(best.first_failure.ops)} to {len(res.ops)} ops")
    print("schedule (then: drain both sides to completion without faults):")
    for i, op in enumerate(res.ops):
        print(f"  {i:2d}. {format_op(op)}")
    if not res.ops:
        print("  (none: the drain alone)")
    for t in res.trace:
        print(f"  fault: {t}")
    shown = 0
    for v in res.violations:
        if spec.expect and v.prop not in spec.expect and shown:
            continue
        print(f"  {v.prop} {v.kind}: {v.message[:300]}")
        shown += 1
        if shown >= 6:
            break
    if res.error:
        print(res.error)
    name = f"sim-{label}-{args.seed}".replace("/", "-").replace(" ", "-")
    if spec.variant:
        name += "-" + spec.variant.rsplit(":", 1)[-1]
    for pl in res.powerloss:
        print(f"  power cut: {pl['unsynced_writes_dropped']} unsynced writes dropped, {pl['bytes_lost']} bytes "
              f"lost, files reverted {pl['files_reverted']}, entries undone {pl['entries_undone'][:4]}")
    faults, text = scenario_text(res, name=name, workload=spec.workload, backend=spec.backend,
                                 variant=spec.variant, expect=spec.expect, outcomes=spec.outcomes, seed=args.seed,
                                 source=label)
    path = args.out or os.path.join(args.reports, f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.toml")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    print(f"process-engine faults: {json.dumps(faults)}")
    print(f"scenario: {path}")
    print(f"replay: python -m harness run {path} --seed 0")
    return res, path


def _apply_variant(variant):
    if not variant:
        return None
    from reference_impl.variant import apply_variant

    return apply_variant(variant)


def _run_one(args, setup) -> int:
    from .engine import Simulation, check_ops, format_op
    from .search import _prepare_process

    spec = setup["spec"]
    data = read_json_file(args.schedule, "--schedule")
    if isinstance(data, dict):  # a --json output: its first counterexample
        ces = data.get("counterexamples") or []
        data = ces[0]["ops"] if ces else data.get("ops")
    try:
        ops = check_ops(data or [], spec.backend, spec.powercuts)
    except ValueError as e:
        raise UsageError(f"--schedule {args.schedule}: {e}") from None
    _prepare_process()
    undo = _apply_variant(spec.variant)
    try:
        res = Simulation(spec.workload, spec.backend, powercuts=spec.powercuts).run(ops)
    finally:
        if undo:
            undo()
    print(f"schedule of {len(ops)} ops: outcome {res.outcome}, violated {', '.join(res.violated) or 'nothing'} "
          f"({res.steps} steps, {res.events} events)")
    for i, op in enumerate(ops):
        print(f"  {i:2d}. {format_op(op)}")
    for t in res.trace:
        print(f"  fault: {t}")
    for v in res.violations[:8]:
        print(f"  {v.prop} {v.kind}: {v.message[:300]}")
    if res.error:
        print(res.error)
    failed = res.failed(spec.expect, spec.outcomes)
    if spec.expect:
        return EXIT_OK if failed else EXIT_FOUND
    return EXIT_FOUND if failed else EXIT_OK
