"""A store process that dies is reported at once, in every tier, naming the call; and
certify's children never come from a fork of the (threaded) certifier.

The zoo's SegfaultAckStore (SIGSEGV) and ExitAckStore (os._exit(0)) end their
process inside record_train_ack. Each tier must fail with an `exception`
finding that names the call and how the process ended, long before the call
timeout (which is for calls that do not return). A child that dies outside
any store call is not the backend's finding.
"""

import os
import threading

import pytest

from harness.certify import FAILED, PASSED, certify
from harness.certify.certificate import Budget
from harness.certify.children import in_child
from harness.certify.findings import child_failure

SMALL = Budget("small", t1_examples=40, t1_steps=15, t2_scale=0.3, t3_crashes=6, t4_seeds=1, t1_shrink_s=3)
CALL_TIMEOUT = 600.0  # far above any tier's time here: a death must not wait for it
HOW = {"SegfaultAckStore": "killed by SIGSEGV", "ExitAckStore": "exited with status 0"}


@pytest.mark.parametrize("tier", [1, 2, 3, 5])
@pytest.mark.parametrize("store", sorted(HOW))
def test_a_store_that_ends_its_process_fails_the_tier_at_once_naming_the_call(store, tier):
    cert = certify(f"tests.store_zoo:{store}", budget=SMALL, tiers=[tier], seed=3, reports_dir=None, progress=None,
                   call_timeout=CALL_TIMEOUT, overrides={"crashes": 4, "powercuts": 3, "t2_seconds": 0.3})
    t = cert.tier(tier)
    assert t.status == FAILED and not t.harness_error, (t.status, t.reason, t.notes)
    assert "exception" in t.failed_properties(), t.counterexamples
    text = " ".join(c.message for c in t.counterexamples)
    assert "record_train_ack" in text and HOW[store] in text, text
    assert "did not return" not in text and "hang" not in text
    assert t.duration_s < CALL_TIMEOUT / 2
    assert cert.exit_code == 1


def _exit_3():
    os._exit(3)


def test_a_child_that_dies_outside_any_store_call_is_a_harness_error(tmp_path):
    r = in_child(_exit_3, workdir=str(tmp_path), timeout=60)
    assert not r["ok"] and r["died"] == {"exit_code": 3, "how": "exited with status 3", "calls": [],
                                         "in_store": False, "child": "probe"}
    with pytest.raises(RuntimeError, match="outside any store call"):
        child_failure(1, r, ctx=None)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_certify_never_forks_the_certifier_even_with_threads_running(monkeypatch):
    """The certifier has a thread of its own (as under Ray or torch); every child must come from
    the fork server (or spawn), never from os.fork in this process."""
    forks = []

    def no_fork():
        forks.append(threading.active_count())
        raise AssertionError("certify forked the certifier")

    stop = threading.Event()
    th = threading.Thread(target=stop.wait, daemon=True)
    th.start()
    monkeypatch.setattr(os, "fork", no_fork)
    try:
        cert = certify("tests.store_zoo:SqliteStore", budget=SMALL, tiers=[1, 2, 3], seed=5, reports_dir=None,
                       progress=None, overrides={"crashes": 4, "t2_seconds": 0.3})
    finally:
        stop.set()
        th.join()
    assert forks == []
    assert [cert.tier(n).status for n in (1, 2, 3)] == [PASSED] * 3, [cert.tier(n) for n in (1, 2, 3)]
