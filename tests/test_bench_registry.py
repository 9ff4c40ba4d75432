"""The bench's sections are a registry: `--only` selects by name, unknown names are usage errors."""

import pytest

from harness.bench import main as bench_main
from harness.bench.registry import section, sections


def test_sections_run_in_their_order():
    assert list(sections()) == ["restart", "simulate", "trials", "check", "sqlite", "memory", "overhead", "powerloss",
                                "redis", "ray", "soak"]


def test_unknown_section_is_a_usage_error_listing_the_known_ones(capsys):
    assert bench_main(["--only", "check,nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown section 'nope'" in err and "restart, simulate, trials, check, sqlite, memory, overhead" in err


def test_a_section_name_is_registered_once():
    with pytest.raises(ValueError, match="registered twice"):
        section("check", order=99)(lambda run: None)
