"""Tier 2's verdict does not depend on the machine's load.

The same store and seed get the same tier-2 verdict 20 times on a loaded
machine: the zoo's TornMemoryMarkerStore (an ack written id by id, the marker
read without the lock) is rejected for P5 every time, the reference SQLite
store is certified every time. The ackers run until the readers have read
during enough acks, so a loaded machine makes the tier slower, not blinder.

The load is what the test starts: one busy-loop process per core for the
whole test, and the 20 runs themselves, in `STREAMS` processes side by side,
so each run shares the cores with the busy loops and with three other runs'
processes. (The runs used to go one after another under the busy loops alone:
a reference run took about 7 s of wall then and 14 s now, so each is loaded
more, and the busy loops, which run all along, run half as long: the two
tests took 142 and 31 s side by side, now 72 and 22 s.)
"""

import json
import os
import signal
import subprocess
import sys

import pytest

from harness.certify import FAILED, PASSED

RUNS = 20
STREAMS = 4
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One stream: `runs` tier-2 runs of one store, one after another, one JSON line each.
STREAM = """
import json, sys
from harness.certify import certify
from harness.certify.certificate import Budget
from harness.certify.loader import load

spec, profile, runs, overrides = sys.argv[1], sys.argv[2] or None, int(sys.argv[3]), json.loads(sys.argv[4])
small = Budget("load", t1_examples=10, t1_steps=10, t2_scale=0.2, t3_crashes=4, t4_seeds=1, t1_shrink_s=2)
target = load(spec)  # loaded (and probed) once: the runs repeat tier 2
for _ in range(runs):
    t = certify(target, budget=small, tiers=[2], seed=11, reports_dir=None, progress=None, profile=profile,
                overrides=overrides).tier(2)
    print(json.dumps({"status": t.status, "failed": t.failed_properties(), "counters": t.counters,
                      "first": [c.message for c in t.counterexamples[:1]]}), flush=True)
"""


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


def _tier2_runs(spec, profile=None, overrides=None):
    """RUNS tier-2 verdicts of `spec`, from STREAMS processes running side by side."""
    per = [RUNS // STREAMS + (i < RUNS % STREAMS) for i in range(STREAMS)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    procs = [subprocess.Popen([sys.executable, "-c", STREAM, spec, profile or "", str(n), json.dumps(overrides or {})],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
             for n in per]
    runs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=900)
            assert p.returncode == 0, err[-3000:]
            runs += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert len(runs) == RUNS, runs
    return runs


# Two tests, not one: xdist runs them side by side (each with its own busy loops, so the cores are
# busier still), which halves the suite's longest test.
@pytest.mark.slow
def test_torn_store_is_rejected_for_p5_20_of_20_with_every_core_busy(busy_cores):
    torn = _tier2_runs("tests.store_zoo:TornMemoryMarkerStore", "volatile", {"stop_at_first_failure": True})
    assert [t["status"] for t in torn] == [FAILED] * RUNS, [(t["status"], t["counters"]) for t in torn]
    assert all("P5 ack atomicity" in t["failed"] for t in torn), [t["failed"] for t in torn]


@pytest.mark.slow
def test_reference_sqlite_store_is_certified_20_of_20_with_every_core_busy(busy_cores):
    reference = _tier2_runs("reference_impl.stores.sqlite:SQLiteMetadataStore")
    assert [t["status"] for t in reference] == [PASSED] * RUNS, [(t["status"], t["first"]) for t in reference]
    assert all(t["counters"]["marker_reads_during_acks"] > 0 for t in reference)
