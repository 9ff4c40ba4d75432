"""What both engines share: config mapping, progress, outcome roll-up, durability, verdict."""

import os

import pytest

from harness import run_plumbing as rp
from harness.run_plumbing import Progress, SidecarUnreadable, durable_store, roll_up, verdict
from harness.scenario import load_scenario
from harness.simulate.engine import DEFAULT_WORKLOAD
from reference_impl.channel import CHANNEL, CONSUMED, ChannelWriter, write_consumed


@pytest.mark.parametrize("statuses, outcome", [
    (["done", "done"], "completed"), (["done", "fail_closed"], "fail_closed"),
    (["failed", "fail_closed"], "fail_closed"), (["error", "fail_closed"], "error"),
    (["failed", "peer_failed"], "failed"), (["done", "running"], None), (["down", "done"], None)])
def test_roll_up(statuses, outcome):
    assert roll_up(statuses) == outcome


def test_durable_store():
    assert durable_store("sqlite", 3) and durable_store("pkg.mod:Store", 0)
    assert durable_store("inmemory", 0) and not durable_store("inmemory", 1)
    assert not durable_store("private", 0)


def test_verdict_is_judge():
    props = {"P1": {"valid": False}, "P2": {"valid": True}}
    assert verdict(props, "completed", ["P1"])["as_expected"] is True
    assert verdict(props, "completed")["as_expected"] is False
    assert verdict({}, "fail_closed", (), ["completed", "fail_closed"])["as_expected"] is True


def test_configs_of_both_engines(tmp_path):
    sc = load_scenario("kill-random")
    cfg = rp.scenario_config(sc, 3, str(tmp_path))
    assert cfg.run_id == "kill-random-3" and cfg.num_samples == sc.workload["samples"]
    sim = rp.simulation_config(str(tmp_path), DEFAULT_WORKLOAD, "sqlite", 5)
    assert sim.run_id == "sim-5" and sim.world_size == 1 and sim.poll_interval_s == 0.0


def test_progress_counts_records_and_reads_the_sidecar(tmp_path):
    d = str(tmp_path)
    seen = []
    prog = Progress(d, on_anomaly=lambda kind, msg: seen.append(kind))
    assert prog.update_published() == 0 and prog.read_consumed() is None
    w = ChannelWriter(d)
    w.append([{"sample_id": f"s{i}"} for i in range(3)], 0)
    w.close()
    with open(os.path.join(d, CHANNEL), "ab") as f:
        f.write(b'{"partial"')  # an unfinished record is not counted
    assert prog.update_published() == 3
    write_consumed(d, 2)
    assert prog.read_consumed() == 2
    with open(os.path.join(d, CHANNEL), "r+b") as f:
        f.truncate(10)
    prog.update_published()
    assert seen == ["channel_truncated"]
    with open(os.path.join(d, CONSUMED), "w") as f:
        f.write("garbage")
    with pytest.raises(SidecarUnreadable):
        prog.read_consumed()
    prog.update()  # tolerant: keeps the last count
    assert prog.consumed == 2
