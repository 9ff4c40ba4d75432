"""The bad-input corpus (issue 16): each case asserts the exit code and that stderr names the cause.

Exit codes (harness/exit_codes.py): 2 usage or bad input, 3 the harness or
its environment could not finish. Most cases call `main()` in-process (fast);
a few go through `python -m harness` to cover the real entry point.
"""

import errno
import json
import os
import subprocess
import sys

import pytest

from harness.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = '[workload]\nsamples = 16\n[expect]\ntimeout_s = 120.0\n'


def _scenario(tmp_path, body: str, name: str = "bad") -> str:
    p = tmp_path / f"{name}.toml"
    p.write_text(f'name = "{name}"\n' + body)
    return str(p)


def _run(argv, capsys):
    code = main(argv)
    return code, capsys.readouterr().err


def _cli(*args, timeout=120):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, env=env,
                       timeout=timeout, cwd=REPO)
    return r.returncode, r.stderr


# -- item 4: bad input slips past validation ---------------------------------------------------

@pytest.mark.parametrize("body,fragments", [
    ('[workload]\nsamples = 1000000000\n[expect]\ntimeout_s = 5.0\n', ["workload.samples", "1000000000"]),
    ('[topology]\nconsumer_ranks = 1000\n', ["topology.consumer_ranks", "1000"]),
    ('[expect]\ntimeout_s = nan\n', ["expect.timeout_s", "nan"]),
    ('[expect]\ntimeout_s = -1.0\n', ["expect.timeout_s", "-1.0"]),
    ('[workload]\nproducer_delay_s = -1.0\n', ["workload.producer_delay_s", "-1.0"]),
    ('[topology]\nvariant = "nosuch:x"\n', ["topology.variant", "nosuch"]),
    ('[faults.random]\ncount = 2\nprogress = [-5.0, 50.0]\n', ["faults.random.progress", "-5.0"]),
    ('[faults.random]\ncount = 2\nkinds = ["pause"]\npause_s = [-1.0, -0.5]\n', ["faults.random.pause_s", "-1.0"]),
    ('[[faults.explicit]]\nkind = "kill"\ntarget = "store_server"\nat_s = 0.5\n',
     ["store_server", "sqlite", "inmemory"]),
    ('[[faults.explicit]]\nkind = "kill"\ntarget = "consumer.rank5"\nat_s = 0.5\n',
     ["consumer.rank5", "consumer_ranks = 1"]),
], ids=["samples-1e9", "ranks-1000", "timeout-nan", "timeout-negative", "delay-negative", "variant-nosuch",
        "progress-out-of-range", "pause-negative", "store-server-on-sqlite", "rank5-of-one"])
def test_bad_scenario_field_exits_2_naming_it(tmp_path, capsys, body, fragments):
    reports = tmp_path / "reports"
    code, err = _run(["run", _scenario(tmp_path, body), "--reports", str(reports)], capsys)
    assert code == 2, err
    for frag in fragments:
        assert frag in err, (frag, err)
    # item 6a: a rejected scenario leaves nothing behind (no empty work/history)
    assert not reports.exists() or not os.listdir(reports)


def test_seed_beyond_64_bits_exits_2(capsys):
    code, err = _run(["run", "baseline", "--seed", str(2 ** 64)], capsys)
    assert code == 2 and "--seed" in err and str(2 ** 64) in err


def test_backend_that_is_not_a_store_exits_2(capsys):
    code, err = _run(["run", "baseline", "--backend", "os:getcwd"], capsys)
    assert code == 2 and "os:getcwd" in err, err


def test_campaign_backend_is_checked_before_any_run(tmp_path, capsys):
    reports = tmp_path / "reports"
    code, err = _run(["campaign", "baseline", "--seeds", "0..1", "--backend", "nosuch:Thing",
                      "--reports", str(reports)], capsys)
    assert code == 2 and "nosuch" in err, err
    assert not reports.exists()


# -- item 5: OS errors, named -------------------------------------------------------------------

def test_scenario_path_that_is_a_directory(tmp_path, capsys):
    code, err = _run(["run", str(tmp_path)], capsys)
    assert code == 2 and str(tmp_path) in err and "directory" in err, err


def test_reports_under_a_file_is_rejected_before_the_run(tmp_path, capsys):
    f = tmp_path / "plain-file"
    f.write_text("x")
    code, err = _run(["run", "baseline", "--reports", str(f / "x")], capsys)
    assert code == 2 and str(f) in err and "not a directory" in err, err


def test_replay_without_schedule_names_the_file(tmp_path, capsys):
    d = _report_dir(tmp_path)
    (d / "schedule.json").unlink()
    code, err = _run(["replay", str(d)], capsys)
    assert code == 2 and str(d / "schedule.json") in err and "does not exist" in err, err


def test_simulate_and_bench_json_paths_checked_before_the_work(tmp_path):
    f = tmp_path / "plain-file"
    f.write_text("x")
    target = str(f / "out.json")
    code, err = _cli("simulate", "--json", target, "--examples", "1")
    assert code == 2 and target in err and "not a directory" in err, err
    code, err = _cli("bench", "--json", target, "--only", "check")
    assert code == 2 and target in err and "not a directory" in err, err


def _tiny(tmp_path) -> str:
    return _scenario(tmp_path, SMALL, "tiny")


@pytest.mark.slow
def test_full_disk_simulated_exits_3_names_the_path_and_cleans_up(tmp_path, capsys, monkeypatch):
    import harness.history as history

    def full(events, path):
        with open(path, "w") as f:
            f.write("{partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr(history, "write_merged", full)
    reports = tmp_path / "reports"
    code, err = _run(["run", _tiny(tmp_path), "--reports", str(reports), "--quiet"], capsys)
    assert code == 3, err
    assert "No space left on device" in err and "history.jsonl" in err and str(reports) in err, err
    assert os.listdir(reports) == []  # the half-written report is removed


@pytest.mark.slow
@pytest.mark.parametrize("work_root", ["run-dir", "small"])
def test_full_disk_on_a_small_tmpfs(tmp_path, monkeypatch, work_root):
    # the run dir's disk fills (the work dir inside it), or the work dir's root fills (reports elsewhere)
    from harness.process_engine.work_dir import ROOT_ENV

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"mount -t tmpfs not permitted here: {r.stderr.decode().strip()}")
    try:
        full = mnt / ("r" if work_root == "run-dir" else "w")
        full.mkdir()
        reports = mnt / "r" if work_root == "run-dir" else tmp_path / "r"
        monkeypatch.setenv(ROOT_ENV, "run-dir" if work_root == "run-dir" else str(full))
        code, err = _cli("run", "baseline", "--reports", str(reports), "--quiet", timeout=300)
        assert code == 3, err
        assert "No space left on device" in err and str(reports) in err, err
        assert os.listdir(reports) == [] and os.listdir(full) == []
        st = os.statvfs(mnt)
        assert st.f_bfree * st.f_frsize > 300 * 1024  # what it half-wrote was removed: the disk is not left full
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


# -- item 8: small things -------------------------------------------------------------------------

def test_json_and_utf8_errors_name_the_file(tmp_path, capsys):
    d = tmp_path / "report"
    d.mkdir()
    (d / "result.json").write_text("{not json")
    code, err = _run(["report", str(d)], capsys)
    assert code == 2 and str(d / "result.json") in err and "not valid JSON" in err, err
    (d / "result.json").write_bytes(b'{"seed": "\xff"}')
    code, err = _run(["replay", str(d)], capsys)
    assert code == 2 and str(d / "result.json") in err and "UTF-8" in err, err
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'name = "caf\xe9"\n')
    code, err = _run(["run", str(bad)], capsys)
    assert code == 2 and str(bad) in err and "UTF-8" in err, err


def test_shrink_tries_0_and_bench_only_nosuch_rejected(tmp_path, capsys):
    code, err = _run(["shrink", str(tmp_path), "--tries", "0"], capsys)
    assert code == 2 and "--tries" in err, err
    code, err = _run(["bench", "--only", "nosuch"], capsys)
    assert code == 2 and "'nosuch'" in err and "restart" in err, err


def test_unknown_option_prints_the_subcommands_usage(capsys):
    code, err = _run(["run", "--bogus"], capsys)
    assert code == 2
    assert "usage: python -m harness run" in err and "--bogus" in err, err


# -- the policy itself: interruptions and bugs are the harness's failures (3), never 1 ------------

def test_interrupt_and_internal_error_exit_3(capsys, monkeypatch):
    import harness.process_engine.runner as runner

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_scenario", interrupted)
    code, err = _run(["run", "baseline"], capsys)
    assert code == 3 and "interrupted" in err

    def bug(*a, **k):
        raise ValueError("a bug in the harness")

    monkeypatch.setattr(runner, "run_scenario", bug)
    code, err = _run(["run", "baseline"], capsys)
    assert code == 3 and "harness error: internal error: ValueError: a bug in the harness" in err


# -- output names against the file system's limits ---------------------------------------------

def test_scenario_name_too_long_for_a_file_name_exits_2(tmp_path, capsys):
    reports = tmp_path / "reports"
    path = str(tmp_path / "long.toml")
    with open(path, "w") as f:
        f.write(f'name = "{"n" * 300}"\n' + SMALL)
    code, err = _run(["run", path, "--reports", str(reports), "--quiet"], capsys)
    assert code == 2 and f"{path}: name" in err and "NAME_MAX" in err and "at most" in err, err
    assert not reports.exists() or not os.listdir(reports)
    code, err = _run(["campaign", path, "--seeds", "0..1", "--reports", str(reports)], capsys)
    assert code == 2 and "NAME_MAX" in err, err
    assert not reports.exists() or not os.listdir(reports)  # no campaign folder either


def test_reports_dir_too_deep_for_path_max_exits_2(tmp_path, capsys):
    # 4,050 characters whatever tmp_path's own length: creatable (under PATH_MAX, 4,096), but no
    # run dir fits under it
    deep = tmp_path
    while len(str(deep)) + 201 < 4000:
        deep = deep / ("d" * 200)
    deep = deep / ("d" * (4049 - len(str(deep))))
    assert len(str(deep)) == 4050
    os.makedirs(deep)
    code, err = _run(["run", _tiny(tmp_path), "--reports", str(deep), "--quiet"], capsys)
    assert code == 2 and "--reports" in err and "PATH_MAX" in err, err
    assert os.listdir(deep) == []


# -- a run that cannot finish: what it leaves ----------------------------------------------------

def test_disk_full_during_the_run_removes_the_run_dir(tmp_path, capsys, monkeypatch):
    """Injected (honestly: a monkeypatched step, not a real disk): ENOSPC raised while the run is
    under way, after the run dir holds files; the small-tmpfs test below fills a real disk."""
    import harness.process_engine.runner as runner

    def full(sc, cfg, *a, **k):
        path = os.path.join(cfg.workdir, "filler")
        with open(path, "wb") as f:
            f.write(b"x" * 100000)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr(runner, "_final_state", full)
    reports = tmp_path / "reports"
    code, err = _run(["run", _tiny(tmp_path), "--reports", str(reports), "--quiet"], capsys)
    assert code == 3, err
    assert "No space left on device" in err and "filler" in err and "removed the half-written run dir" in err, err
    assert os.listdir(reports) == []


def test_other_failure_during_the_run_names_the_run_dir_it_leaves(tmp_path, capsys, monkeypatch):
    import harness.process_engine.runner as runner
    from harness.exit_codes import HarnessError

    def broken(*a, **k):
        raise HarnessError("the final state could not be read")

    monkeypatch.setattr(runner, "_final_state", broken)
    reports = tmp_path / "reports"
    code, err = _run(["run", _tiny(tmp_path), "--reports", str(reports), "--quiet"], capsys)
    (left,) = os.listdir(reports)
    assert code == 3 and "the final state could not be read" in err, err
    assert f"the run dir {reports / left}" in err and "left for diagnosis" in err, err


@pytest.fixture
def small_tmpfs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()

    def mount(size: str):
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True)
        if r.returncode != 0:
            pytest.skip(f"mount -t tmpfs not permitted here: {r.stderr.decode().strip()}")
        return mnt

    yield mount
    subprocess.run(["umount", str(mnt)], capture_output=True)


def _free(path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_power_cut_run_without_room_for_its_journal_is_refused_up_front(small_tmpfs):
    mnt = small_tmpfs("3m")
    code, err = _cli("run", "powercut-random", "--reports", str(mnt / "r"), "--quiet", timeout=300)
    assert code == 2 and "--reports" in err and str(mnt / "r") in err and "power-loss journal" in err, err
    assert "MiB are free" in err and not os.path.exists(mnt / "r")


def test_disk_filling_during_a_power_cut_run_removes_the_run_dir(small_tmpfs, capsys, monkeypatch):
    """A real full disk in the middle of a power-cut run: once the run has passed its checks, a filler
    file leaves 1 MiB of a 70 MiB tmpfs; the baseline, journal and report then hit ENOSPC."""
    from harness.process_engine.powercut import PowerLoss

    mnt = small_tmpfs("70m")
    arm = PowerLoss.arm

    def fill_then_arm(self):
        if not os.path.exists(mnt / "filler"):
            with open(mnt / "filler", "wb") as f:
                f.write(b"\0" * (_free(mnt) - (1 << 20)))
        return arm(self)

    monkeypatch.setattr(PowerLoss, "arm", fill_then_arm)
    code, err = _run(["run", "powercut-random", "--reports", str(mnt / "r"), "--quiet"], capsys)
    assert code == 3, err
    assert "No space left on device" in err and str(mnt / "r") in err and "removed" in err, err
    assert os.listdir(mnt / "r") == []
    assert _free(mnt) >= 1 << 20  # what the run wrote is gone: only the filler fills the disk


# -- files of a report dir that a user may have edited: replay, shrink, report --------------------

def _report_dir(tmp_path, result=None, schedule=None, history=None):
    d = tmp_path / "report"
    d.mkdir()
    base = {"scenario": "tiny", "seed": 0, "outcome": "completed", "backend": "sqlite", "wall_s": 1.0,
            "replay_command": "python -m harness replay x",
            "verdict": {"as_expected": True, "violated": [], "expected": {"violates": [], "outcome": ["completed"]}},
            "properties": {"P1": {"valid": True, "anomalies": []}}}
    (d / "result.json").write_text(json.dumps(dict(base, **(result or {}))))
    (d / "schedule.json").write_text(json.dumps(schedule if schedule is not None else
                                                {"scenario": "tiny", "seed": 0, "faults": []}))
    (d / "scenario.toml").write_text('name = "tiny"\n' + SMALL)
    (d / "history.jsonl").write_text(history if history is not None else '{"ev": "spawn"}\n')
    return d


def test_a_valid_report_dir_reads_back(tmp_path):
    from harness.run_dir import check_history, load_run_dir

    rd = load_run_dir(str(_report_dir(tmp_path, schedule={"seed": 0, "faults": [
        {"kind": "kill", "target": "producer", "at_s": 1.0}]})))
    assert rd.seed == 0 and [f.kind for f in rd.schedule.faults] == ["kill"] and check_history(rd.path) == 1


@pytest.mark.parametrize("cmd", ["replay", "shrink"])
@pytest.mark.parametrize("schedule,fragments", [
    ({"faults": [{"kind": "nuke", "target": "producer"}]}, ["faults[0]", "'kind'", "nuke"]),
    ({"faults": [{"kind": "kill", "target": "producer"}]}, ["faults[0]", "at_s"]),
    ({"faults": [7]}, ["faults[0]", "7"]),
    ({"faults": [{"kind": "kill", "target": "nobody", "at_s": 1.0}]}, ["faults[0]", "'target'", "nobody"]),
    ({"faults": [{"kind": "kill", "target": "consumer.rank3", "at_s": 1.0}]},
     ["faults[0].target", "consumer.rank3", "consumer_ranks = 1"]),
    ({"faults": [{"kind": "kill", "target": "store_server", "at_s": 1.0}]}, ["faults[0].target", "store_server"]),
    ({"seed": 0}, ["'faults'"]),
    ([], ["'faults'"]),
], ids=["kind-nuke", "kill-no-trigger", "fault-not-a-table", "target-nobody", "rank-not-in-topology",
        "store-server-on-sqlite", "no-faults", "a-list"])
def test_edited_schedule_exits_2_naming_the_file_and_the_fault(tmp_path, capsys, cmd, schedule, fragments):
    d = _report_dir(tmp_path, schedule=schedule)
    code, err = _run([cmd, str(d)] + (["--reports", str(tmp_path / "r")] if cmd == "replay" else []), capsys)
    assert code == 2, err
    assert str(d / "schedule.json") in err, err
    for frag in fragments:
        assert frag in err, (frag, err)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("cmd", ["replay", "shrink", "report"])
@pytest.mark.parametrize("result,fragments", [
    ({"seed": "abc"}, ["'seed'", "abc"]),
    ({"seed": -5}, ["'seed'", "-5"]),
    ({"verdict": "ok"}, ["'verdict'", "an object"]),
    ({"verdict": {"as_expected": "yes", "violated": []}}, ["'verdict.as_expected'", "yes"]),
    ({"verdict": {"as_expected": False, "violated": "P1"}}, ["'verdict.violated'"]),
    ({"properties": [1]}, ["'properties'", "an object"]),
    ({"properties": {"P1": {"valid": "maybe"}}}, ["'properties.P1.valid'", "maybe"]),
    ({"properties": {"P1": {"valid": False, "anomalies": [{"kind": 1}]}}}, ["'properties.P1.anomalies[0]'"]),
    ({"outcome": None}, ["'outcome'"]),
    ({"faults": "x"}, ["'faults'", "an object"]),
], ids=["seed-str", "seed-negative", "verdict-str", "as-expected-str", "violated-str", "properties-list",
        "valid-maybe", "anomaly-kind-int", "outcome-null", "faults-str"])
def test_edited_result_exits_2_naming_the_file_and_the_field(tmp_path, capsys, cmd, result, fragments):
    d = _report_dir(tmp_path, result=result)
    code, err = _run([cmd, str(d)] + (["--reports", str(tmp_path / "r")] if cmd == "replay" else []), capsys)
    assert code == 2, err
    assert str(d / "result.json") in err, err
    for frag in fragments:
        assert frag in err, (frag, err)


def test_result_without_what_a_report_renders_exits_2(tmp_path, capsys):
    d = _report_dir(tmp_path, result={"verdict": {"violated": []}})
    code, err = _run(["report", str(d)], capsys)
    assert code == 2 and str(d / "result.json") in err and "'verdict.as_expected' is missing" in err, err


def test_edited_history_exits_2_naming_the_file_and_the_line(tmp_path, capsys):
    d = _report_dir(tmp_path, history='{"ev": "spawn"}\n{garbage\n')
    code, err = _run(["report", str(d)], capsys)
    assert code == 2 and str(d / "history.jsonl") in err and "line 2" in err, err
    d2 = _report_dir(tmp_path / "x", history='{"ev": "spawn"}\n[1, 2]\n') if (tmp_path / "x").mkdir() is None else None
    code, err = _run(["report", str(d2)], capsys)
    assert code == 2 and "line 2" in err and "not an event" in err, err
