"""The Redis backend: store call latency straight to the server and through a node's
proxy, and crash trials per minute of one scenario on Redis and on SQLite."""

from __future__ import annotations

import os
import statistics
import time
from typing import Any, Dict, List

from .registry import DEFAULT_SCENARIO, BenchRun, section


def _ms(xs: List[float]) -> Dict[str, float]:
    xs = sorted(xs)
    return {"median_ms": round(statistics.median(xs) * 1000, 3),
            "p99_ms": round(xs[min(len(xs) - 1, int(len(xs) * 0.99))] * 1000, 3)}


def call_latency(base: str, calls: int) -> Dict[str, Any]:
    """Median and p99 of commit (batch of 8), ack and marker read, direct and through the proxy."""
    from reference_impl.contracts import SampleRef
    from reference_impl.stores.redis import RedisMetadataStore

    from ..network.proxy import NodeProxy
    from ..stores.redis_server import RedisServer

    server = RedisServer(os.path.join(base, "latency"), "always")
    server.start()
    proxy = NodeProxy("bench", ("127.0.0.1", server.port))
    server.write_connection({"bench": proxy.address})
    out: Dict[str, Any] = {"server": server.describe()["version"], "persistence": "always"}
    try:
        for path, node in (("direct", ""), ("proxy", "bench")):
            store = RedisMetadataStore(server.workdir, node=node)
            times: Dict[str, List[float]] = {"commit": [], "ack": [], "marker": []}
            for i in range(calls):
                refs = [SampleRef(f"{path}-{i}-{j}", "bench", None, "mem://x", {}, {}, "eagle3") for j in range(8)]
                t = time.perf_counter()
                store.commit_samples(refs)
                times["commit"].append(time.perf_counter() - t)
                t = time.perf_counter()
                store.record_train_ack([r.sample_id for r in refs], global_step=i, optimizer_durable=True)
                times["ack"].append(time.perf_counter() - t)
                t = time.perf_counter()
                store.durable_marker()
                times["marker"].append(time.perf_counter() - t)
            store.close()
            out[path] = {k: _ms(v) for k, v in times.items()}
    finally:
        proxy.close()
        server.stop()
    out["proxy_overhead_ms"] = {k: round(out["proxy"][k]["median_ms"] - out["direct"][k]["median_ms"], 3)
                                for k in ("commit", "ack", "marker")}
    return out


def trials_per_minute(base: str, backend: str, n: int, scenario: str = DEFAULT_SCENARIO) -> Dict[str, Any]:
    """`n` crash trials of `scenario` on `backend`, one after another."""
    from ..process_engine.runner import run_scenario

    reports = os.path.join(base, f"reports-{backend}")
    t0 = time.monotonic()
    ok = 0
    for seed in range(n):
        r = run_scenario(scenario, seed, backend=backend, reports_dir=reports, render=False)
        ok += int(r.as_expected)
    wall = time.monotonic() - t0
    return {"scenario": scenario, "backend": backend, "trials": n, "as_expected": ok, "wall_s": round(wall, 1),
            "trials_per_min": round(n * 60.0 / wall, 1)}


@section("redis", 70)
def redis_section(run: BenchRun) -> None:
    lat = call_latency(run.base, 100 if run.quick else 500)
    run.out["redis_call_latency"] = lat
    for k in ("commit", "ack", "marker"):
        run.say(f"redis {k}: direct {lat['direct'][k]['median_ms']} ms, through the proxy "
                f"{lat['proxy'][k]['median_ms']} ms (median; p99 {lat['direct'][k]['p99_ms']} / "
                f"{lat['proxy'][k]['p99_ms']} ms)")
    n = 2 if run.quick else 6
    rows = [trials_per_minute(run.base, b, n) for b in ("sqlite", "redis")]
    run.out["redis_vs_sqlite_trials"] = rows
    for r in rows:
        run.say(f"{r['scenario']} on {r['backend']}: {r['trials_per_min']} trials/min "
                f"({r['trials']} trials, {r['as_expected']} as expected, {r['wall_s']} s)")
