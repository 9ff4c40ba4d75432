"""Restart latency: SIGKILL of a consumer to its replacement's first channel event,
zygote launcher vs cold spawn.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Any, Dict, List

from .procfs import in_fresh_process, median, read_events
from .registry import DEFAULT_SCENARIO, BenchRun, goal, section

KILLS_PER_RUN = 5


def restart_worker(launcher: str, kills: int, base: str, seed: int = 0) -> Dict[str, Any]:
    """SIGKILL the consumer `kills` times in runs of the default scenario's workload; restart as the runner does.

    A run takes at most KILLS_PER_RUN kills, so the channel and the run stay the
    size of the default scenario's (300 samples): a restarted consumer's start
    cost grows with the channel it re-reads.
    """
    import random

    os.environ["DFH_LAUNCHER"] = launcher
    from reference_impl.config import write_config

    from ..process_engine.runner import POLL_S, config_for
    from ..scenario import load_scenario

    if launcher == "zygote":
        from ..process_engine import zygote

        zygote.get_client()  # started before the clock, as in a campaign worker after its first trial
    rng = random.Random(seed)
    rows: List[Dict[str, Any]] = []
    run = 0
    while len(rows) < kills and run < kills:
        work = tempfile.mkdtemp(prefix=f"restart-{launcher}-", dir=base)
        os.makedirs(os.path.join(work, "history"))
        cfg = config_for(load_scenario(DEFAULT_SCENARIO), seed + run, work)
        write_config(cfg)
        rows += _restart_run(cfg, launcher, min(KILLS_PER_RUN, kills - len(rows)), rng, POLL_S)
        shutil.rmtree(work, ignore_errors=True)
        run += 1
    return {"launcher": launcher, "kills": rows, "runs": run,
            "median_ms": median([r["read_ms"] for r in rows]),
            "median_start_ms": median([r["start_ms"] for r in rows if r["start_ms"] is not None]),
            "median_exited_ms": median([r["exited_ms"] for r in rows if r["exited_ms"] is not None])}


def _restart_run(cfg, launcher: str, kills: int, rng, poll_s: float) -> List[Dict[str, Any]]:
    from ..process_engine.supervisor import Supervisor

    conf = cfg.path("config.json")
    sup = Supervisor(cfg.workdir, launcher=launcher)
    hist = cfg.path("history", "consumer.jsonl")

    def channel_event_of(inc: int) -> bool:
        return any(e.get("inc") == inc and e.get("ev") in ("read", "skip") for e in read_events(hist))

    try:
        sup.spawn("producer", "reference_impl.producer", ["--config", conf])
        sup.spawn("consumer", "reference_impl.consumer", ["--config", conf])
        deadline = time.monotonic() + 60 + kills * 30
        for _ in range(kills):
            inc = sup.procs["consumer"].inc
            while not channel_event_of(inc) and time.monotonic() < deadline:
                if sup.procs["consumer"].poll() is not None:
                    break
                time.sleep(poll_s)
            if sup.procs["consumer"].poll() is not None:
                break  # finished (or failed): this run is over
            time.sleep(rng.uniform(0.02, 0.1))  # let it get into its work
            if not sup.kill("consumer"):
                break
            while True:  # the runner's loop: reap, restart with --resume
                if [p for p in sup.reap() if p.name == "consumer"]:
                    sup.spawn("consumer", "reference_impl.consumer", ["--config", conf, "--resume"])
                    break
                sup.idle(poll_s)
        inc = sup.procs["consumer"].inc
        while not channel_event_of(inc) and time.monotonic() < deadline and sup.procs["consumer"].poll() is None:
            time.sleep(poll_s)
    finally:
        sup.shutdown()
    sev = read_events(cfg.path("history", "supervisor.jsonl"))
    cev = read_events(hist)
    rows = []
    for k in (e for e in sev if e["ev"] == "kill" and e["target"] == "consumer"):
        i = k["target_inc"]
        exited = next((e["mono"] for e in sev if e["ev"] == "exited" and e["target"] == "consumer"
                       and e["target_inc"] == i), None)
        spawn = next((e["mono"] for e in sev if e["ev"] == "spawn" and e["target"] == "consumer"
                      and e["target_inc"] == i + 1), None)
        start = next((e["mono"] for e in cev if e["inc"] == i + 1 and e["ev"] == "start"), None)
        first = next((e["mono"] for e in cev if e["inc"] == i + 1 and e["ev"] in ("read", "skip")), None)
        if first is None:
            continue
        ms = lambda t: None if t is None else round((t - k["mono"]) * 1000, 1)  # noqa: E731
        rows.append({"exited_ms": ms(exited), "spawn_ms": ms(spawn), "start_ms": ms(start), "read_ms": ms(first)})
    return rows


@section("restart", order=1)
def restart_section(run: BenchRun) -> None:
    z = in_fresh_process(restart_worker, "zygote", 8 if run.quick else 20, run.base)
    c = in_fresh_process(restart_worker, "spawn", 3 if run.quick else 5, run.base)
    run.out["restart_ms_median"] = z["median_ms"]
    run.out["restart_cold_ms_median"] = c["median_ms"]
    run.out["restart_ratio_cold_over_zygote"] = (round(c["median_ms"] / z["median_ms"], 1)
                                                 if z["median_ms"] and c["median_ms"] else None)
    run.out["restart"] = {"zygote": z, "spawn": c}
    run.say(f"restart (SIGKILL -> replacement reads the channel), median of {len(z['kills'])}: "
            f"{z['median_ms']} ms zygote vs {c['median_ms']} ms cold spawn ({len(c['kills'])} kills), "
            f"{run.out['restart_ratio_cold_over_zygote']}x; {goal('restart_ms_median', z['median_ms'])}")
    run.say(f"    zygote: reaped {z['median_exited_ms']} ms, process start event {z['median_start_ms']} ms; "
            f"cold: start event {c['median_start_ms']} ms")
