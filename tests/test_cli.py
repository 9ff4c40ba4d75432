import json
import os
import subprocess
import sys

import pytest

from harness.cli import main


def test_list_names_every_scenario(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "kill-random" in out and "private-layout" in out and "violates P1/P2" in out


def test_bad_inputs_exit_2_with_the_cause(tmp_path, capsys):
    assert main(["run", "no-such-scenario"]) == 2
    assert "unknown scenario 'no-such-scenario'" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "b"\n[workload]\nsamples = -1\n')
    assert main(["run", str(bad)]) == 2
    assert "'workload.samples' has value -1" in capsys.readouterr().err
    assert main(["run", "baseline", "--backend", "nosuchmod:Store"]) == 2
    assert "module 'nosuchmod' not found" in capsys.readouterr().err
    assert main(["replay", str(tmp_path)]) == 2
    assert "not a report directory" in capsys.readouterr().err
    assert main(["campaign", "baseline", "--seeds", "9..1"]) == 2
    assert main(["frobnicate"]) == 2


@pytest.mark.slow
def test_run_then_report_then_replay(tmp_path):
    reports = str(tmp_path / "reports")
    env = dict(os.environ)
    r = subprocess.run([sys.executable, "-m", "harness", "run", "kill-before-first-checkpoint", "--seed", "2",
                        "--reports", reports], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "AS EXPECTED" in r.stdout and "replay: python -m harness replay" in r.stdout
    (rdir,) = [os.path.join(reports, d) for d in os.listdir(reports)]
    os.remove(os.path.join(rdir, "report.md"))
    assert main(["report", rdir]) == 0
    assert os.path.getsize(os.path.join(rdir, "report.md")) > 200
    with open(os.path.join(rdir, "report.html")) as f:
        html = f.read()
    assert "data:image/png;base64," in html and "AS EXPECTED" in html
    r2 = subprocess.run([sys.executable, "-m", "harness", "replay", rdir, "--reports", reports],
                        capture_output=True, text=True, timeout=300)
    assert r2.returncode == 0, r2.stdout + r2.stderr
    runs = sorted(os.listdir(reports))
    assert len(runs) == 2
    with open(os.path.join(reports, runs[1], "schedule.json")) as f, open(os.path.join(rdir, "schedule.json")) as g:
        assert json.load(f) == json.load(g)


def test_one_argument_tree_shares_option_names_and_defaults():
    from harness.arguments import DEFAULT_JOBS, build_parser, subcommand_parser

    ap = build_parser()
    defaults = {}
    for cmd in ("run", "replay", "campaign", "certify", "simulate", "bench", "gpu-lane", "shrink"):
        sub = subcommand_parser(ap, cmd)
        assert sub is not ap, cmd
        opts = {o: a for a in sub._actions for o in a.option_strings}
        defaults[cmd] = {o: opts[o].default for o in ("--reports", "--jobs", "--connect-timeout") if o in opts}
        hidden = {o for o, a in opts.items() if a.help == "==SUPPRESS=="}
        assert "--reports-dir" not in set(opts) - hidden, cmd  # one visible name for the reports directory
    assert {c for c, d in defaults.items() if d.get("--reports") == "reports"} == \
        {"run", "replay", "campaign", "certify", "simulate", "gpu-lane"}
    assert {c for c, d in defaults.items() if "--jobs" in d} == {"campaign", "certify", "simulate", "bench",
                                                                  "gpu-lane"}
    assert {d["--jobs"] for d in defaults.values() if "--jobs" in d} == {None}  # resolved to DEFAULT_JOBS
    assert DEFAULT_JOBS >= 1
    assert {d["--connect-timeout"] for d in defaults.values() if "--connect-timeout" in d} == {30.0}
    old = ap.parse_args(["certify", "x:y", "--reports-dir", "somewhere"])  # the older spelling still works
    assert old.reports == "somewhere"


@pytest.mark.parametrize("cmd", ["run", "campaign", "certify", "simulate", "bench", "gpu-lane"])
def test_every_subcommand_has_help_and_exit_0(cmd, capsys):
    assert main([cmd, "--help"]) == 0
    assert f"usage: python -m harness {cmd}" in capsys.readouterr().out


def test_thin_entry_points_are_the_same_tree(capsys):
    from harness.bench import main as bench_main
    from harness.certify.cli import main as certify_main
    from harness.simulate.cli import main as simulate_main

    assert certify_main(["x:y", "--tiers", "9"]) == 2
    assert "--tiers: '9' is not a tier" in capsys.readouterr().err
    assert simulate_main(["--examples", "0"]) == 2
    assert "--examples must be >= 1" in capsys.readouterr().err
    assert bench_main(["--jobs", "0"]) == 2
    assert "-j/--jobs 0" in capsys.readouterr().err


def test_gpu_lane_without_cuda_exits_2_naming_the_problem(capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible: the lane would run")
    assert main(["gpu-lane"]) == 2
    err = capsys.readouterr().err
    assert "gpu-lane:" in err and ("no CUDA support" in err or "no CUDA device is visible" in err), err


def test_gpu_lane_exit_combines_the_tests_and_the_campaign():
    from harness.gpu_lane import lane_exit

    assert lane_exit(0, 0) == 0
    assert lane_exit(1, 0) == 1 and lane_exit(0, 1) == 1 and lane_exit(1, 3) == 1  # a finding wins
    assert lane_exit(5, 0) == 3 and lane_exit(2, 0) == 3 and lane_exit(0, 3) == 3  # nothing collected, crashed


@pytest.mark.slow
def test_gpu_lane_runs_the_tests_then_the_campaign(tmp_path, capsys, monkeypatch):
    """The lane's steps, on this machine: the CUDA check and the pytest child stand in, the campaign is real
    (on a CPU scenario), so what the lane prints and returns is checked without a GPU."""
    import harness.gpu_lane as lane

    ran = []
    monkeypatch.setattr(lane, "check_cuda", lambda: "1 CUDA device(s): stand-in")
    monkeypatch.setattr(lane, "run_gpu_tests", lambda: ran.append("pytest") or 0)
    monkeypatch.setattr(lane, "gpu_scenarios", lambda: ["baseline"])
    assert main(["gpu-lane", "--seeds", "0..0", "-j", "1", "--reports", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert ran == ["pytest"]
    assert "gpu-lane: 1 CUDA device(s): stand-in" in out and "| baseline | 1 | 1 |" in out
    assert "gpu-marked tests passed; campaign exit 0" in out
