"""The pytest suite is generated from the tier registry: one test per tier, tier 5 included.

`TestReferencePowerLoss` is the suite as a backend's repository uses it, with
only tier 5 selected (the other tier tests are skipped as not selected); the
store that never fsyncs fails the same tier test.
"""

import pytest

from harness.certify import tiers
from harness.certify.certificate import Budget
from harness.certify.suite import MetadataStoreSuite
from reference_impl.stores.sqlite import SQLiteMetadataStore
from tests.store_zoo.powerloss import SyncOffStore

SMALL = Budget("suite", t1_examples=10, t1_steps=10, t2_scale=0.2, t3_crashes=6, t4_seeds=1, t1_shrink_s=2)


def test_the_suite_has_one_test_per_registered_tier():
    names = sorted(n for n in dir(MetadataStoreSuite) if n.startswith("test_tier"))
    assert names == sorted(tiers.suite_test_name(t) for t in tiers.TIERS)
    assert "test_tier5_power_loss" in names and "test_tier4_end_to_end" in names
    assert tuple(MetadataStoreSuite.tiers) == tiers.NUMBERS


class TestReferencePowerLoss(MetadataStoreSuite):
    store_factory = SQLiteMetadataStore
    store_spec = "reference_impl.stores.sqlite:SQLiteMetadataStore"  # tier 5 starts its own processes
    budget = SMALL
    tiers = (5,)
    seed = 4
    overrides = {"powercuts": 4}


def test_the_suites_tier5_test_fails_for_a_store_that_never_syncs():
    class SyncOff(MetadataStoreSuite):
        store_factory = SyncOffStore
        store_spec = "tests.store_zoo.powerloss:SyncOffStore"
        budget = SMALL
        tiers = (5,)
        seed = 7
        overrides = {"powercuts": 12}

    with pytest.raises(pytest.fail.Exception, match="P6 durability"):
        SyncOff().test_tier5_power_loss()
