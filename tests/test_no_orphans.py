"""The harness never leaves processes behind, even when it is SIGKILLed."""

import os
import signal
import subprocess
import sys
import time

import pytest

from reference_impl.procutil import parent_of, pid_gone, proc_state


def _children():
    kids = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        ppid = parent_of(pid)
        if ppid is not None:
            kids.setdefault(ppid, []).append(int(pid))
    return kids


def _descendants(root):
    kids, out, todo = _children(), [], [root]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _alive(pid):
    return proc_state(pid) not in (None, "Z")


@pytest.mark.slow
def test_sigkilled_harness_leaves_no_children(tmp_path):
    reports = tmp_path / "reports"
    from harness.process_engine.work_dir import ROOT_ENV

    env = dict(os.environ, **{ROOT_ENV: str(tmp_path)})  # (the work dir it leaves goes with tmp_path)
    h = subprocess.Popen([sys.executable, "-m", "harness", "run", "slow-consumer", "--seed", "1",
                          "--reports", str(reports), "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env=env)
    # Wait until the pipeline is running: the channel has records.
    deadline = time.monotonic() + 120
    seen = []
    while time.monotonic() < deadline:
        seen = _descendants(h.pid)
        chans = list(reports.glob("*/work/channel.jsonl"))
        if len(seen) >= 2 and chans and chans[0].stat().st_size > 0:
            break
        time.sleep(0.1)
    assert len(seen) >= 2, "the run never started its processes"
    h.send_signal(signal.SIGKILL)
    h.wait(timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in seen):
        time.sleep(0.1)
    assert [p for p in seen if _alive(p)] == [], "processes outlived the harness"


SIM_FOREVER = """
import sys
from harness.simulate.engine import Simulation
sim = Simulation(workdir_root=sys.argv[1])
while True:
    sim.run([("kill", "consumer"), ("step", "producer", 3)])
"""


def test_a_sigkilled_simulations_work_dir_is_swept_by_the_next_one(tmp_path):
    from harness.simulate.engine import Simulation

    proc = subprocess.Popen([sys.executable, "-c", SIM_FOREVER, str(tmp_path)])
    try:
        deadline = time.monotonic() + 120
        while not any(n.startswith(f"sim-{proc.pid}-") for n in os.listdir(tmp_path)):
            assert proc.poll() is None and time.monotonic() < deadline, "the simulation made no work dir"
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    left = [n for n in os.listdir(tmp_path) if n.startswith(f"sim-{proc.pid}-")]
    assert left, "SIGKILL mid-schedule leaves the work dir behind (what the sweep is for)"
    mine = tmp_path / f"sim-{os.getpid()}-live"  # a live owner's dir is not touched
    kept = tmp_path / "simkept-abc"  # nor a dir kept on purpose
    mine.mkdir()
    kept.mkdir()
    Simulation(workdir_root=str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == sorted(["simkept-abc", f"sim-{os.getpid()}-live"])


SERVER_THEN_SLEEP = r"""
import sys, time
from harness.stores import shared_server
from reference_impl.stores.redis import RedisMetadataStore
shared_server.start(RedisMetadataStore)
print(shared_server._server._popen.pid, flush=True)
if sys.argv[1] == "sleep":
    time.sleep(600)
"""


def test_a_sigkilled_certifications_redis_dir_is_swept_by_the_next_one(tmp_path):
    # certify starts one Redis server in a temp dir; SIGKILLed, the certifying process runs no
    # exit handler: the server dies with it (parent-death signal), the next certification removes the dir
    from harness.stores.shared_server import SHARED_ENV

    # not a child of a certification: a test before this one in the worker may have started one
    env = {k: v for k, v in os.environ.items() if k != SHARED_ENV}
    env["TMPDIR"] = str(tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", SERVER_THEN_SLEEP, "sleep"], env=env, stdout=subprocess.PIPE,
                            text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip().isdigit(), f"the process holding a server printed {line!r} (exit {proc.poll()})"
        server_pid = int(line)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        proc.stdout.close()
    left = [n for n in os.listdir(tmp_path) if n.startswith(f"certify-redis-{proc.pid}-")]
    assert left, "SIGKILL leaves the server's dir behind (what the sweep is for)"
    deadline = time.monotonic() + 30
    while not pid_gone(server_pid):
        assert time.monotonic() < deadline, "the Redis server outlived the certifying process"
        time.sleep(0.05)
    mine = tmp_path / f"certify-redis-{os.getpid()}-live"  # a live owner's dir is not touched
    mine.mkdir()
    nxt = subprocess.run([sys.executable, "-c", SERVER_THEN_SLEEP, "exit"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert nxt.returncode == 0, nxt.stderr
    assert os.listdir(tmp_path) == [mine.name]  # the dead one's swept, the next one's removed at its exit


def test_a_sigkilled_runs_tmpfs_work_dir_is_swept_by_the_next_run(tmp_path):
    # a run's work dir is on a tmpfs (work_dir.py), outside the run dir: SIGKILLed, the harness
    # leaves it; the next run removes it and leaves a live harness's work dir alone
    from harness.process_engine.work_dir import ROOT_ENV, make_work_dir

    root = tmp_path / "root"
    root.mkdir()
    env = dict(os.environ, **{ROOT_ENV: str(root)})
    h = subprocess.Popen([sys.executable, "-m", "harness", "run", "slow-consumer", "--seed", "1",
                          "--reports", str(tmp_path / "reports"), "--quiet"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list(root.glob(f"run-{h.pid}-*/channel.jsonl")):
            assert h.poll() is None and time.monotonic() < deadline, "the run made no work dir on the root"
            time.sleep(0.05)
        (link,) = (tmp_path / "reports").glob("*/work")
        assert link.is_symlink() and (link / "channel.jsonl").exists()  # the run dir leads to it
        seen = _descendants(h.pid)
    finally:
        h.send_signal(signal.SIGKILL)
        h.wait(30)
    deadline = time.monotonic() + 10  # its processes die with it (and stop writing there)
    while time.monotonic() < deadline and any(_alive(p) for p in seen):
        time.sleep(0.05)
    assert [n for n in os.listdir(root) if n.startswith(f"run-{h.pid}-")], "SIGKILL leaves it (the sweep's job)"
    live = root / f"run-{os.getpid()}-live"
    live.mkdir()
    rdir = tmp_path / "next"
    rdir.mkdir()
    old = os.environ.get(ROOT_ENV)
    os.environ[ROOT_ENV] = str(root)
    try:
        mine = make_work_dir(str(rdir))
    finally:
        os.environ.pop(ROOT_ENV) if old is None else os.environ.__setitem__(ROOT_ENV, old)
    assert sorted(os.listdir(root)) == sorted([live.name, os.path.basename(mine)])
