"""The fault layer: typed kinds and their dict forms, bad input named, plans that can land."""

from __future__ import annotations

import json
import os

import pytest

from harness.faults import (
    KINDS,
    Failpoint,
    FaultError,
    Kill,
    Pause,
    Powercut,
    Schedule,
    fault_from_dict,
    make_schedule,
    owner,
    points_for,
    read_schedule,
)
from harness.faults.vocabulary import process_of
from harness.scenario import ScenarioError, load_scenario, scenario_from_dict, scenario_paths
from reference_impl.failpoints import POINTS

EXAMPLES = [
    Kill(target="consumer.rank1", at_consumed=12),
    Kill(target="producer", at_published=40, incarnation=2, signal=9),
    Pause(target="consumer", at_s=0.5, duration_s=0.2),
    Powercut(at_published=30, after={"consumer": 1}),
    Failpoint(target="consumer", point="rank.mid_inbox_read", hit=3, incarnation=1, rank=0),
    Failpoint(target="producer", point="channel.mid_append", action="pause", duration_s=0.4),
]


@pytest.mark.parametrize("fault", EXAMPLES, ids=[f.describe() for f in EXAMPLES])
def test_every_kind_round_trips_through_its_dict_form(fault):
    planned = fault.replace(id=7, origin="random")
    assert fault_from_dict(planned.to_dict(planned=True), "x") == planned
    assert "id" not in planned.to_dict() and fault_from_dict(planned.to_dict(), "x") == fault
    assert set(KINDS) >= {"kill", "pause", "failpoint", "powercut"}


@pytest.mark.parametrize("d,fragment", [
    ({"kind": "nuke"}, "key 'kind' has value 'nuke'; allowed: kill | pause"),
    ({"kind": "kill", "target": "consumer"}, "key 'trigger' has value []"),
    ({"kind": "kill", "target": "consumer", "at_s": 1, "at_consumed": 3}, "exactly one of"),
    ({"kind": "kill", "target": "router", "at_s": 1}, "key 'target' has value 'router'"),
    ({"kind": "kill", "target": "consumer", "at_s": 1, "duration_s": 1}, "key 'duration_s'"),
    ({"kind": "pause", "target": "consumer", "at_s": 1, "duration_s": -1}, "key 'duration_s' has value -1"),
    ({"kind": "failpoint", "target": "consumer", "point": "nowhere"}, "key 'point' has value 'nowhere'"),
    ({"kind": "failpoint", "target": "consumer.rank1", "point": "rank.mid_inbox_read"}, "key 'target'"),
    ({"kind": "failpoint", "target": "consumer", "point": "channel.mid_append", "hit": 0}, "key 'hit' has value 0"),
    ({"kind": "powercut", "target": "consumer", "at_s": 1}, "a power cut hits every process"),
    ({"kind": "powercut", "at_s": 1, "after": {"router": 1}}, "key 'after'"),
    ("kill", "key '(fault)'"),
])
def test_a_bad_fault_names_where_and_the_key(d, fragment):
    with pytest.raises(FaultError, match="^here: .*" + fragment.replace("(", r"\(").replace(")", r"\)")
               .replace("[", r"\[").replace("]", r"\]").replace("|", r"\|")):
        fault_from_dict(d, "here")


def test_a_bad_fault_in_a_scenario_is_a_scenario_error_naming_it():
    with pytest.raises(ScenarioError, match=r"faults.explicit\[1\]: key 'kind' has value 'nuke'"):
        scenario_from_dict({"name": "x", "faults": {"explicit": [{"kind": "kill", "target": "consumer", "at_s": 1},
                                                                 {"kind": "nuke"}]}})


def test_a_hand_edited_schedule_json_is_bad_input_naming_file_and_fault(tmp_path, capsys):
    """`replay` of a report whose schedule.json holds {"kind": "nuke"}: exit 2, never a KeyError."""
    from harness.cli import main

    rdir = tmp_path / "report"
    rdir.mkdir()
    sc = load_scenario("kill-random")
    (rdir / "scenario.toml").write_text(sc.to_toml())
    (rdir / "result.json").write_text(json.dumps({"seed": 0, "verdict": {"violated": []}, "outcome": "completed"}))
    sched = make_schedule(sc, 0).to_dict()
    sched["faults"].append({"kind": "nuke"})
    path = rdir / "schedule.json"
    path.write_text(json.dumps(sched))
    with pytest.raises(FaultError, match=r"schedule.json: faults\[3\]: key 'kind' has value 'nuke'"):
        read_schedule(str(path))
    assert main(["replay", str(rdir), "--reports", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "faults[3]" in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "r") or not os.listdir(tmp_path / "r")


def test_schedule_json_round_trips(tmp_path):
    sc = load_scenario("dp2-rank-kills")
    a = make_schedule(sc, 5)
    a.write(str(tmp_path / "s.json"))
    assert read_schedule(str(tmp_path / "s.json")) == a
    assert Schedule.from_dict(a.to_dict()) == a


def test_one_owner_table_for_both_engines():
    for p in POINTS:
        assert owner(p) in ("producer", "consumer")
    assert "store.mid_ack_txn" in points_for("consumer", "sqlite")
    assert owner("store.mid_ack_txn", "inmemory") == "store_server"
    assert "store.mid_ack_txn" not in points_for("consumer", "inmemory")
    assert not any(p.startswith("rank") for p in points_for("consumer"))
    assert {"rank.mid_inbox_read", "rank0.after_gather_before_ack"} <= set(points_for("consumer", ranks=2))


def _ending_incarnations(schedule):
    """process -> the incarnations that planned failpoint crashes (or cuts) end."""
    out = {}
    for f in schedule.failpoints():
        if f.ends():
            out.setdefault(f.target, []).append(f.incarnation)
    return out


def test_the_kill_that_preempted_a_failpoint_now_waits_for_it():
    """dp2-rank-kills seed 5: a random kill at at_consumed=54 used to end consumer#0 before the planned
    failpoint at hit 11 in consumer#0 was reached (INCONCLUSIVE)."""
    s = make_schedule(load_scenario("dp2-rank-kills"), 5)
    fp = [f for f in s.failpoints() if f.point == "consumer.after_checkpoint_before_ack"]
    kill = [f for f in s.faults if isinstance(f, Kill)]
    assert fp[0].incarnation == 0 and fp[0].hit == 11
    assert kill[0].at_consumed == 54 and kill[0].incarnation == 2  # after both failpoint crashes


@pytest.mark.parametrize("path", scenario_paths(), ids=lambda p: p.stem)
def test_no_random_kill_or_cut_can_end_an_incarnation_a_failpoint_waits_in(path):
    sc = load_scenario(str(path))
    for seed in range(20):
        s = make_schedule(sc, seed)
        ends = _ending_incarnations(s)
        for f in s.faults:
            if f.origin != "random":
                continue
            if isinstance(f, Kill) and ends.get(process_of(f.target)):
                assert f.incarnation is not None and f.incarnation > max(ends[process_of(f.target)]), (seed, f)
            if isinstance(f, Powercut) and ends:
                assert all((f.after or {}).get(p, 0) > max(incs) for p, incs in ends.items()), (seed, f)
        # failpoint incarnations never collide: one ending failpoint per incarnation
        for incs in ends.values():
            assert len(incs) == len(set(incs)), (seed, ends)


def test_every_failpoint_has_a_pace():
    from harness.faults.points import POINT_PACE

    assert set(POINT_PACE) == set(POINTS)


def test_a_chain_of_failpoint_crashes_is_cut_to_fit_the_workload():
    """checkpoint-k4 seed 2 used to plan a crash at checkpoint 8 (of 9) and then one at the 4th checkpoint
    of the next incarnation, which the work left could not reach (INCONCLUSIVE): now its 1st."""
    s = make_schedule(load_scenario("checkpoint-k4"), 2)
    assert [(f.point, f.hit, f.incarnation) for f in s.failpoints()] == [
        ("consumer.mid_checkpoint_replace", 8, 0), ("consumer.after_checkpoint_before_ack", 1, 1)]


@pytest.mark.parametrize("path", scenario_paths(), ids=lambda p: p.stem)
def test_failpoint_chains_fit_in_the_workload(path):
    from harness.faults.points import samples_per_hit

    sc = load_scenario(str(path))
    ranks = sc.topology["consumer_ranks"]
    for seed in range(20):
        at = {}
        for f in make_schedule(sc, seed).failpoints():
            per = samples_per_hit(f.point, sc.workload, ranks)
            end = at.get(f.target, 0) + f.hit * per
            if f.origin == "random" and f.hit > 1:
                assert end <= sc.workload["samples"] - per, (seed, f, at)
            if f.ends():
                at[f.target] = end
