import pytest

from reference_impl.contracts import SampleRef
from reference_impl.controller import DataFlowController, LedgerLost
from reference_impl.stores import InMemoryMetadataStore


def ref(i):
    return SampleRef(sample_id=f"s{i}", run_id="r", source_task_id="t", feature_store_uri="u", feature_keys={},
                     feature_specs={}, strategy="eagle3", target_model_version="v", num_tokens=1,
                     estimated_bytes=1, metadata={})


@pytest.fixture
def ctl():
    c = DataFlowController(InMemoryMetadataStore())
    assert c.commit([ref(i) for i in range(6)]) == [True] * 6
    assert c.commit([ref(0), ref(9)]) == [False, True]
    return c


def test_released_and_requeued(ctl):
    ctl.ack(["s0", "s1"], global_step=1)
    rec = ctl.reconcile({"global_step": 1, "unacked": ["s0", "s1"], "ledger_id": ctl.ledger_id()})
    assert rec.released == ["s0", "s1"]
    assert rec.requeued == ["s2", "s3", "s4", "s5", "s9"]
    assert rec.rolled_forward == []


def test_checkpoint_ahead_of_ledger_rolls_the_ack_forward(ctl):
    ctl.ack(["s0"], global_step=1)
    rec = ctl.reconcile({"global_step": 2, "unacked": ["s1", "s2"], "ledger_id": ctl.ledger_id()})
    assert rec.rolled_forward == ["s1", "s2"]
    assert rec.released == ["s0", "s1", "s2"]
    assert ctl.store.durable_marker()["global_step"] == 2


def test_crash_between_first_checkpoint_and_first_ack_rolls_forward(ctl):
    # Found by the crash-loop scenario: this was once misread as a lost ledger.
    rec = ctl.reconcile({"global_step": 1, "acked_step": 0, "unacked": ["s0", "s1"], "ledger_id": ctl.ledger_id()})
    assert rec.rolled_forward == ["s0", "s1"] and rec.released == ["s0", "s1"]


def test_lost_ledger_fails_closed(ctl):
    with pytest.raises(LedgerLost, match="saw step 2 acked"):
        ctl.reconcile({"global_step": 3, "acked_step": 2, "unacked": []})
    ctl.ack(["s0"], global_step=1)
    with pytest.raises(LedgerLost, match="not the ledger"):
        ctl.reconcile({"global_step": 1, "unacked": [], "ledger_id": "another-ledger"})


def test_ledger_ahead_of_checkpoint_fails_closed(ctl):
    ctl.ack(["s0"], global_step=4)
    with pytest.raises(LedgerLost) as e:
        ctl.reconcile({"global_step": 2, "unacked": [], "ledger_id": ctl.ledger_id()})
    assert e.value.reason == "checkpoint_behind_ledger"
