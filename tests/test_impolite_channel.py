"""The impolite channel: `duplicate` (records written again) and `replay` (the read position
moved back) in the process engine. The reference keeps P1 and P2; without its dedup
(`tests.pipeline_zoo:consumer_without_dedup`) a sample is trained twice. The simulation
engine's side is in tests/test_exhaustive.py."""

from __future__ import annotations

import pytest

from harness.faults import FaultError, fault_from_dict
from harness.process_engine.runner import run_scenario
from harness.scenario import load_scenario
from tests.pipeline_zoo import CHANNEL_SCENARIOS, CHANNEL_ZOO


def test_fault_kinds_validate():
    d = fault_from_dict({"kind": "duplicate", "target": "producer", "point": "producer.after_commit_before_publish",
                         "hit": 2, "records": 3}, "t")
    assert d.rule() == {"point": "producer.after_commit_before_publish", "action": "duplicate", "hit": 2, "times": 1,
                        "records": 3}
    assert not d.ends()
    with pytest.raises(FaultError, match="'target'"):
        fault_from_dict({"kind": "replay", "target": "producer", "point": "consumer.after_read_before_train"}, "t")
    with pytest.raises(FaultError, match="'point'"):
        fault_from_dict({"kind": "replay", "target": "consumer", "point": "channel.mid_append"}, "t")
    with pytest.raises(FaultError, match="'records'"):
        fault_from_dict({"kind": "replay", "target": "consumer", "point": "consumer.after_read_before_train",
                         "records": 0}, "t")


@pytest.mark.parametrize("name", CHANNEL_SCENARIOS)
def test_the_reference_survives_an_impolite_channel(name, tmp_path):
    r = run_scenario(name, 0, reports_dir=str(tmp_path), render=False)
    assert r.as_expected and r.outcome == "completed", r.verdict
    assert r.faults["landed"] == r.faults["planned"] == 3
    kind = name.split("-", 1)[1]
    assert sum(r.coverage["faults"][kind].values()) == 3
    assert r.coverage["sometimes"]["duplicate_rejected"] > 0


@pytest.mark.parametrize("name", CHANNEL_SCENARIOS)
@pytest.mark.parametrize("member", sorted(CHANNEL_ZOO))
def test_an_impolite_channel_catches_a_consumer_without_dedup(member, name, tmp_path):
    sc = load_scenario(name)
    sc.topology["variant"] = f"tests.pipeline_zoo:{member}"
    sc.expect["violates"] = [CHANNEL_ZOO[member]]
    r = run_scenario(sc, 0, reports_dir=str(tmp_path), render=False)
    assert CHANNEL_ZOO[member] in r.verdict["violated"], (r.outcome, r.verdict)
