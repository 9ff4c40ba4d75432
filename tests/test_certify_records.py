"""Records follow the backend: discovery order, derived strategies, field-by-field
comparison, and whose fault a rejected record is (exit 2 naming --records)."""

import dataclasses
import random

import pytest
import specforge.runtime.contracts as sf_contracts
import specforge.runtime.control_plane.metadata_store as sf_store
from hypothesis import find
from hypothesis import strategies as st

from harness.certify import FAILED, PASSED, certify
from harness.certify.certificate import Budget
from harness.certify.cli import main
from harness.certify.records import Records, discover, plain
from reference_impl import contracts as ref_contracts
from tests.store_zoo import foreign_records, hidden_records
from tests.store_zoo.foreign_records import SampleRef  # noqa: F401 - the namespace a store below is found by

SMALL = Budget("t", t1_examples=30, t1_steps=15, t2_scale=0.5, t3_crashes=10, t4_seeds=1, t1_shrink_s=5)


class _UnannotatedHere:
    """No annotation, no base: found through SampleRef in this module's namespace."""

    def commit_sample(self, ref):
        return True


def test_discovery_order():
    assert discover(sf_store.SQLiteMetadataStore).ref_cls is sf_contracts.SampleRef  # annotation
    assert "annotation" in discover(sf_store.SQLiteMetadataStore).source
    assert discover(hidden_records.AnnotatedForeignStore).ref_cls is foreign_records.SampleRef
    found = discover(_UnannotatedHere)
    assert found.ref_cls is foreign_records.SampleRef and "module" in found.source
    explicit = discover(sf_store.SQLiteMetadataStore, explicit="tests.store_zoo.foreign_records")
    assert explicit.ref_cls is foreign_records.SampleRef  # the user's word wins
    assert discover(object).ref_cls is ref_contracts.SampleRef  # else the reference's


def test_reference_feature_spec_has_specforge_fields_order_and_defaults():
    ours = [(f.name, f.default) for f in dataclasses.fields(ref_contracts.FeatureSpec)]
    theirs = [(f.name, f.default) for f in dataclasses.fields(sf_contracts.FeatureSpec)]
    assert ours == theirs
    assert [f.name for f in dataclasses.fields(ref_contracts.SampleRef)] == [
        f.name for f in dataclasses.fields(sf_contracts.SampleRef)]


@pytest.mark.slow
def test_strategies_come_from_the_types_and_reach_every_field():
    recs = Records(foreign_records.SampleRef, "test")
    s = recs.strategy(st.just("x"))
    ref = find(s, lambda r: r.shard > 0
               and any(v.layout == "packed" and v.device_hint for v in r.feature_specs.values()))
    assert isinstance(ref, foreign_records.SampleRef)
    assert all(isinstance(v, foreign_records.FeatureSpec) for v in ref.feature_specs.values())
    sf = Records(sf_contracts.SampleRef, "test")
    r = sf.random_ref(random.Random(3), "y")
    assert r.strategy in ("eagle3", "dflash", "domino", "dspark", "peagle")  # Literal honoured
    assert sf.minimal_ref("z").target_model_version == "unknown"  # defaults kept


def test_refs_compare_field_by_field_never_by_type():
    sf = Records(sf_contracts.SampleRef, "test")
    r = sf.random_ref(random.Random(5), "a")
    as_dicts = dataclasses.asdict(r)  # nested FeatureSpecs as plain dicts
    assert sf.canon(r) == plain(as_dicts, sf_contracts.SampleRef)
    assert sf.canon(r) != sf.canon(dataclasses.replace(r, num_tokens=r.num_tokens + 1))


@pytest.mark.slow
def test_a_store_rejecting_the_harness_records_stops_with_exit_2_naming_its_records(tmp_path, capsys):
    assert main(["tests.store_zoo.hidden_records:UnannotatedForeignStore", "--quick",
                 "--reports-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unexpected keyword argument" in err and "pass --records tests.store_zoo.foreign_records" in err, err
    assert not list(tmp_path.iterdir())
    cert = certify(hidden_records.UnannotatedForeignStore, records="tests.store_zoo.foreign_records", budget=SMALL,
                   tiers=[1], reports_dir=None, progress=None, seed=4)
    assert cert.tier(1).status == PASSED, cert.tier(1).counterexamples
    assert cert.records["found_by"] == "--records tests.store_zoo.foreign_records"
    from harness.certify.records import active

    assert active().ref_cls is not foreign_records.SampleRef  # restored after the certification


@pytest.mark.slow
def test_an_extra_field_the_store_drops_is_caught_with_derived_records():
    cert = certify(hidden_records.DropsShardStore, budget=SMALL, tiers=[1], reports_dir=None, progress=None, seed=4)
    t = cert.tier(1)
    assert t.status == FAILED and t.failed_properties() == ["round-trip"]
    assert "shard" in t.counterexamples[0].message
    assert cert.records["SampleRef"] == "tests.store_zoo.foreign_records.SampleRef"


@dataclasses.dataclass(frozen=True)
class _PickyRef:
    sample_id: str
    run_id: str = ""

    def __post_init__(self):
        if self.run_id:
            raise ValueError(f"run_id must be empty, got {self.run_id!r}")


def test_a_record_the_harness_cannot_build_is_a_harness_error_not_the_backends():
    from harness.certify.certificate import NOT_RUN, Certificate, TierResult
    from harness.certify.records import RecordBuildError

    s = Records(_PickyRef, "test").strategy(st.just("x"))
    try:
        find(s, lambda r: False)
    except RecordBuildError as e:
        assert "_PickyRef" in str(e) and "run_id must be empty" in str(e)
    else:
        raise AssertionError("building a _PickyRef with a run_id should have raised RecordBuildError")
    cert = Certificate("b", None, "durable", "", None, "", "quick", 1, "")
    cert.tiers = [TierResult(1, NOT_RUN, reason="harness error, not the backend's: ...", harness_error=True),
                  TierResult(2, PASSED)]
    assert cert.exit_code == 3 and cert.verdict_code == "harness_error"
    assert cert.verdict.startswith("NOT CERTIFIED: harness error in tier 1 contract")
