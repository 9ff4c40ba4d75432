"""The certification suite used the way a backend's own repository uses it.

`MetadataStoreSuite` turns the certification tiers into pytest tests; here it
runs on the reference SQLite store (durable: tiers 1-3; tier 4 runs the whole
pipeline and belongs to the harness's own scenario tests) and on the
in-memory store (volatile: tiers 3 and 4 are skipped as not applicable).
"""

import pytest

from harness.certify.certificate import Budget
from harness.certify.suite import MetadataStoreSuite
from reference_impl.stores.memory import InMemoryMetadataStore
from reference_impl.stores.sqlite import SQLiteMetadataStore

# a smaller budget than --quick: these run on every test run
SMOKE = Budget("smoke", t1_examples=30, t1_steps=20, t2_scale=0.5, t3_crashes=25, t4_seeds=1, t1_shrink_s=10)


class TestSQLiteStoreContract(MetadataStoreSuite):
    pytestmark = pytest.mark.slow
    store_factory = SQLiteMetadataStore
    profile = "durable"
    budget = SMOKE
    tiers = (1, 2, 3)


class TestInMemoryStoreContract(MetadataStoreSuite):
    pytestmark = pytest.mark.slow
    store_factory = InMemoryMetadataStore
    budget = SMOKE
