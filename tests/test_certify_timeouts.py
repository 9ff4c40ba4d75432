"""certify bounds every call and cleans up after itself (issue 16, item 7).

A constructor or a commit_sample that never returns is a liveness finding
(which call, which arguments, how long) with a standalone reproducer, reached in
bounded time; the call timeout is configurable and printed in the certificate.
SIGTERM ends certify with exit 3, and no temporary folder (certify-probe-*,
certify-work-*), empty certificate folder or child process is left behind.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(tmp):
    os.makedirs(tmp, exist_ok=True)
    return dict(os.environ, TMPDIR=str(tmp), PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _start(args, tmp_path):
    return subprocess.Popen(
        [sys.executable, "-m", "harness", "certify", *args, "--reports-dir", str(tmp_path / "reports")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=_env(tmp_path / "tmp"),
    )


def _left_processes(marker):
    """Pids of live processes whose environment holds `marker` (our private TMPDIR)."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if marker.encode() in f.read():
                    out.append(int(pid))
        except OSError:
            pass
    return out


def _certificate(tmp_path):
    (d,) = os.listdir(tmp_path / "reports")
    with open(tmp_path / "reports" / d / "certificate.json") as f:
        return json.load(f)


def _hang_case(name, tmp_path):
    t0 = time.monotonic()
    p = _start([f"tests.store_zoo:{name}", "--quick", "--call-timeout", "2", "--seed", "1"], tmp_path)
    out, err = p.communicate(timeout=300)
    took = time.monotonic() - t0
    assert p.returncode == 1, out + err
    assert took < 120, f"certify took {took:.0f} s with a 2 s call timeout"
    assert os.listdir(tmp_path / "tmp") == []  # no certify-probe-* / certify-work-* left
    c = _certificate(tmp_path)
    assert c["call_timeout_s"] == 2.0 and "call timeout | 2 s" in open(
        os.path.join(c["report_dir"], "certificate.md")).read()
    assert c["verdict_code"] == "liveness" and c["verdict"].startswith("REJECTED: liveness"), c["verdict"]
    assert all(t["status"] == "not run" for t in c["tiers"])
    return c, out


def _run_repro(path, *args):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, path, *args], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.slow
def test_hanging_constructor_is_a_liveness_finding_in_bounded_time(tmp_path):
    c, out = _hang_case("HangingConstructorStore", tmp_path)
    f = c["finding"]
    assert f["call"] == "constructor" and f["seconds"] >= 2
    assert "HangingConstructorStore(<workdir>/store.db) did not return within 2 s" in f["message"]
    r = _run_repro(f["reproducer"])
    assert r.returncode == 1 and "the constructor did not return" in r.stdout, r.stdout + r.stderr
    ok = _run_repro(f["reproducer"], "tests.store_zoo:SqliteStore")
    assert ok.returncode == 0, ok.stdout + ok.stderr


@pytest.mark.slow
def test_hanging_commit_sample_is_a_liveness_finding_naming_call_and_arguments(tmp_path):
    c, out = _hang_case("HangingCommitStore", tmp_path)
    f = c["finding"]
    assert f["call"] == "commit_sample" and "sample_id='certify-probe-0'" in f["args"]
    assert "did not return within 2 s" in f["message"] and "reproducer:" in out
    r = _run_repro(f["reproducer"])
    assert r.returncode == 1 and "commit_sample(SampleRef(" in r.stdout, r.stdout + r.stderr
    ok = _run_repro(f["reproducer"], "tests.store_zoo:SqliteStore")
    assert ok.returncode == 0, ok.stdout + ok.stderr


def test_sigterm_leaves_no_temp_dir_no_empty_certificate_dir_and_no_process(tmp_path):
    p = _start(["tests.store_zoo:SqliteStore", "--quick", "--seed", "1"], tmp_path)
    tmp = tmp_path / "tmp"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(n.startswith("certify-work-") for n in os.listdir(tmp)):
        time.sleep(0.2)
    assert any(n.startswith("certify-work-") for n in os.listdir(tmp)), "certify never started its tiers"
    time.sleep(2)  # inside tier 1's child
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 3, out + err
    assert "interrupted by SIGTERM" in err
    assert os.listdir(tmp) == []
    assert not os.path.exists(tmp_path / "reports") or os.listdir(tmp_path / "reports") == []
    time.sleep(0.5)
    assert _left_processes(str(tmp)) == []
