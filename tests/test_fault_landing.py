"""Faults count only when seen to land (issue 16): the spawn race, the ledger, the inconclusive verdict."""

import json
import os
import signal
import sys
import time

import pytest

from harness.faults import Failpoint, Kill, Pause
from harness.process_engine.fault_ledger import FaultLedger
from harness.process_engine.runner import run_scenario
from harness.process_engine.supervisor import Supervisor
from harness.verdict import judge, verdict_word
from reference_impl.config import RunConfig, write_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KILL0 = os.path.join(REPO, "tests", "fixtures", "kill0.toml")

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups, /proc: Linux only")


def written_config(tmp_path) -> RunConfig:
    """The default run config, written in a fresh work dir under tmp_path."""
    cfg = RunConfig(workdir=str(tmp_path / "run"))
    os.makedirs(cfg.workdir)
    write_config(cfg)
    return cfg


def test_zygote_child_is_its_own_group_when_spawn_returns(tmp_path):
    """The race of issue 16: killpg right after a zygote spawn used to fail with ESRCH."""
    cfg = written_config(tmp_path)
    sup = Supervisor(cfg.workdir, launcher="zygote")
    try:
        for _ in range(10):
            p = sup.spawn("consumer", "reference_impl.consumer", ["--config", cfg.path("config.json")])
            assert p.launcher == "zygote"
            assert os.getpgid(p.pid) == p.pid  # in its own group before anyone could signal it
            assert p.signal_group(signal.SIGKILL), p.last_signal_error
            deadline = time.monotonic() + 20
            while p.poll() is None:
                assert time.monotonic() < deadline
                time.sleep(0.005)
            assert p.code == -signal.SIGKILL
    finally:
        sup.shutdown()


def test_signal_group_reports_esrch_instead_of_swallowing_it(tmp_path):
    cfg = written_config(tmp_path)
    sup = Supervisor(cfg.workdir, launcher="spawn")
    try:
        p = sup.spawn("consumer", "reference_impl.consumer", ["--config", cfg.path("config.json")])
        p.signal_group(signal.SIGKILL)
        p.popen.wait(timeout=30)
        assert p.signal_group(signal.SIGKILL) is False and "ESRCH" in p.last_signal_error
    finally:
        sup.shutdown()


def test_ledger_kill_lands_only_on_death_by_that_signal():
    ledger = FaultLedger([Kill(id=0, target="consumer", at_s=0.0), Kill(id=1, target="producer", at_s=0.0),
                          Pause(id=2, target="producer", at_s=0.0, duration_s=0.1),
                          Failpoint(id=3, target="consumer", point="consumer.after_read_before_train", hit=1,
                                    incarnation=1)])
    ledger.kill_sent(0, "consumer", 0, pid=1)
    ledger.kill_sent(1, "producer", 0, pid=2)
    ledger.on_exit("consumer", 0, -signal.SIGKILL)
    ledger.on_exit("producer", 0, 0)  # it had finished on its own: the kill did nothing
    ledger.finish([], "the run ended (completed)")
    s = ledger.summary()
    assert s["planned"] == 4 and s["landed"] == 1
    reasons = {m["index"]: m["reason"] for m in s["missed"]}
    assert "exited with code 0" in reasons[1]
    assert "never delivered" in reasons[2]
    assert "not reached" in reasons[3]
    assert [m["target"] for m in s["missed"]] == ["producer", "producer", "consumer"]


def test_missed_faults_make_the_verdict_inconclusive_unless_allowed():
    props = {"P1": {"valid": True}}
    faults = {"planned": 2, "landed": 1, "missed": [{"index": 1, "kind": "kill", "target": "producer",
                                                     "at": "at_s=0", "reason": "target exited already"}]}
    v = judge(props, "completed", {"outcome": ["completed"], "violates": []}, faults=faults)
    assert v["inconclusive"] and not v["as_expected"] and verdict_word(v) == "INCONCLUSIVE"
    v = judge(props, "completed", {"outcome": ["completed"], "violates": [], "allow_missed_faults": True},
              faults=faults)
    assert not v["inconclusive"] and v["as_expected"]
    # A violation nobody expected stays unexpected, missed faults or not.
    v = judge({"P1": {"valid": False}}, "completed", {"outcome": ["completed"], "violates": []}, faults=faults)
    assert not v["inconclusive"] and not v["as_expected"] and verdict_word(v) == "UNEXPECTED"


def test_kill0_lands_both_kills(tmp_path):
    r = run_scenario(KILL0, 0, reports_dir=str(tmp_path), render=False)
    with open(os.path.join(r.report_dir, "result.json")) as f:
        result = json.load(f)
    assert result["faults"] == {"planned": 2, "landed": 2, "missed": []}, result["faults"]
    assert result["incarnations"] == {"consumer": 2, "producer": 2}
    assert "faults_fired" not in result and result["verdict"]["inconclusive"] is False
    assert r.as_expected and r.exit_code == 0


@pytest.mark.slow
def test_a_fault_that_cannot_land_is_inconclusive_exit_3(tmp_path, capsys):
    from harness.cli import main

    sc = tmp_path / "never.toml"
    body = ('name = "never"\n[workload]\nsamples = 16\n'
            '[[faults.explicit]]\nkind = "kill"\ntarget = "consumer"\nat_consumed = 100000\n')
    sc.write_text(body)
    assert main(["run", str(sc), "--reports", str(tmp_path / "r"), "--quiet"]) == 3
    out = capsys.readouterr()
    assert "INCONCLUSIVE" in out.out and "inconclusive" in out.err
    (rdir,) = os.listdir(tmp_path / "r")
    with open(tmp_path / "r" / rdir / "result.json") as f:
        result = json.load(f)
    assert result["faults"]["landed"] == 0 and result["faults"]["missed"][0]["index"] == 0
    assert "before the trigger held" in result["faults"]["missed"][0]["reason"]
    sc.write_text(body + "[expect]\nallow_missed_faults = true\n")
    assert main(["run", str(sc), "--reports", str(tmp_path / "r2"), "--quiet"]) == 0


def test_planned_ids_are_not_materialised():
    """After a timeout the final state used to build a list of every planned id (1e9 samples: GBs)."""
    import tracemalloc

    from harness.final_state import PlannedIds

    cfg = RunConfig(num_samples=10 ** 9)
    tracemalloc.start()
    ids = PlannedIds(cfg)
    assert len(ids) == 10 ** 9 and ids[0] == cfg.sample_id(0) and ids[-1] == cfg.sample_id(10 ** 9 - 1)
    assert ids[5:7] == [cfg.sample_id(5), cfg.sample_id(6)]
    assert list(zip(ids, [1.0, 0.0])) == [(cfg.sample_id(0), 1.0), (cfg.sample_id(1), 0.0)]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 1 << 20, peak


KILL_AT_END = os.path.join(REPO, "tests", "fixtures", "kill_at_end.toml")


def _events(report_dir, ev):
    out = []
    hist = os.path.join(report_dir, "work", "history")
    for name in sorted(os.listdir(hist)):
        with open(os.path.join(hist, name)) as f:
            out += [json.loads(line) for line in f if f'"{ev}"' in line]
    return [e for e in out if e["ev"] == ev]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_kill_planned_at_a_process_last_count_lands_at_its_end(tmp_path, seed):
    """Each kill's trigger holds only once its process has done all its work, a moment before it exits:
    a runner looking at the progress every few ms missed both kills in 6 of 6 runs. Started with a kill
    still planned for it, a process writes a `hold` event at its end and stops itself, and the kill lands
    there."""
    from harness.scenario import load_scenario

    r = run_scenario(load_scenario(KILL_AT_END), seed, reports_dir=str(tmp_path), render=False, keep_work=True)
    assert r.faults == {"planned": 2, "landed": 2, "missed": []}, r.faults
    assert r.as_expected, r.verdict
    # Each kill lands at its process's hold, or just before it when the runner is quick enough to see
    # the trigger in the moment between the last count and the hold; no later incarnation holds.
    holds = _events(r.report_dir, "hold")
    assert {(e["proc"], e["inc"]) for e in holds} <= {("consumer", 0), ("producer", 0)}, holds
    kills = _events(r.report_dir, "kill")
    assert sorted(k["target"] for k in kills) == ["consumer", "producer"]
    # the incarnations started after the kills have none planned: they end without a hold
    exits = {(e["proc"], e["inc"]) for e in _events(r.report_dir, "exit") if e.get("code") == 0}
    assert {("producer", 1), ("consumer", 1)} <= exits, exits


def test_a_held_process_whose_kill_cannot_be_due_goes_on(tmp_path):
    """A kill whose trigger does not hold at the process's end (one record more than the workload) will
    never be due: the hold is released (SIGCONT), the process exits 0 and the kill is reported missed,
    as before. (A kill planned for a later incarnation arms no hold in this one.)"""
    from harness.scenario import load_scenario

    sc = load_scenario(KILL_AT_END)
    sc.explicit_faults[:] = [Kill(target="producer", at_published=301)]
    r = run_scenario(sc, 0, reports_dir=str(tmp_path), render=False, keep_work=True)
    assert r.faults["landed"] == 0 and len(r.faults["missed"]) == 1, r.faults
    assert r.outcome == "completed"
    assert [(e["proc"], e["inc"]) for e in _events(r.report_dir, "hold")] == [("producer", 0)]
    conts = [e for e in _events(r.report_dir, "cont") if e.get("target") == "producer"]
    assert len(conts) == 1 and conts[0].get("fault") is None, conts
