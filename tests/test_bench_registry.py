"""The bench's sections are a registry: `--only` selects by name, unknown names are usage errors."""

import pytest

from harness.bench import main as bench_main
from harness.bench.registry import section, sections


def test_sections_run_in_their_order():
    assert list(sections()) == ["restart", "simulate", "trials", "check", "sqlite", "memory", "overhead", "powerloss",
                                "redis", "ray", "soak", "suite"]


def test_unknown_section_is_a_usage_error_listing_the_known_ones(capsys):
    assert bench_main(["--only", "check,nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown section 'nope'" in err and "restart, simulate, trials, check, sqlite, memory, overhead" in err


def test_a_section_name_is_registered_once():
    with pytest.raises(ValueError, match="registered twice"):
        section("check", order=99)(lambda run: None)


def test_the_suite_figure_is_a_real_pytest_run_and_a_failing_suite_meets_no_goal(tmp_path):
    from harness.bench.suite import run_lane, summary_line

    proj = tmp_path / "proj"
    proj.mkdir()
    ok, bad = "def test_ok():\n    assert sum([1, 1]) == 2\n", "def test_bad():\n    assert sum([1, 1]) == 3\n"
    (proj / "test_one.py").write_text(ok + "\n" + bad)
    r = run_lane([], str(tmp_path / "bt"), cwd=str(proj))
    assert r["rc"] == 1 and r["summary"] == "1 failed, 1 passed" and r["wall_s"] > 0
    assert r["failed"] == ["test_one.py::test_bad"]
    (proj / "test_one.py").write_text(ok)
    r = run_lane([], str(tmp_path / "bt"), cwd=str(proj))
    assert r["rc"] == 0 and r["summary"] == "1 passed" and r["failed"] == []
    assert summary_line("==== 566 passed, 8 skipped in 64.91s (0:01:04) ====") == "566 passed, 8 skipped"
    assert summary_line("no tests ran in 0.01s") is None
