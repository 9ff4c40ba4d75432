"""Bench: campaign throughput on a local Ray instance against the local executor, same seeds, same verdicts.

    python -m harness bench --only ray [--quick] [--jobs 2] [--json FILE]

Runs the same campaign with `--executor local` and `--executor ray` (a local
instance with -j CPUs), reports trials per minute of each (wall clock,
executor start included), the ratio (goal >= 0.8), and whether the per-seed
verdicts are identical. `--two-nodes` also runs it on a two-node cluster
started with `ray.cluster_utils.Cluster` (each node -j/2 CPUs, at least one)
and compares its verdicts too.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Dict, List

from ..campaign import run_campaign
from ..executors.ray import WORKER_NICENESS_ENV
from .registry import BenchRun, goal, section

SCENARIOS = ["kill-random", "failpoints-consumer"]


def _verdicts(cdir: str) -> Dict[str, Any]:
    with open(os.path.join(cdir, "summary.json")) as f:
        runs = json.load(f)["runs"]
    return {f"{r['scenario']}:{r['seed']}": [r["status"], r["outcome"], r["violated"]] for r in runs}


def _one(label: str, scenarios: List[str], seeds: List[int], base: str, **kw) -> Dict[str, Any]:
    t0 = time.monotonic()
    s = run_campaign(scenarios, seeds, reports_dir=os.path.join(base, label), progress=False, **kw)
    wall = time.monotonic() - t0
    out = {"runs": s["runs"], "wall_s": round(wall, 2), "trials_per_min": round(60 * s["runs"] / wall, 1),
           "executor_start_s": s.get("executor_start_s"), "as_expected": s["as_expected"],
           "not_as_expected": s["runs"] - s["as_expected"], "verdicts": _verdicts(s["campaign_dir"])}
    print(f"{label:10s} {out['runs']} trials in {out['wall_s']} s = {out['trials_per_min']} trials/min "
          f"(executor start {out['executor_start_s']} s); {out['as_expected']} as expected", file=sys.stderr)
    return out


@section("ray", 80)
def ray_section(run: BenchRun) -> None:
    seeds = list(range(4 if run.quick else 12))
    jobs = run.args.jobs
    base = tempfile.mkdtemp(prefix="ray-", dir=run.base)
    out: Dict[str, Any] = {"scenarios": SCENARIOS, "seeds": len(seeds), "jobs": jobs}
    out["local"] = _one("local", SCENARIOS, seeds, base, jobs=jobs)
    out["ray"] = _one("ray", SCENARIOS, seeds, base, jobs=jobs, executor="ray")
    out["ratio"] = round(out["ray"]["trials_per_min"] / out["local"]["trials_per_min"], 3)
    out["same_verdicts"] = out["ray"]["verdicts"] == out["local"]["verdicts"]
    steady = out["ray"]["wall_s"] - (out["ray"]["executor_start_s"] or 0.0)
    # Ray's start is paid once per campaign; a short campaign measures mostly that
    out["ratio_after_start"] = round(60 * out["ray"]["runs"] / steady / out["local"]["trials_per_min"], 3)
    out["two_nodes"] = _two_nodes(jobs, SCENARIOS, seeds, base, out["local"]["verdicts"])
    for k in ("local", "ray", "two_nodes"):
        out[k].pop("verdicts", None)
    run.out["ray"] = out
    run.out["ray_vs_local_ratio"] = out["ratio"]
    run.say(f"campaign throughput ({', '.join(SCENARIOS)}, {len(seeds)} seeds, -j {jobs}): local "
            f"{out['local']['trials_per_min']}/min, local Ray instance {out['ray']['trials_per_min']}/min "
            f"(ratio {out['ratio']}, {goal('ray_vs_local_ratio', out['ratio'])}; "
            f"{out['ratio_after_start']} after Ray's {out['ray']['executor_start_s']} s start); "
            f"same per-seed verdicts: "
            f"{out['same_verdicts']}; two nodes: " + (f"{out['two_nodes']['trials_per_min']}/min on "
            f"{out['two_nodes']['nodes_used']} nodes, same verdicts {out['two_nodes']['same_verdicts']}"
            if out["two_nodes"].get("started") else f"not started ({out['two_nodes'].get('error')})"))


def _two_nodes(jobs, scenarios, seeds, base, local_verdicts) -> Dict[str, Any]:
    from ray.cluster_utils import Cluster

    per = max(1, jobs // 2)
    tmp = tempfile.mkdtemp(prefix="dfh-ray2-")
    os.makedirs(os.path.join(tmp, "ray"))
    os.environ["RAY_TMPDIR"] = tmp  # the cluster utilities write their address file under it
    os.environ[WORKER_NICENESS_ENV] = "0"  # as a local instance's workers (executors/ray.py)
    t0 = time.monotonic()
    try:
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": per, "temp_dir": os.path.join(tmp, "ray"),
                                                                "include_dashboard": False})
        cluster.add_node(num_cpus=per)
        cluster.wait_for_nodes()
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"two nodes: the cluster utilities could not start two nodes: {e!r}", file=sys.stderr)
        return {"started": False, "error": repr(e)}
    start = round(time.monotonic() - t0, 2)
    try:
        r = _one("two-nodes", scenarios, seeds, base, jobs=jobs, executor="ray", address=cluster.address)
        nodes = {w.rsplit(":", 1)[-1] for w in _workers(base)}
    finally:
        cluster.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    r.update(started=True, cluster_start_s=start, same_verdicts=r["verdicts"] == local_verdicts,
             nodes_used=len(nodes))
    print(f"two nodes: same per-seed verdicts as local: {r['same_verdicts']} "
          f"(trials ran on {len(nodes)} nodes)", file=sys.stderr)
    return r


def _workers(base: str) -> List[str]:
    out = []
    d = os.path.join(base, "two-nodes")
    for c in os.listdir(d):
        with open(os.path.join(d, c, "summary.json")) as f:
            out += [r.get("worker", "?") for r in json.load(f)["runs"]]
    return out
