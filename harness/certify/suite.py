"""The certification tiers as a pytest base class, for a backend's own test suite.

    # tests/test_my_store.py in the backend's repository
    from harness.certify.suite import MetadataStoreSuite
    from my_backend import MyStore

    class TestMyStore(MetadataStoreSuite):
        store_factory = MyStore            # a class, or staticmethod(fn) taking a working directory
        store_spec = "my_backend:MyStore"  # optional: lets tier 4 start the pipeline on it
        profile = "durable"                # optional: default from the store
        budget = "quick"                   # quick | standard | thorough | a Budget
        tiers = (1, 2, 3, 4, 5, 6)         # default: every tier

Each tier of the registry (`harness.certify.tiers.TIERS`) is one test:
`test_tier1_contract`, `test_tier2_concurrency`, `test_tier3_crash`,
`test_tier4_end_to_end`, `test_tier5_power_loss`, `test_tier6_network`. A failing tier fails its
test with the counterexamples and how to reproduce them; a tier that does not
apply to the store or profile, or that is not in `tiers`, is skipped with the
reason (never passed). Set `reports_dir` to also keep a certificate per tier.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

from . import tiers as _tiers
from .certificate import NOT_APPLICABLE, Budget, TierResult


def _class_attr(cls: type, name: str) -> Any:
    """The attribute as written on the class (a plain function is not turned into a method)."""
    for klass in cls.__mro__:
        if name in vars(klass):
            v = vars(klass)[name]
            if isinstance(v, (staticmethod, classmethod)):
                return v.__func__
            return v
    return None


def format_tier(t: TierResult) -> str:
    lines = [f"tier {t.tier} {t.name}: {t.status}" + (f" ({t.reason})" if t.reason else "")]
    for c in t.counterexamples:
        lines.append(f"  [{c.property}] {c.message}")
        for s in c.steps[:20]:
            lines.append(f"      {s}")
        if c.reproduce:
            lines.append(f"    reproduce: {c.reproduce}")
    for w in t.warnings:
        lines.append(f"  warning: {w}")
    for n in t.notes:
        lines.append(f"  note: {n}")
    return "\n".join(lines)


class MetadataStoreSuite:
    """Subclass in a test module and set `store_factory`; pytest collects the tier tests."""

    store_factory: Any = None
    store_spec: Optional[str] = None
    profile: Optional[str] = None
    budget: Union[str, Budget] = "quick"
    tiers: Sequence[int] = _tiers.NUMBERS
    seed: Optional[int] = None
    reports_dir: Optional[str] = None
    overrides: Optional[dict] = None
    records: Optional[str] = None  # module of the store's SampleRef (as --records); default: found from the store
    call_timeout: Optional[float] = None  # seconds per construction and store call (as --call-timeout)

    def run_tier(self, n: int) -> TierResult:
        import pytest

        from . import LoadError, certify

        cls = type(self)
        factory = _class_attr(cls, "store_factory")
        if factory is None:
            pytest.fail(f"{cls.__name__}: set store_factory to the store class or a callable taking a working "
                        "directory",
                        pytrace=False)
        if n not in tuple(self.tiers):
            pytest.skip(f"tier {n} not in {cls.__name__}.tiers")
        try:
            cert = certify(
                factory,
                spec=self.store_spec,
                profile=self.profile,
                budget=self.budget,
                tiers=[n],
                seed=self.seed,
                reports_dir=self.reports_dir,
                progress=None,
                overrides=self.overrides,
                records=self.records,
                call_timeout=self.call_timeout,
            )
        except LoadError as e:
            pytest.fail(f"cannot certify {cls.__name__}.store_factory: {e}", pytrace=False)
        t = cert.tier(n)
        if t.status == NOT_APPLICABLE:
            pytest.skip(f"tier {n} {t.name} not applicable: {t.reason}")
        if t.failing:
            pytest.fail(format_tier(t) + f"\n(profile {cert.profile}, seed {cert.seed})", pytrace=False)
        return t


def _tier_test(n: int):
    def test(self):
        self.run_tier(n)

    test.__doc__ = f"Tier {n} {_tiers.name_of(n)} of the certification."
    return test


for _tier in _tiers.TIERS:  # one test per tier, named from the registry
    _name = _tiers.suite_test_name(_tier)
    _test = _tier_test(_tier.number)
    _test.__name__ = _test.__qualname__ = _name
    setattr(MetadataStoreSuite, _name, _test)
del _tier, _name, _test
