"""The zygote launcher behaves like spawning `python -m MODULE` (harness/process_engine/zygote.py)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from harness.process_engine.supervisor import Supervisor
from reference_impl.config import RunConfig, write_config
from reference_impl.procutil import pid_gone

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork server with prctl: Linux only")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_dir(tmp_path):
    cfg = RunConfig(workdir=str(tmp_path / "run"))
    os.makedirs(cfg.workdir)
    write_config(cfg)
    return cfg


def _wait(p, timeout=20.0):
    deadline = time.monotonic() + timeout
    while p.poll() is None:
        assert time.monotonic() < deadline, f"{p.name}#{p.inc} did not exit: {p.stderr_tail()}"
        time.sleep(0.005)
    return p.code


def _wait_for(pred, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _dead(pid):
    return pid_gone(pid)


def _consumer(sup, cfg, **kw):
    # With an empty channel and no producer, the consumer polls forever.
    return sup.spawn("consumer", "reference_impl.consumer", ["--config", cfg.path("config.json")], **kw)


def _started(cfg):
    path = cfg.path("history", "consumer.jsonl")
    return os.path.exists(path) and b'"ev":"start"' in open(path, "rb").read()


def test_sigkilled_child_reports_minus_9(tmp_path):
    cfg = _run_dir(tmp_path)
    sup = Supervisor(cfg.workdir, launcher="zygote")
    try:
        p = _consumer(sup, cfg)
        assert p.launcher == "zygote"
        _wait_for(lambda: _started(cfg), what="consumer start")
        assert p.poll() is None
        # `ps` shows what runs, as with a spawned process.
        cmd = open(f"/proc/{p.pid}/cmdline", "rb").read().split(b"\0")
        assert b"reference_impl.consumer" in cmd and cfg.path("config.json").encode() in cmd
        assert os.getpgid(p.pid) == p.pid  # its own process group
        assert sup.kill("consumer")
        deadline = time.monotonic() + 10
        ended = []
        while not ended and time.monotonic() < deadline:
            ended = sup.reap()
            time.sleep(0.005)
        assert ended == [p] and p.code == -signal.SIGKILL
    finally:
        sup.shutdown()


def test_exit_code_env_and_session_reach_the_child(tmp_path):
    cfg = _run_dir(tmp_path)
    out = tmp_path / "child.json"
    rules = [{"point": "consumer.after_read_before_train", "action": "crash", "hit": 2}]
    sup = Supervisor(cfg.workdir, launcher="zygote", extra_env={
        "DFH_VARIANT": "tests.zygote_helpers:report_and_exit", "PYTHONPATH": REPO,
        "ZYGOTE_TEST_OUT": str(out), "ZYGOTE_TEST_CODE": "5", "ZYGOTE_TEST_MARKER": "m1"})
    try:
        p = _consumer(sup, cfg, failpoints=rules)
        assert _wait(p) == 5
        seen = json.loads(out.read_text())
        assert json.loads(seen["failpoints_env"]) == rules
        assert seen["failpoints_parsed"][0]["point"] == rules[0]["point"]
        assert seen["variant_env"] == "tests.zygote_helpers:report_and_exit"
        assert seen["incarnation_env"] == "0" and seen["marker_env"] == "m1"
        assert seen["pid"] == p.pid and seen["sid"] == p.pid and seen["pgid"] == p.pid
        assert seen["stdin_is_devnull"]
        assert seen["cwd"] == os.getcwd()
        assert "hello from the child" in p.stderr_tail()  # stdout goes to the log
        # The next incarnation gets its own environment (no failpoints now).
        sup.extra_env["ZYGOTE_TEST_CODE"] = "0"
        q = _consumer(sup, cfg)
        assert _wait(q) == 0
        seen = json.loads(out.read_text())
        assert seen["failpoints_env"] is None and seen["incarnation_env"] == "1"
    finally:
        sup.shutdown()


def test_usage_error_exit_code(tmp_path):
    sup = Supervisor(str(tmp_path), launcher="zygote")
    try:
        p = sup.spawn("consumer", "reference_impl.consumer", ["--config", str(tmp_path / "missing.json")])
        assert _wait(p) == 2
        assert "does not exist" in p.stderr_tail()
    finally:
        sup.shutdown()


def test_sigstop_sigcont(tmp_path):
    cfg = _run_dir(tmp_path)
    sup = Supervisor(cfg.workdir, launcher="zygote")
    try:
        p = _consumer(sup, cfg)
        _wait_for(lambda: _started(cfg), what="consumer start")
        assert sup.pause("consumer")
        _wait_for(p.is_stopped, what="SIGSTOP")
        time.sleep(0.05)
        assert p.poll() is None and sup.reap() == []  # stopped is not exited
        assert sup.cont("consumer")
        _wait_for(lambda: not p.is_stopped(), what="SIGCONT")
        assert p.poll() is None
        p.signal_group(signal.SIGTERM)
        assert _wait(p) == -signal.SIGTERM
    finally:
        sup.shutdown()


HARNESS = textwrap.dedent("""
    import json, os, sys, time
    from harness.process_engine.supervisor import Supervisor
    from harness.process_engine import zygote
    from reference_impl.config import RunConfig, write_config
    pids = []
    for d in ("a", "b"):  # two idle consumers (empty channels, no producer): they never exit by themselves
        cfg = RunConfig(workdir=os.path.join(sys.argv[1], d)); os.makedirs(cfg.workdir); write_config(cfg)
        sup = Supervisor(cfg.workdir, launcher="zygote")
        pids.append(sup.spawn("consumer", "reference_impl.consumer", ["--config", cfg.path("config.json")]).pid)
    time.sleep(0.5)
    print(json.dumps([zygote.get_client().pid] + pids), flush=True)
    time.sleep(600)
""")


@pytest.mark.slow
def test_no_child_outlives_a_sigkilled_harness(tmp_path):
    h = subprocess.Popen([sys.executable, "-c", HARNESS, str(tmp_path / "run")], stdout=subprocess.PIPE,
                         cwd=REPO, text=True)
    try:
        line = h.stdout.readline()
        assert line, "the harness did not start its children"
        pids = json.loads(line)
        assert all(not _dead(p) for p in pids)
        h.send_signal(signal.SIGKILL)
        h.wait(timeout=10)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not all(_dead(p) for p in pids):
            time.sleep(0.05)
        assert [p for p in pids if not _dead(p)] == [], "processes outlived the harness"
    finally:
        if h.poll() is None:
            h.kill()
            h.wait()


def test_anonymous_ranges_are_the_whole_huge_pages_of_private_writable_anonymous_mappings(tmp_path):
    from harness.process_engine.zygote_server import HUGE_PAGE, anonymous_ranges

    maps = tmp_path / "maps"
    maps.write_text("\n".join([
        "00400000-00800000 r-xp 00000000 fd:00 123 /usr/bin/python3",  # file-backed code
        "01000000-01700000 rw-p 00000000 00:00 0 [heap]",  # heap: 7 MB from 16 MB
        "7f0000100000-7f0000500000 rw-p 00000000 00:00 0",  # anonymous, unaligned: one whole huge page in it
        "7f0001000000-7f0001100000 rw-p 00000000 00:00 0",  # 1 MB: no whole huge page
        "7f0002000000-7f0002400000 rw-s 00000000 00:05 9 /dev/shm/x",  # shared: never
        "7f0003000000-7f0003400000 r--p 00000000 00:00 0",  # read-only: never
        "7ffc00000000-7ffc00400000 rw-p 00000000 00:00 0 [stack]",  # the stack: never
    ]) + "\n")
    assert anonymous_ranges(str(maps)) == [
        (0x01000000, 0x01600000),
        (0x7F0000200000, 0x7F0000400000),
    ]
    assert all((hi - lo) % HUGE_PAGE == 0 for lo, hi in anonymous_ranges(str(maps)))


def _anon_kb(pid):
    """(Anonymous, AnonHugePages) of `pid`, in kB."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key = line.split(":")[0]
            if key in ("Anonymous", "AnonHugePages"):
                out[key] = int(line.split()[1])
    return out.get("Anonymous", 0), out.get("AnonHugePages", 0)


def _why_no_collapse():
    """Why this kernel cannot collapse memory into huge pages, or None where it can: read from the
    kernel's version and THP setting, not from a try, so a collapse that breaks fails the test."""
    release = os.uname().release.split("-")[0].split(".")
    if tuple(int(x) for x in release[:2] if x.isdigit()) < (6, 1):
        return f"Linux {os.uname().release}: MADV_COLLAPSE needs 6.1+"
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            if "[never]" in f.read():
                return "transparent huge pages are off ([never])"
    except OSError:
        return "no transparent huge pages in this kernel"
    return None


def test_the_zygote_holds_its_preloaded_memory_in_huge_pages():
    """A child's fork and exit then copy and tear down a few hundred page-table entries, not ~37,000."""
    why = _why_no_collapse()
    if why is not None:
        pytest.skip(why)
    from harness.process_engine.zygote import ZygoteClient

    z = ZygoteClient(sys.executable)
    try:
        # 84% here; malloc's huge pages alone give 57%, the collapse alone 81%
        anon, huge = _anon_kb(z.pid)
        assert huge >= 0.7 * anon, f"zygote: {huge} kB of {anon} kB anonymous memory in huge pages"
    finally:
        z.close(timeout=5.0)
