"""Certify's children: fork by default, spawn through `multiprocess` (dill) so that
factories plain pickle cannot carry (closures, lambdas, local classes) still reach
the child; a hang is killed and reported."""

import os
import pickle
import subprocess
import sys

import pytest

from harness.certify.children import START_ENV, in_child, mp_context


def _closure_over(n):
    class Local:  # a class defined inside a function: plain pickle cannot carry it
        def value(self):
            return n * 2

    return lambda: (Local().value(), __import__("os").getpid())


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_a_closure_runs_in_a_child(tmp_path, monkeypatch, method):
    monkeypatch.setenv(START_ENV, method)
    fn = _closure_over(21)
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        pickle.dumps(fn)  # what the standard library's spawn would have to do
    out = in_child(fn, workdir=str(tmp_path), timeout=120)
    assert out["ok"], out
    value, pid = out["value"]
    assert value == 42
    assert pid != __import__("os").getpid()


def test_a_hanging_child_is_killed_and_reported(tmp_path):
    out = in_child(__import__("time").sleep, 60, workdir=str(tmp_path), timeout=1)
    assert out["hung"] and out["prop"] == "liveness" and not out["ok"]
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_start_method_names_the_variable(monkeypatch):
    monkeypatch.setenv(START_ENV, "forkserver-ish")
    with pytest.raises(ValueError, match=START_ENV):
        mp_context()


def test_a_forked_process_starts_children_of_its_own(tmp_path, monkeypatch):
    # the fork server runs (started by this process); a fork of this process (mutmut forks each
    # mutant's test run from the process that ran its stats) inherits the server's pid but not the
    # server: its children must still start (not ChildProcessError from ensure_running's waitpid)
    monkeypatch.setenv(START_ENV, "forkserver")
    assert in_child(os.getpid, workdir=str(tmp_path), timeout=120)["ok"]
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            out = in_child(os.getpid, workdir=str(tmp_path), timeout=120)
            code = 0 if out["ok"] else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert in_child(os.getpid, workdir=str(tmp_path), timeout=120)["ok"]  # the parent's server still serves it


LONG_TMPDIR_CHILD = """
import os, sys, tempfile
from harness.certify.children import in_child
out = in_child(os.getpid, workdir=sys.argv[1], timeout=120)
print(len(tempfile.gettempdir()), out["ok"])
sys.exit(0 if out["ok"] else 2)
"""


def test_children_start_under_a_temp_dir_too_long_for_a_socket_address(tmp_path):
    # a test runner's private TMPDIR can be deep: the fork server's AF_UNIX address under it would
    # pass 107 bytes ("AF_UNIX path too long"); its socket folder then goes to a short temp dir
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    env = dict(os.environ, TMPDIR=str(deep), DFH_CERTIFY_START="forkserver")
    p = subprocess.run([sys.executable, "-c", LONG_TMPDIR_CHILD, str(tmp_path)], env=env, capture_output=True,
                       text=True, timeout=180)
    assert p.returncode == 0, p.stdout + p.stderr
    assert int(p.stdout.split()[0]) > 107  # the temp dir really was too long for a socket address
    assert os.listdir(deep) == []  # and nothing was left in it
