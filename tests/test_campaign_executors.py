"""Executors: a local pool worker that dies costs its trial one attempt, never the campaign;
an unreachable Ray address fails within the connect timeout, naming the address."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from harness.campaign.reaper import descendants
from harness.executors import TrialLost, make_executor, map_trials
from tests.campaign_helpers import REPO, campaign_dirs, finish, kill_leftovers, start_campaign, wait_for


def _die_once(item):
    """Kill this worker the first time `item` is tried (a marker file remembers), then double its value."""
    marker, value = item
    if not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return value * 2


def _raise(item):
    raise RuntimeError(f"bad item {item}")


def test_a_dead_local_worker_costs_its_trial_one_attempt(tmp_path):
    items = [(str(tmp_path / f"m{i}"), i) for i in range(5)]
    with make_executor("local", 2) as ex:
        out = [pair for batch in ex.run(_die_once, items) for pair in batch]
        retried = ex.retried
    assert sorted((it[1], res) for it, res in out) == [(i, 2 * i) for i in range(5)]
    assert retried == 5


def test_a_trial_that_kills_every_worker_is_lost_after_its_retries():
    out = dict(map_trials(os._exit, [7], "local", jobs=1, max_retries=1))
    assert isinstance(out[7], TrialLost) and "exit code 7" in out[7].reason and "2 attempts" in out[7].reason
    assert sorted(map_trials(abs, [-3, 1, -2], "local", jobs=2)) == [(-3, 3), (-2, 2), (1, 1)]


def test_an_exception_in_the_trial_is_lost_not_retried():
    out = dict(map_trials(_raise, [1, 2], "local", jobs=2))
    assert {k: type(v) for k, v in out.items()} == {1: TrialLost, 2: TrialLost}
    assert "RuntimeError: bad item 2" in out[2].reason


def _rows(cdir):
    with open(os.path.join(cdir, "summary.json")) as f:
        data = json.load(f)
    runs = {(r["scenario"], r["seed"]): (r["status"], r["outcome"], r["violated"], r["faults"])
            for r in data["runs"]}
    return data["summary"], runs


def _worker_in_a_run(campaign_pid):
    """A direct child of the campaign (a pool worker) with a run's processes below its zygote."""
    for pid in descendants(campaign_pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if ppid == campaign_pid and len(descendants(pid)) >= 3:
            return pid
    return None


@pytest.mark.slow
def test_sigkilled_pool_worker_costs_no_trial(tmp_path):
    args = ["kill-random", "--seeds", "0..3", "-j", "2"]
    quiet = start_campaign(args, tmp_path / "a")
    out, err = finish(quiet, 600)
    assert quiet.returncode == 0, out + err
    expected_summary, expected = _rows(campaign_dirs(tmp_path / "a")[0])

    p = start_campaign(args, tmp_path / "b")
    try:
        victim = wait_for(lambda: _worker_in_a_run(p.pid), 300, "a pool worker running a trial")
        os.kill(victim, signal.SIGKILL)
        out, err = finish(p, 600)
    finally:
        if p.poll() is None:
            p.kill()
    cdir = campaign_dirs(tmp_path / "b")[0]
    kill_leftovers(cdir, {})
    assert p.returncode == 0, out + err
    summary, got = _rows(cdir)
    assert got == expected
    assert summary["trials_retried"] == 1
    assert {k: summary[k] for k in ("runs", "as_expected", "harness_error", "faults_landed")} == \
        {k: expected_summary[k] for k in ("runs", "as_expected", "harness_error", "faults_landed")}
    assert [d for d in os.listdir(cdir) if os.path.isdir(os.path.join(cdir, d))] == []  # no half-run left


def _campaign_on(address, tmp_path, *extra):
    env = dict(os.environ, PYTHONPATH=REPO)
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "harness", "campaign", "baseline", "--seeds", "0..1",
                        "--executor", "ray", "--address", address, "--reports", str(tmp_path / "r"), *extra],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    return r, time.monotonic() - t0


def test_ray_address_that_refuses_fails_at_once_with_exit_2(tmp_path):
    pytest.importorskip("ray")
    with socket.socket() as s:  # a loopback port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r, took = _campaign_on(f"127.0.0.1:{port}", tmp_path)
    assert r.returncode == 2, r.stderr
    assert f"--address 127.0.0.1:{port}" in r.stderr and "Traceback" not in r.stderr
    assert took < 30


@pytest.mark.slow
def test_ray_address_that_never_answers_fails_within_the_connect_timeout(tmp_path):
    pytest.importorskip("ray")
    with socket.socket() as s:  # accepts connections (the kernel's backlog) and never speaks
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        port = s.getsockname()[1]
        r, took = _campaign_on(f"127.0.0.1:{port}", tmp_path, "--connect-timeout", "4")
    assert r.returncode == 2, r.stderr
    assert f"--address 127.0.0.1:{port}" in r.stderr and "within 4 s" in r.stderr
    assert took < 60


def test_local_ray_workers_write_their_temp_files_into_the_private_dir_removed_at_the_end():
    """Ray kills its workers at shutdown, so what they leave in the temp dir (a fork server's socket
    dir, for one) must be inside the instance's private dir, which the executor removes."""
    pytest.importorskip("ray")
    from harness.executors.ray import RayExecutor
    from harness.process_engine.work_dir import ROOT_ENV, work_root

    ex = RayExecutor(2)
    try:
        private = ex.temp_dirs()
        assert all(os.path.isdir(d) for d in private)
        env = ex._init_kwargs()["runtime_env"]["env_vars"]
        assert env["TMPDIR"] == private[0]
        if work_root() is not None:  # the trials' work dirs too: under the executor's own root on the tmpfs
            assert len(private) == 2 and env[ROOT_ENV] == private[1] and private[1].startswith(work_root())
        else:
            assert len(private) == 1 and ROOT_ENV not in env
    finally:
        ex._cleanup()
    assert not any(os.path.exists(d) for d in private)


def test_the_autoscaler_monitor_is_sigkilled_before_shutdown_and_nothing_else_is_touched():
    """`stop_autoscaler_monitor` on a stand-in for Ray's private process table: the monitor (a process
    that ignores SIGTERM, as Ray's does for a second) is SIGKILLed and reaped, the other processes are
    left to Ray's shutdown, and a Ray without the table is left alone."""
    from types import SimpleNamespace

    from harness.executors.ray import stop_autoscaler_monitor

    ignore_term = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    monitor = subprocess.Popen([sys.executable, "-c", ignore_term])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        node = SimpleNamespace(all_processes={"monitor": [SimpleNamespace(process=monitor)],
                                              "raylet": [SimpleNamespace(process=other)]})
        fake_ray = SimpleNamespace(_private=SimpleNamespace(worker=SimpleNamespace(_global_node=node)))
        assert stop_autoscaler_monitor(fake_ray) == monitor.pid
        assert monitor.returncode == -signal.SIGKILL
        assert other.poll() is None
        assert stop_autoscaler_monitor(fake_ray) is None  # already gone: nothing to do
        assert stop_autoscaler_monitor(SimpleNamespace()) is None  # no private table: nothing done
    finally:
        for p in (monitor, other):
            p.kill()
            p.wait()
