"""Campaigns on the local executor: usage errors, statuses, JUnit XML, unique dirs, interrupts, no orphans."""

import contextlib
import copy
import json
import os
import signal
import xml.etree.ElementTree as ET

import pytest

from harness.campaign import exit_code, parse_seeds, run_campaign, summarize, write_junit
from harness.cli import main
from harness.scenario import load_scenario

from .campaign_helpers import (
    campaign_dirs,
    finish,
    kill_leftovers,
    leftovers,
    start_campaign,
    wait_no_leftovers,
    wait_running_trial,
)


@pytest.mark.parametrize("args, cause", [
    (["--seeds", "0"], "--seeds '0' selects no seeds"),
    (["-j", "0"], "-j/--jobs 0"),
    (["-j", "-4"], "-j/--jobs -4"),
    (["--seeds", "9..1"], "bad --seeds '9..1'"),
    (["--seeds", "x"], "bad --seeds 'x'"),
    (["--address", "127.0.0.1:6379"], "--address '127.0.0.1:6379' needs --executor ray"),
    (["--junit", "/nonexistent-dir/j.xml"], "--junit '/nonexistent-dir/j.xml'"),
    (["--max-retries", "-1", "--executor", "ray"], "--max-retries -1"),
])
def test_bad_campaign_usage_exits_2_naming_the_option(tmp_path, capsys, args, cause):
    assert main(["campaign", "baseline", "--reports", str(tmp_path / "r"), *args]) == 2
    assert cause in capsys.readouterr().err
    assert campaign_dirs(tmp_path / "r") == []  # nothing ran, nothing was created


def test_parse_seeds_forms():
    assert parse_seeds("2..4") == [2, 3, 4]
    assert parse_seeds("3") == [0, 1, 2]
    assert parse_seeds("5,1,5") == [5, 1]
    with pytest.raises(ValueError, match="out of range"):
        parse_seeds(f"{2 ** 64}..{2 ** 64 + 1}")


def _row(sc, seed, status, **kw):
    r = {"scenario": sc, "seed": seed, "status": status, "as_expected": status == "as_expected",
         "outcome": kw.pop("outcome", "completed"), "violated": [], "wall_s": 1.0, "report_dir": None,
         "faults": {"planned": 2, "landed": 2 if status != "inconclusive" else 1}}
    r.update(kw)
    return r


def test_trials_that_ran_niced_are_counted_and_the_summary_says_how_to_fix_it():
    from harness.campaign import summary_table

    rows = [_row("a", 0, "as_expected", niceness=15), _row("a", 1, "inconclusive", niceness=15),
            _row("a", 2, "as_expected", niceness=0), _row("a", 3, "harness_error")]
    s = summarize(rows)
    assert s["niced"] == {"trials": 2, "niceness": 15}
    assert "NOTE: 2 of 4 trials ran at niceness 15" in summary_table(s)
    assert "RAY_worker_niceness=0" in summary_table(s)
    calm = summarize([_row("a", 0, "as_expected", niceness=0), _row("a", 1, "as_expected")])
    assert calm["niced"] == {"trials": 0, "niceness": 0} and "niceness" not in summary_table(calm)


def test_summary_counts_exit_code_and_junit_round_trip(tmp_path):
    rows = [_row("a", 0, "as_expected"), _row("a", 1, "unexpected", violated=["P1"]),
            _row("a", 2, "inconclusive"), _row("b", 0, "harness_error", error="boom"), _row("b", 1, "incomplete")]
    s = summarize(rows)
    (a, b) = s["rows"]
    assert (a["as_expected"], a["unexpected"], a["inconclusive"], a["faults_planned"], a["faults_landed"]) == \
        (1, 1, 1, 6, 5)
    assert (b["harness_error"], b["incomplete"], b["failing_seeds"]) == (1, 1, [0, 1])
    assert exit_code(s) == 1
    assert exit_code(summarize([rows[0], rows[2]])) == 3
    assert exit_code(summarize([rows[0]])) == 0
    assert exit_code({**summarize([rows[0]]), "interrupted": True}) == 3
    path = tmp_path / "j.xml"
    write_junit(str(path), rows, s)
    root = ET.parse(path).getroot()
    cases = {c.get("name"): c for c in root.iter("testcase")}
    assert len(cases) == 5 and root.get("tests") == "5" and root.get("failures") == "1" and root.get("errors") == "3"
    assert cases["a seed 0"].find("failure") is None and cases["a seed 0"].find("error") is None
    assert cases["a seed 1"].find("failure").get("type") == "unexpected"
    assert {cases[n].find("error").get("type") for n in ("a seed 2", "b seed 0", "b seed 1")} == \
        {"inconclusive", "harness_error", "incomplete"}
    assert "boom" in cases["b seed 0"].find("error").text


@pytest.mark.slow
def test_campaign_statuses_kept_reports_and_junit(tmp_path):
    base = load_scenario("baseline")
    wrong = copy.deepcopy(base)
    wrong.name = "baseline-expects-p1"
    wrong.expect["violates"] = ["P1"]  # a clean run is then unexpected: the harness "missed" the bug
    junit = tmp_path / "out.xml"
    s = run_campaign([base, wrong], [0], jobs=2, reports_dir=str(tmp_path / "r"), junit=str(junit), progress=False)
    assert (s["runs"], s["as_expected"], s["unexpected"]) == (2, 1, 1)
    assert exit_code(s) == 1
    cdir = s["campaign_dir"]
    with open(os.path.join(cdir, "summary.json")) as f:
        runs = {r["scenario"]: r for r in json.load(f)["runs"]}
    assert runs["baseline"]["report_dir"] is None  # as expected: removed
    kept = runs["baseline-expects-p1"]["report_dir"]
    assert kept and os.path.isfile(os.path.join(kept, "result.json"))
    assert os.path.isfile(os.path.join(kept, "report.md"))
    assert sorted(os.listdir(cdir)) == sorted(["summary.json", "summary.md", os.path.basename(kept)])
    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    assert cases["baseline-expects-p1 seed 0"].find("failure") is not None
    assert cases["baseline seed 0"].find("failure") is None


@pytest.mark.slow
def test_two_campaigns_at_once_get_their_own_dirs(tmp_path):
    reports = tmp_path / "r"
    procs = [start_campaign(["baseline", "--seeds", "0..0", "-j", "1"], reports) for _ in range(2)]
    outs = [finish(p, 600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    dirs = campaign_dirs(reports)
    assert len(dirs) == 2
    for d in dirs:
        with open(os.path.join(d, "summary.json")) as f:
            s = json.load(f)["summary"]
        assert s["campaign_dir"] == d and s["runs"] == 1 and s["as_expected"] == 1
    assert {d for d in dirs} == {o[0].strip().rsplit(" ", 1)[-1] for o in outs}


@contextlib.contextmanager
def running_campaign(reports):
    """A kill-random campaign over 20 seeds, seen running a trial: (process, campaign dir, processes seen).

    On the way out the campaign is killed if still running, and whatever it left is killed too.
    """
    p = start_campaign(["kill-random", "--seeds", "0..19", "-j", "2"], reports)
    cdir, seen = None, {}
    try:
        cdir, seen = wait_running_trial(p, reports)
        yield p, cdir, seen
    finally:
        if p.poll() is None:
            p.kill()
        kill_leftovers(cdir, seen)


@pytest.mark.slow
def test_sigkilled_campaign_leaves_no_process(tmp_path):
    with running_campaign(tmp_path / "r") as (p, cdir, seen):
        assert len(leftovers(cdir, seen)) >= 4  # the check sees the campaign's processes while it runs
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
        assert wait_no_leftovers(cdir, seen) == {}, "processes outlived the SIGKILLed campaign"


@pytest.mark.slow
def test_sigtermed_campaign_writes_partial_summary_and_marks_incomplete(tmp_path):
    with running_campaign(tmp_path / "r") as (p, cdir, seen):
        p.send_signal(signal.SIGTERM)
        out, err = finish(p, 120)
        left = wait_no_leftovers(cdir, seen)
    assert left == {}
    assert p.returncode == 3, out + err
    assert "INTERRUPTED (SIGTERM)" in out
    with open(os.path.join(cdir, "summary.json")) as f:
        data = json.load(f)
    s, runs = data["summary"], data["runs"]
    assert s["interrupted"] is True and s["signal"] == "SIGTERM"
    assert sorted(r["seed"] for r in runs) == list(range(20))  # every seed accounted for
    assert s["incomplete"] >= 1 and s["incomplete"] + s["as_expected"] + s["unexpected"] + s["inconclusive"] \
        + s["harness_error"] == 20
    assert s["unexpected"] == 0  # an interrupted run never looks like a failing seed
    for d in os.listdir(cdir):
        rd = os.path.join(cdir, d)
        if os.path.isdir(rd):
            assert os.path.exists(os.path.join(rd, "result.json")) or \
                os.path.exists(os.path.join(rd, "INCOMPLETE.json")), rd
    assert any(os.path.exists(os.path.join(cdir, d, "INCOMPLETE.json")) for d in os.listdir(cdir))


def test_map_trials_local_yields_every_item_and_reports_lost_ones():
    from harness.executors import TrialLost, map_trials

    assert sorted(map_trials(abs, [-3, 1, -2], "local", jobs=2)) == [(-3, 3), (-2, 2), (1, 1)]
    out = dict(map_trials(os._exit, [7], "local", jobs=1))  # the worker dies under the trial
    assert isinstance(out[7], TrialLost) and "lost" in out[7].reason
