"""Tier 2's verdict does not depend on the machine's load.

Two busy-loop processes (one per core here) run for the whole test; the same
store and seed then get the same tier-2 verdict 20 times in a row: the zoo's
TornMemoryMarkerStore (an ack written id by id, the marker read without the
lock) is rejected for P5 every time, the reference SQLite store is certified
every time. The ackers run until the readers have read during enough acks, so
a loaded machine makes the tier slower, not blinder.
"""

import os
import signal
import subprocess
import sys

import pytest

from harness.certify import FAILED, PASSED, certify
from harness.certify.certificate import Budget
from harness.certify.loader import load

RUNS = 20
SMALL = Budget("load", t1_examples=10, t1_steps=10, t2_scale=0.2, t3_crashes=4, t4_seeds=1, t1_shrink_s=2)


@pytest.fixture
def busy_cores():
    n = os.cpu_count() or 2
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield n
    finally:
        for p in procs:
            p.send_signal(signal.SIGKILL)
            p.wait(30)


def _tier2(target, **kw):
    return certify(target, budget=SMALL, tiers=[2], seed=11, reports_dir=None, progress=None, **kw).tier(2)


# Two tests, not one: xdist runs them side by side (each with its own busy loops, so the cores are
# busier still), which halves the suite's longest test.
@pytest.mark.slow
def test_torn_store_is_rejected_for_p5_20_of_20_with_every_core_busy(busy_cores):
    torn_store = load("tests.store_zoo:TornMemoryMarkerStore")  # loaded (and probed) once: the runs repeat tier 2
    torn = [_tier2(torn_store, profile="volatile", overrides={"stop_at_first_failure": True}) for _ in range(RUNS)]
    assert [t.status for t in torn] == [FAILED] * RUNS, [(t.status, t.counters) for t in torn]
    assert all("P5 ack atomicity" in t.failed_properties() for t in torn), [t.failed_properties() for t in torn]


@pytest.mark.slow
def test_reference_sqlite_store_is_certified_20_of_20_with_every_core_busy(busy_cores):
    reference_store = load("reference_impl.stores.sqlite:SQLiteMetadataStore")
    reference = [_tier2(reference_store) for _ in range(RUNS)]
    assert [t.status for t in reference] == [PASSED] * RUNS, [(t.status, t.counterexamples[:1]) for t in reference]
    assert all(t.counters["marker_reads_during_acks"] > 0 for t in reference)
