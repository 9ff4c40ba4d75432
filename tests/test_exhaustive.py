"""Exhaustive small schedules (harness.simulate.exhaustive): every schedule of up to N faults,
no randomness; the reference passes them all, named zoo members are found.

The bound here is one fault (about 180 schedules, a few CPU seconds); the
full N = 2 run (`python -m harness simulate --exhaustive --max-faults 2`)
also finds `republish_and_forget_skips`, which needs a producer crash after a
consumer crash, and is too long for CI.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from itertools import islice

import pytest

from harness.faults import Failpoint
from harness.simulate.exhaustive import (
    SYNC_BOUNDARIES,
    TORN_BOUNDARIES,
    Planted,
    PlantedSimulation,
    enumerate_schedules,
    explore,
    kind_of,
    places,
)
from harness.simulate.search import _prepare_process
from tests.pipeline_zoo import ZOO
from tests.test_simulate import sim_workload

ONE_FAULT = ["ack_before_checkpoint", "ack_every_step_checkpoint_every_k", "consumed_restarts_at_zero",
             "ignore_backpressure", "no_roll_forward", "publish_only_fresh", "release_before_ack",
             "skip_all_committed"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    _prepare_process()


def test_the_reference_passes_every_one_fault_schedule():
    sim = PlantedSimulation()
    root, hits = sim.run_plan(())
    assert not root.failed() and hits, "the fault-free run reaches failpoints"
    first = places(hits)
    assert {f.action for f in first} == {"crash", "pause"}
    assert len({(f.target, f.point) for f in first}) >= 12  # both processes, most of their points
    r = explore(max_faults=1)
    assert r["failures"] == [] and r["errors"] == []
    assert r["schedules"] == 1 + len(first) and r["by_faults"] == {0: 1, 1: len(first)}
    cov = r["coverage"]
    assert cov["faults"]["failpoint_crash"] and cov["faults"]["pause"]
    assert sum(cov["faults"]["failpoint_crash"].values()) == sum(1 for f in first if f.action == "crash")


def test_a_planted_crash_lands_exactly_where_planned_and_its_children_come_after():
    sim = PlantedSimulation()
    plan = (Planted("consumer", 0, "consumer.after_checkpoint_before_ack", 2),)
    res, after = sim.run_plan(plan)
    assert res.faults == [plan[0].fault()] and not res.failed()
    assert after and all(h[:2] != ("consumer", 0) for h in after)  # the crashed incarnation reaches nothing more
    assert ("consumer", 1) in {h[:2] for h in after}
    schedules = list(islice(enumerate_schedules(PlantedSimulation(), 2, first=[0]), 3))
    assert [len(p) for p, _ in schedules] == [0, 1, 2] and schedules[2][0][0] == schedules[1][0][0]


@pytest.mark.parametrize("name", ONE_FAULT)
def test_one_fault_finds_zoo_member(name):
    m = ZOO[name]
    r = explore(sim_workload(m), max_faults=1, expect=[m.violates], stop_at_first=True, variant=m.variant)
    assert r["failures"], f"{name}: no schedule of {r['schedules']} violated {m.violates}"
    assert m.violates in r["failures"][0]["violated"]


@pytest.mark.slow
def test_impolite_channel_one_fault():
    w = {"checkpoint_every": 2}  # trained windows wait unacked while the next one fills
    ref = explore(w, max_faults=1, impolite=True)
    assert ref["failures"] == [] and ref["coverage"]["faults"].get("duplicate") and \
        ref["coverage"]["faults"].get("replay")
    assert ref["coverage"]["sometimes"]["duplicate_rejected"] > 0
    bad = explore(w, max_faults=1, impolite=True, expect=["P1"], variant="tests.pipeline_zoo:consumer_without_dedup")
    actions = {f["faults"][0]["kind"] for f in bad["failures"]}
    assert actions == {"duplicate", "replay"}, actions
    polite = explore(w, max_faults=1, expect=["P1"], variant="tests.pipeline_zoo:consumer_without_dedup")
    assert polite["failures"] == []  # without the impolite channel nothing notices the missing dedup


# -- power cuts at sync boundaries (`--exhaustive --powercuts`) ------------------------------------
# A planted power cut needs the durability tracer preloaded, so these run the CLI as a child (it
# restarts itself with LD_PRELOAD set), which also exercises that path.

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def exhaustive_cli(tmp_path, *args, env=None):
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-m", "harness", "simulate", "--exhaustive", "--max-faults", "1",
                           "--json", str(out), *args], cwd=REPO, env=env or dict(os.environ, PYTHONPATH=REPO),
                          capture_output=True, text=True, timeout=600)
    return proc, (json.loads(out.read_text()) if out.exists() else None)


@pytest.fixture(scope="module")
def tracer():
    from harness.exit_codes import UsageError
    from harness.powerloss import tracer_library

    try:
        return tracer_library()
    except UsageError as e:
        pytest.fail(f"no tracer on this machine: {e}")


def test_powercut_places_are_the_sync_boundaries():
    _, hits = PlantedSimulation().run_plan(())
    plain, cuts = places(hits), places(hits, powercuts=True)
    extra = [f for f in cuts if f not in plain]
    boundary_hits = [h for h in hits if h[2] in SYNC_BOUNDARIES]
    assert [f.action for f in extra if f.action == "powercut"] == ["powercut"] * len(boundary_hits)
    assert {f.point for f in extra} == {h[2] for h in boundary_hits} >= {"producer.after_commit_before_publish",
                                                                         "consumer.after_checkpoint_before_ack",
                                                                         "consumer.mid_consumed_replace"}
    assert {f.point for f in extra if f.action == "powercut-torn"} == set(TORN_BOUNDARIES)
    cut = next(f for f in extra if f.action == "powercut-torn")
    assert cut.fault() == Failpoint(target=cut.target, point=cut.point, action="powercut", hit=cut.hit,
                                    incarnation=cut.incarnation)
    assert kind_of((plain[0], cut)) == "crash+powercut-torn" and kind_of(()) == "none"
    with pytest.raises(ValueError, match="powercuts=True"):
        PlantedSimulation().run_plan((cut,))


def test_reference_passes_every_one_fault_schedule_with_power_cuts(tmp_path, tracer):
    """Two forked workers (the tracer inherited, switched per schedule): every power cut lands, some
    drop unsynced writes, and the reference keeps P1-P8 through all of them."""
    _, hits = PlantedSimulation().run_plan(())
    proc, r = exhaustive_cli(tmp_path, "--powercuts", "--jobs", "2")
    assert proc.returncode == 0 and r is not None, proc.stdout + proc.stderr
    assert r["failures"] == [] and r["errors"] == []
    cuts = sum(1 for h in hits if h[2] in SYNC_BOUNDARIES)
    torn = sum(1 for h in hits if h[2] in TORN_BOUNDARIES)
    assert r["by_kind"]["powercut"] == cuts > 10 and r["by_kind"]["powercut-torn"] == torn > 0
    assert r["schedules"] == sum(r["by_kind"].values()) == len(places(hits, powercuts=True)) + 1
    cov = r["coverage"]
    assert sum(cov["faults"]["powercut"].values()) == cuts + torn  # each cut landed, counted once
    assert cov["sometimes"]["unsynced_write_dropped"] >= torn
    assert "by kind:" in proc.stdout and f"{cuts} powercut" in proc.stdout


def test_power_cuts_find_what_crashes_cannot(tmp_path, tracer):
    """Blobs renamed without a directory fsync: no crash or pause schedule loses them, a power cut
    right after the batch's blobs are written does (P2)."""
    variant = "tests.pipeline_zoo:features_rename_without_dir_fsync"
    assert explore(max_faults=1, expect=["P2"], variant=variant)["failures"] == []
    proc, r = exhaustive_cli(tmp_path, "--powercuts", "--variant", variant, "--expect-violation", "P2", "--jobs", "1")
    assert proc.returncode == 0 and r is not None, proc.stdout + proc.stderr
    f = r["failures"][0]
    assert "P2" in f["violated"] and f["powercut_mode"] in ("clean", "torn"), f
    assert [x["action"] for x in f["faults"]] == ["powercut"] and f["plan"][0].startswith("powercut")
    # P2 (the samples are lost), with P3 beside it (the consumer counted their records consumed unacked)
    assert re.search(r"FOUND: P2(, P\d)* with powercut", proc.stdout), proc.stdout


def test_exhaustive_powercuts_bad_input_exits_2(tmp_path):
    proc, _ = exhaustive_cli(tmp_path, "--powercuts", "--backend", "inmemory")
    assert proc.returncode == 2 and "in-memory store" in proc.stderr, proc.stdout + proc.stderr
    env = dict(os.environ, PYTHONPATH=REPO, CC="/nonexistent/cc", XDG_CACHE_HOME=str(tmp_path / "cache"))
    env.pop("LD_PRELOAD", None)
    proc, _ = exhaustive_cli(tmp_path, "--powercuts", env=env)
    assert proc.returncode == 2 and "compiler" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
