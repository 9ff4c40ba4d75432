"""Power cuts in the process engine (issue 12): the fault in scenarios, the cut itself, the zoo.

* scenario syntax: `powercut` faults (explicit, random, failpoint action) and
  `faults.powercut_mode`, with errors that name the bad value; the same seed
  gives the same schedule;
* no compiler: a scenario with power cuts is refused with exit 2 before
  anything is written;
* the reference survives power cuts (a few seeds of powercut-random and
  powercut-failpoints), the result has its `powerloss` block, the journal is
  removed;
* each power-loss zoo member (a durability bug the cuts exposed, unfixed) is
  caught by the property it violates;
* the in-memory store server loses its ledger in a cut: the run fails closed.
"""

import glob
import json
import os

import pytest

from harness.exit_codes import UsageError
from harness.faults import Failpoint, Kill, make_schedule
from harness.history import load_merged
from harness.process_engine.runner import run_scenario
from harness.reports.render import timeline_series
from harness.scenario import ScenarioError, load_scenario, scenario_from_dict
from tests.pipeline_zoo import POWERLOSS_ZOO, scenario_for_powerloss


def _sc(faults, **extra):
    d = {"name": "pc", "faults": faults, "workload": {"samples": 80}}
    d.update(extra)
    return scenario_from_dict(d, "test")


# -- scenario syntax ------------------------------------------------------------------

def test_powercut_fault_kinds_parse_and_schedule_deterministically():
    sc = _sc({"powercut_mode": "torn",
              "explicit": [{"kind": "powercut", "at_published": 10},
                           {"kind": "failpoint", "target": "consumer", "point": "store.mid_ack_txn",
                            "action": "powercut", "hit": 2}],
              "random": {"count": 6, "kinds": ["kill", "powercut"]}})
    assert sc.powercut_mode == "torn" and sc.has_powercut
    a, b = make_schedule(sc, 7), make_schedule(sc, 7)
    assert a == b
    assert a.faults[0].target == "all"
    assert a.has_powercut
    assert {f.kind for f in a.timed()} <= {"kill", "powercut"}
    again = scenario_from_dict(__import__("tomllib").loads(sc.to_toml()), "roundtrip")
    assert again.powercut_mode == "torn" and again.explicit_faults == sc.explicit_faults
    assert not _sc({"random": {"count": 2, "kinds": ["kill"]}}).has_powercut


def test_a_failpoint_powercut_moves_every_process_to_its_next_incarnation():
    sc = _sc({"random": {"count": 4, "kinds": ["failpoint"], "points": ["consumer.*", "producer.*"],
                         "actions": ["powercut"]}})
    incs = [(f.target, f.incarnation) for f in make_schedule(sc, 3).faults]
    assert [i for _, i in incs] == [0, 1, 2, 3], incs


@pytest.mark.parametrize("faults,key", [
    ({"powercut_mode": "torm"}, "faults.powercut_mode"),
    ({"explicit": [{"kind": "powercut", "target": "producer", "at_s": 1}]}, "target"),
    ({"explicit": [{"kind": "powercut"}]}, "trigger"),
    ({"explicit": [{"kind": "powercut", "at_s": 1, "duration_s": 1}]}, "duration_s"),
    ({"random": {"count": 1, "kinds": ["blackout"]}}, "faults.random.kinds"),
])
def test_bad_powercut_settings_are_named(faults, key):
    with pytest.raises(ScenarioError) as e:
        _sc(faults)
    assert repr(key) in str(e.value), str(e.value)


def test_without_a_compiler_a_powercut_scenario_is_refused_with_exit_2(monkeypatch, tmp_path, capsys):
    from harness import cli
    from harness.powerloss import build

    monkeypatch.setattr(build, "_cached", None)
    monkeypatch.setattr(build, "compiler", lambda: None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    reports = tmp_path / "reports"
    with pytest.raises(UsageError) as e:
        run_scenario("powercut-random", 0, reports_dir=str(reports))
    assert "C compiler" in str(e.value) and "powercut" in str(e.value)
    assert not reports.exists() or not os.listdir(reports)
    assert cli.main(["run", "powercut-failpoints", "--seed", "0", "--reports", str(reports)]) == 2
    assert "C compiler" in capsys.readouterr().err
    # a scenario without power cuts still runs its checks without the tracer
    from harness.validation import check_for_run

    check_for_run(load_scenario("kill-random"), 0)


# -- the reference under power cuts -------------------------------------------------

@pytest.mark.parametrize("scenario,seed", [("powercut-random", 0), ("powercut-random", 3),
                                           ("powercut-failpoints", 0), ("powercut-failpoints", 5)])
@pytest.mark.slow
def test_the_reference_survives_power_cuts(scenario, seed, tmp_path):
    r = run_scenario(scenario, seed, reports_dir=str(tmp_path))
    assert r.as_expected, (r.verdict, r.faults, r.report_dir)
    with open(os.path.join(r.report_dir, "result.json")) as f:
        result = json.load(f)
    pl = result["powerloss"]
    assert pl["cuts"] >= 1 and len(pl["per_cut"]) == pl["cuts"]
    assert pl["unsynced_writes_dropped"] == sum(c["unsynced_writes_dropped"] for c in pl["per_cut"])
    events = load_merged(os.path.join(r.report_dir, "history.jsonl"))
    cuts = [e for e in events if e.get("proc") == "supervisor" and e.get("ev") == "powercut"]
    assert len(cuts) == pl["cuts"]
    for c in cuts:  # every process killed by the cut ended, and its successor started
        for name_inc in c["killed"]:
            name, inc = name_inc.split("#")
            assert any(e.get("ev") == "exited" and e["target"] == name and e["target_inc"] == int(inc)
                       for e in events)
            assert any(e.get("ev") == "spawn" and e["target"] == name and e["target_inc"] == int(inc) + 1
                       for e in events)
    assert timeline_series(events)["powercuts"]
    assert "## Power cuts" in open(os.path.join(r.report_dir, "report.md")).read()
    assert not glob.glob(os.path.join(r.report_dir, "powerloss.journal*"))


@pytest.mark.slow
def test_a_power_cut_loses_the_inmemory_ledger_and_the_run_fails_closed(tmp_path):
    sc = scenario_from_dict({"name": "pc-inmemory", "store": {"backend": "inmemory"},
                             "workload": {"samples": 120},
                             "faults": {"explicit": [{"kind": "powercut", "at_consumed": 40}]},
                             "expect": {"outcome": ["fail_closed"]}}, "test")
    r = run_scenario(sc, 0, reports_dir=str(tmp_path))
    assert r.outcome == "fail_closed" and r.as_expected, (r.verdict, r.faults, r.report_dir)
    assert r.faults["landed"] == 1


# -- the power-loss zoo -----------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(POWERLOSS_ZOO))
def test_the_process_engine_catches_each_durability_bug(name, tmp_path):
    m = POWERLOSS_ZOO[name]
    r = run_scenario(scenario_for_powerloss(m), 0, reports_dir=str(tmp_path))
    assert r.faults["landed"] == r.faults["planned"], r.faults
    if m.violates:
        assert r.properties[m.violates]["valid"] is False, (r.outcome, r.report_dir)
    if m.outcome:
        assert r.outcome == m.outcome, (r.outcome, r.report_dir)
    assert r.as_expected, (r.verdict, r.report_dir)


@pytest.mark.slow
def test_a_power_cut_report_replays_and_shrinks_to_its_cut(tmp_path):
    from harness import cli
    from harness.shrink import shrink_report

    m = POWERLOSS_ZOO["features_rename_without_dir_fsync"]
    sc = scenario_for_powerloss(m)
    # The cut lands right after the producer's sixth commit, whose blobs were just renamed: no timing
    # decides whether a later directory fsync made them durable first (a timed cut did, under load).
    # The consumer is slow, so its releases (each fsyncs the blobs' directory) are few.
    cut = Failpoint(target="producer", point="producer.after_commit_before_publish", action="powercut", hit=6,
                    incarnation=0)
    sc.explicit_faults[:] = [Kill(target="consumer", at_consumed=4), cut]
    sc.workload = dict(sc.workload, consumer_step_delay_s=0.3)
    sc.expect["violates"] = []  # expected valid: the bug makes the run unexpected, which shrink needs
    r = run_scenario(sc, 0, reports_dir=str(tmp_path / "runs"), render=False)
    assert not r.as_expected and m.violates in r.verdict["violated"], r.verdict
    assert cli.main(["replay", r.report_dir, "--reports", str(tmp_path / "replays")]) == 1
    out = shrink_report(r.report_dir, tries=1, out=str(tmp_path / "shrunk.toml"), say=lambda s: None)
    shrunk = load_scenario(str(tmp_path / "shrunk.toml"))
    assert [(f.kind, getattr(f, "action", None)) for f in shrunk.explicit_faults] == [("failpoint", "powercut")], \
        (out, shrunk.explicit_faults)


def test_a_traced_process_is_stopped_for_a_kill_only_outside_the_tracer_gap():
    import signal
    import subprocess
    import sys
    import time

    from harness.powerloss.build import tracer_library
    from harness.process_engine.powercut import in_tracer_gap, stop_outside_gap
    from harness.process_engine.supervisor import Proc, child_preexec
    from reference_impl.procutil import proc_state

    lib = tracer_library()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], preexec_fn=child_preexec,
                             env=dict(os.environ, LD_PRELOAD=lib))
    try:
        time.sleep(0.3)  # in nanosleep: no mutating call, no tracer code
        p = Proc("producer", 0, child, os.devnull)
        assert stop_outside_gap(p, [], lib)
        assert proc_state(child.pid) == "T"
        assert not in_tracer_gap(child.pid, lib)
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=10)


def _ev(line, proc, ev, **kw):
    return dict(proc=proc, inc=kw.pop("inc", 0), seq=line, t=float(line), mono=float(line), ev=ev, line=line, **kw)


@pytest.mark.parametrize("after_cut,valid", [(64, True), (72, True), (56, False)])
def test_p3_lets_a_power_cut_revert_the_sidecar_to_its_durable_value_never_lower(after_cut, valid):
    from harness.checkers import p3_backpressure

    history = [
        _ev(1, "consumer", "consumed", consumed=64),  # reported: replaced and directory fsynced
        _ev(2, "producer", "publish", ids=["a"] * 8, published=80, consumed=72, in_flight_before=0),  # not durable
        _ev(3, "supervisor", "powercut", fault=0, killed=["producer#0", "consumer#0"]),
        _ev(4, "producer", "publish", inc=1, ids=["b"] * 8, published=88, consumed=after_cut, in_flight_before=0),
    ]
    final = {"watermarks": {"high": 64, "low": 32, "publish_batch": 8}, "channel_ids": ["x"] * 88,
             "outcome": "failed", "consumed": None}
    r = p3_backpressure.check(history, final)
    assert r.valid is valid, [a.message for a in r.anomalies]
    without_cut = [e for e in history if e["ev"] != "powercut"]
    if after_cut < 72:  # the same readings without a power cut between them go backwards
        assert p3_backpressure.check(without_cut, final).valid is False


def test_a_power_cut_in_a_data_parallel_run_kills_and_restarts_the_ranks(tmp_path):
    sc = scenario_from_dict({"name": "pc-dp2", "topology": {"consumer_ranks": 2}, "workload": {"samples": 96},
                             "faults": {"explicit": [
                                 {"kind": "kill", "target": "consumer.rank1", "at_consumed": 16},
                                 {"kind": "failpoint", "target": "consumer", "point": "rank.after_allreduce_before_ack",
                                  "action": "powercut", "hit": 2, "incarnation": 1, "rank": 0}]}}, "test")
    r = run_scenario(sc, 0, reports_dir=str(tmp_path), render=False)
    assert r.as_expected and r.faults["landed"] == 2, (r.verdict, r.faults, r.report_dir)
    events = load_merged(os.path.join(r.report_dir, "history.jsonl"))
    cut = [e for e in events if e.get("ev") == "powercut"]
    assert cut and cut[0]["cause"].startswith("failpoint in consumer#1")
    assert any(e.get("proc", "").startswith("consumer.rank") and e.get("inc") == 2 for e in events)


@pytest.mark.parametrize("name", sorted(POWERLOSS_ZOO))
def test_the_fixed_reference_passes_each_zoo_schedule(name, tmp_path):
    sc = scenario_for_powerloss(POWERLOSS_ZOO[name])
    sc.topology["variant"] = ""
    sc.expect.update(violates=[], outcome=["completed"])
    r = run_scenario(sc, 0, reports_dir=str(tmp_path), render=False)
    assert r.as_expected and r.outcome == "completed" and r.valid, (r.verdict, r.report_dir)
