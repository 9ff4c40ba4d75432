import pytest

from harness.bench.checks import bench_check
from harness.checkers import check_all
from harness.synthetic_history import SYNTHETIC_BUGS, synthetic_history


@pytest.fixture(scope="module")
def valid20k():
    return synthetic_history(20000, seed=7)


def test_synthetic_history_is_valid(valid20k):
    history, final = valid20k
    assert 17000 < len(history) < 23000
    assert [e["line"] for e in history[:3]] == [1, 2, 3]
    assert all(a["mono"] < b["mono"] for a, b in zip(history, history[1:]))
    results = check_all(history, final)
    assert {r.prop: r.valid for r in results} == {f"P{i}": True for i in range(1, 9)}, \
        [a.message for r in results for a in r.anomalies[:3]]


def test_synthetic_history_exercises_faults(valid20k):
    history, final = valid20k
    evs = [(e["proc"], e["ev"]) for e in history]
    assert evs.count(("supervisor", "kill")) >= 9
    assert any(e["ev"] == "ack" and e.get("roll_forward") for e in history)
    assert any(e["ev"] == "skip" for e in history)
    by = {r.prop: r for r in check_all(history, final)}
    assert by["P1"].counts["discarded_train_events"] >= 1  # a restart rolled trains back
    assert by["P5"].counts["interrupted_acks"] >= 1
    assert by["P3"].counts["pauses"] >= 1


@pytest.mark.parametrize("bug", sorted(SYNTHETIC_BUGS))
def test_each_synthetic_bug_is_caught_by_its_property(bug):
    prop, kind = SYNTHETIC_BUGS[bug]
    history, final = synthetic_history(8000, seed=3, bug=bug)
    results = {r.prop: r for r in check_all(history, final)}
    assert results[prop].valid is False
    assert kind in results[prop].kinds()
    others = {p: r.counts["by_kind"] for p, r in results.items() if p != prop and r.valid is False}
    assert others == {}, f"{bug} also flagged {others}"


def test_unknown_bug_is_rejected():
    with pytest.raises(ValueError, match="unknown synthetic bug"):
        synthetic_history(1000, bug="gremlins")


def test_bench_check_returns_seconds():
    secs = bench_check(5000)
    assert 0 < secs < 5
