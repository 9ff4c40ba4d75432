"""Every certificate renders, whatever tier fails and whatever its finding carries.

One counterexample of each property of each tier in the registry (plus the
kinds any tier can report: exception, liveness, a dead store process), with
steps and details that are not plain strings, and a tier number no entry has;
then the store-level findings. Both files are written and name every finding.
"""

import importlib
import json

import pytest

from harness.certify import tiers
from harness.certify.certificate import (
    FAILED,
    NOT_APPLICABLE,
    NOT_RUN,
    Certificate,
    Counterexample,
    TierResult,
    render_md,
    write,
)

ODD_STEPS = ["plain step", {"a dict": 1}, ("a", "tuple"), 42, None, "two\nlines", "a | pipe"]


def _cert(**kw):
    return Certificate(backend="tests.store_zoo:X", spec="tests.store_zoo:X", profile="durable",
                       profile_source="declared", adapter=None, factory_call="X(<workdir>/store.db)", budget="quick",
                       seed=1, command="python -m harness certify tests.store_zoo:X", **kw)


def _properties(tier):
    mod = importlib.import_module(f"harness.certify.{tier.module}")
    return list(mod.PROPERTIES) + ["exception", "liveness", "a property no tier names"]


def _every_finding():
    out = []
    for tier in tiers.TIERS:
        res = TierResult(tier=tier.number, status=FAILED, reason="failed", properties=_properties(tier),
                         counters={"trials": 3, "nested": {"x": 1}, "odd": object()},
                         warnings=["a warning", 7], notes=[None])
        for prop in _properties(tier):
            res.counterexamples.append(Counterexample(
                tier.number, prop, f"tier {tier.number} broke {prop}", steps=list(ODD_STEPS),
                reproduce="python -m harness certify ...",
                detail={"death": {"exit_code": -11, "calls": ["record_train_ack"]}, "blob": b"\x00\xff",
                        "obj": object()}))
        out.append(res)
    return out


def test_the_registry_lists_each_tier_once_with_a_module_and_a_heading():
    numbers = [t.number for t in tiers.TIERS]
    assert numbers == sorted(set(numbers)) == list(tiers.NUMBERS)
    for t in tiers.TIERS:
        assert t.name and t.steps_heading
        assert hasattr(importlib.import_module(f"harness.certify.{t.module}"), "run")
    assert tiers.name_of(99) == "tier 99" and tiers.steps_heading(99) == "Steps:"


def test_one_finding_of_each_kind_from_each_tier_renders(tmp_path):
    cert = _cert(tiers=_every_finding())
    cert.tiers.append(TierResult(tier=max(tiers.NUMBERS) + 1, status=FAILED, reason="a tier this version lacks",
                                 counterexamples=[Counterexample(max(tiers.NUMBERS) + 1, "network", "lost reply",
                                                                 steps=ODD_STEPS)]))
    cert.tiers.append(TierResult(tier=2, status=NOT_RUN, harness_error=True, reason="internal error"))
    md = render_md(cert)
    for t in cert.tiers:
        for c in t.counterexamples:
            assert f"tier {c.tier} ({tiers.name_of(c.tier)}), property `{c.property}`" in md
            assert c.message in md
    for t in tiers.TIERS:
        assert t.steps_heading in md
    assert "two" in md and "lines" in md and "{'a dict': 1}" in md
    write(cert, str(tmp_path))
    data = json.loads((tmp_path / "certificate.json").read_text())
    assert data["verdict_code"] == "rejected" and data["exit_code"] == 1
    assert (tmp_path / "certificate.md").read_text() == render_md(cert)


@pytest.mark.parametrize("finding", [
    {"kind": "retains_nothing", "message": "keeps nothing"},
    {"kind": "liveness", "message": "constructor did not return", "call": "constructor", "seconds": 2.0},
    {"kind": "liveness"},  # a finding that carries less than usual
])
def test_store_level_findings_render(tmp_path, finding):
    cert = _cert(tiers=[TierResult(tier=t.number, status=NOT_RUN, reason="the store is not live")
                        for t in tiers.TIERS], finding=finding)
    md = render_md(cert)
    assert md.startswith("# MetadataStore certificate") and "REJECTED" in md
    write(cert, str(tmp_path))
    assert json.loads((tmp_path / "certificate.json").read_text())["verdict_code"] == finding["kind"]


def test_not_applicable_tiers_render_with_their_reason():
    cert = _cert(tiers=[TierResult(tier=t.number, status=NOT_APPLICABLE, reason=f"why {t.number}")
                        for t in tiers.TIERS])
    md = render_md(cert)
    for t in tiers.TIERS:
        assert f"| {t.number} {t.name} | not applicable: why {t.number} |" in md
