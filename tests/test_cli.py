import json
import os
import subprocess
import sys

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
