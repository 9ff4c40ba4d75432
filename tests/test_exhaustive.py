"""Exhaustive small schedules (harness.simulate.exhaustive): every schedule of up to N faults,
no randomness; the reference passes them all, named zoo members are found.

The bound here is one fault (about 180 schedules, a few CPU seconds); the
full N = 2 run (`python -m harness simulate --exhaustive --max-faults 2`)
also finds `republish_and_forget_skips`, which needs a producer crash after a
consumer crash, and is too long for CI.
"""

from __future__ import annotations

from itertools import islice

import pytest

from harness.simulate.exhaustive import Planted, PlantedSimulation, enumerate_schedules, explore, places
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
