"""Power-cut certify trials: the power-loss zoo is rejected, correct stores pass."""

from __future__ import annotations

import pytest

from harness.certify import tier5_power_loss
from harness.powerloss.rebuild import PowercutStats
from tests.store_zoo.powerloss import POWERLOSS_PASSING, POWERLOSS_ZOO

from .conftest import needs_cc

pytestmark = needs_cc


@pytest.mark.slow
@pytest.mark.parametrize("spec", sorted(POWERLOSS_ZOO))
def test_powerloss_zoo_rejected(spec, tmp_path):
    findings = tier5_power_loss.run_powercut_trials(spec, str(tmp_path), trials=15, seed=7)
    assert findings, f"{spec} passed 15 power-cut trials"
    assert findings[0]["property"] == POWERLOSS_ZOO[spec], findings[0]
    assert "power cut" in " ".join(findings[0]["steps"]) and findings[0]["powercut"]["records"] > 0
    assert list(tmp_path.iterdir()) == []  # store dirs and the journal cleaned up


@pytest.mark.slow
@pytest.mark.parametrize("spec", POWERLOSS_PASSING)
def test_correct_stores_pass(spec, tmp_path):
    counters = {}
    findings = tier5_power_loss.run_powercut_trials(spec, str(tmp_path), trials=6, seed=11, counters=counters)
    assert findings == []
    assert counters["trials"] == 6


@pytest.mark.slow
def test_a_sigkill_alone_does_not_catch_sync_off(tmp_path, monkeypatch):
    """Without the rebuild (a plain SIGKILL keeps every written page) synchronous=OFF passes:
    it is the power cut that exposes it."""
    monkeypatch.setattr(tier5_power_loss, "powercut", lambda *a, **k: PowercutStats())
    findings = tier5_power_loss.run_powercut_trials("tests.store_zoo.powerloss:SyncOffStore", str(tmp_path), trials=6,
                                                 seed=7)
    assert findings == []


def test_tier_result_wrapper(tmp_path):
    from harness.certify.certificate import BUDGETS, FAILED
    from harness.certify.common import Context
    from harness.certify.loader import load

    ctx = Context(target=load("tests.store_zoo.powerloss:SyncOffStore"), profile="durable", budget=BUDGETS["quick"],
                  seed=3, workroot=str(tmp_path), overrides={"powercuts": 5})
    res = tier5_power_loss.run(ctx)
    assert res.tier == 5 and res.status == FAILED and res.counterexamples[0].property == "P6 durability"
    assert res.counterexamples[0].detail["powercut"]["unsynced_writes_dropped"] > 0
    assert res.counters["trials"] >= 1 and res.counters["unsynced_writes_dropped"] > 0


@pytest.mark.slow
def test_certify_tier5_rejects_sync_off_and_certifies_the_reference(tmp_path):
    """Tier 5 of `certify` (durable profile) is these trials: a store that never fsyncs
    is no longer certified durable; the reference SQLite store still is."""
    from harness.certify import FAILED, PASSED, certify
    from harness.certify.certificate import Budget

    small = Budget("t", t1_examples=5, t1_steps=5, t2_scale=0.3, t3_crashes=10, t4_seeds=1, t1_shrink_s=2)
    bad = certify("tests.store_zoo.powerloss:SyncOffStore", budget=small, tiers=[5], seed=7, reports_dir=None,
                  progress=None, overrides={"powercuts": 15})
    assert bad.tier(5).status == FAILED and "P6 durability" in bad.tier(5).failed_properties()
    assert bad.exit_code == 1
    good = certify("reference_impl.stores.sqlite:SQLiteMetadataStore", budget=small, tiers=[5], seed=7,
                   reports_dir=None, progress=None, overrides={"powercuts": 6})
    assert good.tier(5).status == PASSED and good.tier(5).counters["trials"] == 6
    vol = certify("reference_impl.stores.memory:InMemoryMetadataStore", profile="volatile", budget=small, tiers=[5],
                  seed=7, reports_dir=None, progress=None)
    assert vol.tier(5).status == "not applicable"
