"""Mutation score of the reference's protocol core, with mutmut.

    python tools/mutation/run.py [--modules controller,ref_queue,flow_control] [-j N] [--out FILE]
                                 [--sample K --seed S] [--names FILE]

Copies the project into a scratch directory, runs `mutmut run` there over the
chosen reference modules with tools/mutation/test_kill*.py as the only tests,
reads each mutant's verdict and its diff, and compares the survivors with the
triage files (tools/mutation/triage.toml and triage/<module>.toml: each known
survivor, equivalent with the reason, or a gap). Prints the score per module and writes the figures as
JSON (--out). The scratch directory is removed at the end. Not part of CI: a
full run takes tens of CPU minutes.

--sample K runs K mutants per module, drawn with a seeded random generator
from all the module's mutants (random mutant sampling: the score of a uniform
sample estimates the module's score; a 95% Wilson interval is printed with
it). The others stay "not checked" and count nowhere.

Why mutmut: it forks each mutant's test run from a process that has already
imported the project (torch included) and selects the mutant at call time,
so a mutant costs its killing test and nothing else; cosmic-ray starts a
fresh interpreter per mutant, seconds of imports each.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.dirname(os.path.abspath(__file__))
MODULES = ("controller", "ref_queue", "flow_control", "consumer", "producer", "channel", "stores/sqlite",
           "stores/memory")
DEFAULT = ("controller", "ref_queue", "flow_control")

PYPROJECT = """[tool.mutmut]
source_paths = ["reference_impl"]
only_mutate = {only}
also_copy = ["harness", "scenarios"]
pytest_add_cli_args_test_selection = {tests}
pytest_add_cli_args = ["-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly"]
use_git_change_detection = false
timeout_multiplier = 10.0
"""


def _killing_tests():
    """The killing test: test_kill.py (the pipeline as a whole) and test_kill_<module>.py (items aimed at one
    module's survivors)."""
    return sorted(f for f in os.listdir(HERE) if re.fullmatch(r"test_kill(_\w+)?\.py", f))


def _scratch(modules) -> str:
    d = tempfile.mkdtemp(prefix="dfh-mutation-")
    ign = shutil.ignore_patterns("__pycache__", "*.pyc")
    for sub in ("reference_impl", "harness", "scenarios"):
        shutil.copytree(os.path.join(ROOT, sub), os.path.join(d, sub), ignore=ign)
    os.makedirs(os.path.join(d, "tests"))
    for f in ("__init__.py", "pipeline_zoo.py"):
        shutil.copy(os.path.join(ROOT, "tests", f), os.path.join(d, "tests", f))
    for f in _killing_tests():
        shutil.copy(os.path.join(HERE, f), os.path.join(d, "tests", f))
    only = json.dumps([f"reference_impl/{m}.py" for m in modules])
    tests = json.dumps([f"tests/{f}" for f in _killing_tests()])
    with open(os.path.join(d, "pyproject.toml"), "w") as f:
        f.write(PYPROJECT.format(only=only, tests=tests))
    return d


def _tracer_env() -> dict:
    """LD_PRELOAD of the durability tracer, which the killing test's power-cut item needs in mutmut's own
    process (it runs only the tests it saw call a mutant's function there); {} without a compiler, and
    that item is then skipped."""
    sys.path.insert(0, ROOT)
    try:
        from harness.powerloss import preload_with_tracer

        return {"LD_PRELOAD": preload_with_tracer()}
    except Exception:
        return {}
    finally:
        sys.path.remove(ROOT)


def _mutmut(d: str, *args: str, timeout: float = None) -> str:
    env = dict(os.environ, PYTHONPATH=d, **_tracer_env())
    p = subprocess.run([sys.executable, "-m", "mutmut", *args], cwd=d, env=env, capture_output=True, text=True,
                       timeout=timeout)
    return p.stdout + p.stderr


def _results(d: str):
    out = _mutmut(d, "results", "--all", "true")
    res = {}
    for line in out.splitlines():
        m = re.match(r"\s*(\S+__mutmut_\d+): (.+)$", line)
        if m:
            res[m.group(1)] = m.group(2).strip()
    return res


def _all_mutants(d: str):
    """Every generated mutant's name: mutmut keeps them, per source file, in mutants/**/*.meta."""
    names = []
    for root, _, files in os.walk(os.path.join(d, "mutants")):
        for f in files:
            if f.endswith(".meta"):
                with open(os.path.join(root, f)) as fh:
                    names += list(json.load(fh).get("exit_code_by_key", {}))
    return sorted(names)


def _chosen_run(d: str, jobs: int, k: int, seed: int, names_file: str = None) -> str:
    """Generate every mutant (a run that selects none: mutmut then stops on its own assertion), then
    run the ones named in `names_file` (one per line), or k per module drawn with `seed`."""
    log = _mutmut(d, "run", "--max-children", str(jobs), "dfh-select-none")
    names = _all_mutants(d)
    if not names:
        return log
    if names_file:
        with open(names_file) as f:
            wanted = {line.strip() for line in f if line.strip()}
        chosen = [n for n in names if n in wanted]
        if not chosen:
            return log + f"\nnone of the {len(wanted)} names in {names_file} is a mutant of these modules"
        return _mutmut(d, "run", "--max-children", str(jobs), *chosen)
    by_module = {}
    for n in names:
        by_module.setdefault(_module_of(n), []).append(n)
    rng = random.Random(seed)
    chosen = [n for mod in sorted(by_module) for n in rng.sample(by_module[mod], min(k, len(by_module[mod])))]
    return _mutmut(d, "run", "--max-children", str(jobs), *chosen)


def wilson(killed: int, n: int, z: float = 1.96):
    """The 95% Wilson score interval of a proportion killed/n, in percent."""
    if n == 0:
        return None
    p = killed / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return [max(0.0, round(100 * (mid - half), 1)), min(100.0, round(100 * (mid + half), 1))]


def _module_of(name: str) -> str:
    # reference_impl.ref_queue.xǁStreamingRefQueueǁnext__mutmut_3 -> ref_queue
    parts = name.split(".")
    mod = parts[1] if len(parts) > 2 else parts[0]
    return "stores/" + parts[2] if mod == "stores" and len(parts) > 3 else mod


def _triage():
    """triage.toml and triage/*.toml (one per module) merged; a mutant triaged twice is an error."""
    paths = [os.path.join(HERE, "triage.toml")]
    tdir = os.path.join(HERE, "triage")
    if os.path.isdir(tdir):
        paths += sorted(os.path.join(tdir, f) for f in os.listdir(tdir) if f.endswith(".toml"))
    merged = {}
    for path in paths:
        if not os.path.exists(path):
            continue
        with open(path, "rb") as f:
            entries = tomllib.load(f).get("survivor", {})
        twice = sorted(set(entries) & set(merged))
        if twice:
            raise SystemExit(f"{path}: mutants triaged in another file too: {twice[:5]}")
        merged.update(entries)
    return merged


def score(results, triage):
    """Per module: mutants, killed (timeouts count as killed), survivors, equivalent (triaged), score;
    `score_gaps_closed` also counts the survivors triaged as a gap with `closed_by` as killed (the
    killing test or the checkers changed since: run again to measure it)."""
    per = {}
    for name, status in results.items():
        m = per.setdefault(_module_of(name), {"mutants": 0, "killed": 0, "survived": 0, "equivalent": 0,
                                              "untested": 0, "gaps_closed": 0})
        m["mutants"] += 1
        if status in ("killed", "timeout", "caught by type check"):
            m["killed"] += 1
        elif status in ("survived", "no tests"):  # no test reaches it: nothing could have killed it
            t = triage.get(name) or {}
            if t.get("verdict") == "equivalent":
                m["equivalent"] += 1
            else:
                m["survived"] += 1
                m["gaps_closed"] += 1 if t.get("closed_by") else 0
        else:
            m["untested"] += 1
    for m in per.values():
        # not checked (a sample's others) and no-test mutants count nowhere
        judged = m["killed"] + m["survived"]
        m["score"] = round(100.0 * m["killed"] / judged, 1) if judged else None
        m["score_gaps_closed"] = round(100.0 * (m["killed"] + m["gaps_closed"]) / judged, 1) if judged else None
        m["interval_95"] = wilson(m["killed"], judged)
    return per


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python tools/mutation/run.py", description=__doc__.split("\n")[0])
    ap.add_argument("--modules", default=",".join(DEFAULT), help=f"of {', '.join(MODULES)}")
    ap.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1, help="mutants at once")
    ap.add_argument("--out", help="write the figures and the survivors' diffs as JSON here")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory (its mutants/ cache)")
    ap.add_argument("--sample", type=int, default=0, metavar="K", help="run K random mutants per module (0: all)")
    ap.add_argument("--seed", type=int, default=0, help="the seed of --sample's draw")
    ap.add_argument("--names", metavar="FILE", help="run only the mutants named in FILE (one per line), e.g. to "
                                                    "measure survivors again after closing gaps")
    args = ap.parse_args(argv)
    modules = [m.strip() for m in args.modules.split(",") if m.strip()]
    bad = [m for m in modules if m not in MODULES]
    if bad:
        print(f"--modules: unknown {bad}; allowed: {', '.join(MODULES)}", file=sys.stderr)
        return 2
    d = _scratch(modules)
    t0, c0 = time.monotonic(), os.times()
    try:
        if args.sample > 0 or args.names:
            log = _chosen_run(d, args.jobs, args.sample, args.seed, args.names)
        else:
            log = _mutmut(d, "run", "--max-children", str(args.jobs))
        results = _results(d)
        triage = _triage()
        per = score(results, triage)
        survivors = {n: _mutmut(d, "show", n) for n, s in results.items() if s in ("survived", "no tests")}
    finally:
        if not args.keep:
            shutil.rmtree(d, ignore_errors=True)
    c1 = os.times()
    cpu = (c1.children_user + c1.children_system) - (c0.children_user + c0.children_system)
    untriaged = sorted(n for n in survivors if n not in triage)
    for mod, m in sorted(per.items()):
        print(f"{mod}: {m['mutants']} mutants, {m['killed']} killed, {m['survived']} survived (not equivalent), "
              f"{m['equivalent']} equivalent, {m['untested']} not run; score {m['score']}% "
              f"(95% interval {m['interval_95']}; {m['score_gaps_closed']}% with the {m['gaps_closed']} closed gaps)")
    print(f"{len(results)} mutants in {time.monotonic() - t0:.0f} s ({cpu:.0f} CPU s); "
          f"{len(survivors)} survivors, {len(untriaged)} not triaged in tools/mutation/triage*")
    if not results:
        print(log[-3000:], file=sys.stderr)
    for n in untriaged:
        print(f"\n{survivors[n]}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"modules": modules, "sample": args.sample, "seed": args.seed, "names": args.names,
                       "per_module": per, "results": results, "survivors": survivors,
                       "untriaged": untriaged, "wall_s": round(time.monotonic() - t0, 1), "cpu_s": round(cpu, 1)},
                      f, indent=2, sort_keys=True)
    return 0 if results and not untriaged else 1


if __name__ == "__main__":
    sys.exit(main())
