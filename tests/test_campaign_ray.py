"""Campaigns on the Ray executor (a real local Ray instance): same verdicts as local, lost workers, no orphans."""

import json
import os
import signal
import threading
import time

import pytest
import ray  # noqa: F401  (the [ray] extra is part of the test install: these tests run, never skip)

from harness.campaign import run_campaign
from harness.campaign.reaper import descendants

from .campaign_helpers import kill_leftovers, output, start_campaign, wait_no_leftovers, wait_running_trial

TASK_PREFIX = "ray::dfh_trial_"


def _verdicts(summary_dir):
    with open(os.path.join(summary_dir, "summary.json")) as f:
        runs = json.load(f)["runs"]
    return {(r["scenario"], r["seed"]): (r["status"], r["outcome"], tuple(r["violated"]),
                                         r["faults"]["planned"]) for r in runs}


@pytest.mark.slow
def test_ray_executor_gives_the_local_executors_verdicts(tmp_path):
    scenarios, seeds = ["kill-random", "failpoints-consumer"], [0, 1]
    local = run_campaign(scenarios, seeds, jobs=2, reports_dir=str(tmp_path / "local"), progress=False)
    on_ray = run_campaign(scenarios, seeds, jobs=2, reports_dir=str(tmp_path / "ray"), executor="ray",
                          progress=False, keep_all=True)
    assert on_ray["executor"] == "ray" and on_ray["runs"] == local["runs"] == 4
    vl, vr = _verdicts(local["campaign_dir"]), _verdicts(on_ray["campaign_dir"])
    assert vr == vl
    assert all(v[0] != "harness_error" for v in vr.values()), vr
    # A local instance's workers run at nice 0 (Ray's default, 15, left trials waiting behind any other
    # process on a busy machine: planned kills missed), and the summary says nothing about niceness.
    assert [r["niceness"] for r in _rows(on_ray)] == [0] * 4
    assert on_ray["niced"] == {"trials": 0, "niceness": 0}
    # The autoscaler monitor was SIGKILLed before the shutdown (Ray's own SIGTERM left it a second's
    # grace, a second of every campaign): its pid was found in the installed Ray, and it is gone.
    assert isinstance(on_ray["ray_monitor_stopped"], int) and not _alive(on_ray["ray_monitor_stopped"])
    assert on_ray["executor_stop_s"] is not None and local["executor_stop_s"] is None
    # keep_all: every report came back to the driver's campaign dir, naming its new place.
    kept = [d for d in os.listdir(on_ray["campaign_dir"]) if d.startswith(("kill-random-", "failpoints-consumer-"))]
    assert len(kept) == 4
    for d in kept:
        with open(os.path.join(on_ray["campaign_dir"], d, "result.json")) as f:
            assert os.path.join(on_ray["campaign_dir"], d) in f.read()
    assert not os.path.exists(os.path.join("/tmp", f"dfh-trials-{os.path.basename(on_ray['campaign_dir'])}"))


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _kill_one_running_trial(killed, stop):
    """SIGKILL the first Ray worker seen running a trial whose pipeline is up; note (pid, task index)."""
    while not stop.is_set():
        for pid in descendants(os.getpid()):
            cmd = _cmdline(pid)
            if cmd.startswith(TASK_PREFIX) and any("reference_impl.consumer" in _cmdline(c)
                                                   for c in descendants(pid)):
                time.sleep(0.3)
                if _cmdline(pid) == cmd:
                    os.kill(pid, signal.SIGKILL)
                    killed.append((pid, int(cmd[len(TASK_PREFIX):].split()[0])))
                    return
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.parametrize("retries", [1, 0])
def test_a_ray_worker_killed_mid_trial_is_retried_or_reported(tmp_path, retries):
    seeds = [0, 1, 2]
    killed, stop = [], threading.Event()
    t = threading.Thread(target=_kill_one_running_trial, args=(killed, stop), daemon=True)
    t.start()
    try:
        s = run_campaign(["kill-random"], seeds, jobs=2, reports_dir=str(tmp_path / "r"), executor="ray",
                         max_retries=retries, progress=False)
    finally:
        stop.set()
        t.join(timeout=10)
    assert killed, "no running trial was found to kill"
    pid, index = killed[0]
    rows = {r["seed"]: r for r in _rows(s)}
    assert sorted(rows) == seeds  # every seed accounted for
    victim = rows[seeds[index]]
    if retries:
        assert victim["status"] == "as_expected", victim  # retried on another worker, same verdict
        assert int(victim["worker"].split(":")[1]) != pid  # worker is host:pid:node
    else:
        assert victim["status"] == "harness_error" and "lost" in victim["error"], victim
    assert s["unexpected"] == 0


def _rows(summary):
    with open(os.path.join(summary["campaign_dir"], "summary.json")) as f:
        return json.load(f)["runs"]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_ray_campaign_leaves_no_process(tmp_path, sig):
    reports = tmp_path / "r"
    p = start_campaign(["kill-random", "--seeds", "0..19", "--executor", "ray", "-j", "2"], reports)
    cdir, seen = None, {}
    try:
        cdir, seen = wait_running_trial(p, reports, timeout=240)
        time.sleep(1.0)  # let the reaper note the instance's agents too
        seen = {**seen, **descendants(p.pid)}
        p.send_signal(sig)
        p.wait(timeout=120)
        left = wait_no_leftovers(cdir, seen, timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
        kill_leftovers(cdir, seen)
    assert left == {}, f"processes outlived the {sig.name}ed Ray campaign: {left}"
    assert not [d for d in os.listdir("/tmp") if d.startswith(f"dfh-trials-{os.path.basename(cdir)}")]
    if sig == signal.SIGTERM:
        assert p.returncode == 3, output(p)
        with open(os.path.join(cdir, "summary.json")) as f:
            data = json.load(f)
        assert data["summary"]["interrupted"] and data["summary"]["signal"] == "SIGTERM"
        assert sorted(r["seed"] for r in data["runs"]) == list(range(20))
        assert data["summary"]["incomplete"] >= 1 and data["summary"]["unexpected"] == 0


@pytest.mark.slow
def test_simulate_on_ray_gives_the_local_search(tmp_path):
    """The simulation engine's shares as Ray tasks: same shares, same seeds, so the same
    schedules; a hunted bug is found both ways. (Local workers stop each other at the
    first failure, Ray tasks do not, so counts are compared on a search that passes.)"""
    from harness.simulate.search import SimSpec, search_parallel
    from tests.pipeline_zoo import ZOO
    from tests.test_simulate import sim_workload

    clean = SimSpec()
    local = search_parallel(clean, 16, seed=5, jobs=2)
    on_ray = search_parallel(clean, 16, seed=5, executor="ray", jobs=2)
    assert on_ray["errors"] == [] and local["errors"] == []
    keys = ("schedules", "failures", "faults_fired")
    assert {k: on_ray[k] for k in keys} == {k: local[k] for k in keys}
    assert local["schedules"] == 16 and sum(local["faults_fired"].values()) > 0

    member = ZOO["no_roll_forward"]
    spec = SimSpec(workload=sim_workload(member), variant=member.variant, expect=[member.violates], shrink=False)
    hunted = search_parallel(spec, 24, seed=5, executor="ray", jobs=2)
    assert hunted["errors"] == [] and hunted["failures"] >= 1


@pytest.mark.slow
def test_certify_crash_trials_on_ray(tmp_path):
    """certify's tier 3 split into Ray tasks: a store that loses returned commits is still
    rejected for P6, the reference store still passes, with every trial counted."""
    from harness.certify import FAILED, PASSED, certify
    from harness.certify.certificate import Budget

    small = Budget("t", t1_examples=5, t1_steps=5, t2_scale=0.3, t3_crashes=40, t4_seeds=1, t1_shrink_s=2)
    ray_opts = {"executor": "ray", "jobs": 2}
    bad = certify("tests.store_zoo:BufferedCommitsStore", budget=small, tiers=[3], seed=20240601, reports_dir=None,
                  progress=None, overrides=ray_opts)
    assert bad.tier(3).status == FAILED and "P6 durability" in bad.tier(3).failed_properties()
    good = certify("reference_impl.stores.sqlite:SQLiteMetadataStore", budget=small, tiers=[3], seed=7,
                   reports_dir=None, progress=None, overrides={"crashes": 10, **ray_opts})
    assert good.tier(3).status == PASSED and good.tier(3).counters["trials"] == 10


@pytest.mark.slow
def test_certify_power_cut_trials_on_ray(tmp_path):
    """certify's tier 5 split into Ray tasks: the store that never fsyncs is still rejected,
    the reference store still passes, with every trial counted."""
    from harness.certify import FAILED, PASSED, certify
    from harness.certify.certificate import Budget

    small = Budget("t", t1_examples=5, t1_steps=5, t2_scale=0.3, t3_crashes=10, t4_seeds=1, t1_shrink_s=2)
    ray_opts = {"executor": "ray", "jobs": 2}
    bad = certify("tests.store_zoo.powerloss:SyncOffStore", budget=small, tiers=[5], seed=7, reports_dir=None,
                  progress=None, overrides={"powercuts": 24, **ray_opts})
    assert bad.tier(5).status == FAILED and "P6 durability" in bad.tier(5).failed_properties()
    good = certify("reference_impl.stores.sqlite:SQLiteMetadataStore", budget=small, tiers=[5], seed=7,
                   reports_dir=None, progress=None, overrides={"powercuts": 6, **ray_opts})
    assert good.tier(5).status == PASSED and good.tier(5).counters["trials"] == 6
