import json

from harness.checkers import ALL_CHECKERS, Context, check_all
from harness.checkers.lineage import surviving_lineage, surviving_trains

from .builder import valid_run


def test_valid_run_passes_every_property():
    history, final, _ = valid_run()
    results = check_all(history, final)
    assert [r.prop for r in results] == ["P1", "P2", "P3", "P4", "P5", "P6", "P7", "P8"]
    for r in results:
        assert r.valid is True, (r.prop, [a.message for a in r.anomalies])
        assert r.anomalies == []
    json.dumps([r.to_dict() for r in results])  # reports serialise them


def test_checkers_run_alone_give_the_same_result():
    history, final, _ = valid_run()
    ctx = Context(history, final)
    for check, shared in zip(ALL_CHECKERS, check_all(history, final)):
        assert check(history, final).to_dict() == shared.to_dict() == check(history, final, ctx=ctx).to_dict()


def test_valid_run_counts():
    history, final, L = valid_run()
    by = {r.prop: r for r in check_all(history, final)}
    assert by["P1"].counts["surviving_train_events"] == 3
    assert by["P1"].counts["discarded_train_events"] == 0
    assert by["P2"].counts["committed"] == 6 and by["P2"].counts["consumer_restarts"] == 1
    assert by["P4"].counts["fresh_flags"] == 6
    assert by["P5"].counts["interrupted_acks"] == 1
    assert by["P8"].counts["last_fault_line"] == L["fault"]


def test_lineage_of_valid_run():
    history, final, L = valid_run()
    trains = surviving_trains(history, final)
    assert trains["s0"] == [("consumer#0", 1, L["step1"])]
    assert trains["s3"] == [("consumer#0", 2, L["train2"])]
    assert trains["s5"] == [("consumer#1", 3, L["step3"])]
    lin = surviving_lineage(history, final)
    assert lin.chains["consumer"] == [("consumer#1", 2, 3), ("consumer#0", 0, 2)]
    assert lin.resume == {"consumer#0": 0, "consumer#1": 2}


def test_results_are_pure():
    history, final, _ = valid_run()
    before = json.dumps([history, final], sort_keys=True)
    check_all(history, final)
    assert json.dumps([history, final], sort_keys=True) == before
