"""Unit tests of the certifier's own checks, on hand-made states (fast, deterministic)."""

import random
import threading
import time

from harness.certify import model
from harness.certify.common import random_ref
from harness.certify.tier2_concurrency import AckPlan
from harness.certify.tier3_crash.check import check_trial
from harness.certify.tier3_crash.trials import CrashModel, Trial
from reference_impl.contracts import SampleRef, ref_to_dict


def _marker(acked, step, flag):
    return {"acked": set(acked), "global_step": step, "optimizer_durable": flag}


def _state(plan, counts, last):
    ids = [s for w, n in enumerate(counts) for j in range(n) for s in plan.ids(w, j)]
    w, j = last
    return _marker(ids, plan.step(w, j), plan.flag(w, j))


def test_ack_plan_accepts_whole_states_and_names_each_torn_one():
    plan = AckPlan("t", writers=2, max_ids=6, seed=1)
    ok = _state(plan, [3, 2], (1, 1))
    assert plan.check(ok) == ([], [3, 2])
    # one id of the newest ack missing: torn ack
    torn = dict(ok, acked=ok["acked"] - {plan.ids(1, 1)[-1]})
    found, _ = plan.check(torn)
    assert found and found[0][0] == "P5 ack atomicity"
    # one writer: ids of ack #3 visible, step still ack #2's: a marker that mixes two acks
    one = AckPlan("u", writers=1, max_ids=6, seed=2)
    mixed = _state(one, [3], (0, 2))
    mixed["acked"] |= set(one.ids(0, 3))
    assert any("later ack" in t for _, t in one.check(mixed)[0])
    # two writers: w0's newer ack with w1's step is a valid order (w0#3 then w1#1)
    assert plan.check(dict(ok, acked=ok["acked"] | set(plan.ids(0, 3))))[0] == []
    # step names an ack whose ids are not there
    ahead = dict(ok, global_step=plan.step(1, 2), optimizer_durable=plan.flag(1, 2))
    assert any("mixes two ack transactions" in t for _, t in plan.check(ahead)[0])
    # flag of another ack
    flipped = dict(ok, optimizer_durable=not ok["optimizer_durable"])
    assert any("optimizer_durable" in t for _, t in plan.check(flipped)[0])
    # a gap in one writer's acks
    gap = dict(ok, acked=ok["acked"] - set(plan.ids(0, 0)))
    assert any("earlier ack" in t for _, t in plan.check(gap)[0])


def test_refs_compare_field_by_field_with_types():
    r = random_ref(random.Random(1), "x")
    d = ref_to_dict(r)
    assert model.diff_refs(d, model.canon_ref(r)) is None
    other = dict(d, metadata=dict(d["metadata"], n=True))
    assert "metadata['n']" in model.diff_refs(other, d)
    spec_lost = dict(d, feature_specs={k: dict(v, target_meta={}) for k, v in d["feature_specs"].items()})
    if d["feature_specs"]:
        assert "feature_specs" in model.diff_refs(d, spec_lost)


def test_model_repeated_id_in_a_batch_is_fresh_once_and_none_keeps_the_step():
    m = model.ContractModel()
    a = SampleRef("a", "r", None, "", {}, {}, "s")
    assert m.commit([a, a]) == [True, False]
    assert m.commit([]) == []
    m.ack(["a"], 0, True)
    m.ack([], None, False)
    assert m.marker() == {"acked": {"a"}, "global_step": 0, "optimizer_durable": False}


def _trial_with(ops_a):
    t = Trial.__new__(Trial)
    t.no = 0
    t.workers = {"A": ops_a}
    t.new_ids = {}
    return t


def test_crash_check_flags_a_returned_commit_missing_after_reopen():
    refs = [SampleRef(f"n{i}", "r", None, "", {}, {}, "s") for i in range(3)]
    trial = _trial_with([("commit", refs)])
    logs = {"A": {"error": None, "began": {0}, "done": {0: [True, True, True]}, "ready": True, "end": True}}
    snap = {"all_ids": ["n0"], "count": 1, "marker": _marker([], None, False), "refs": {}, "committed": {}}
    bad = check_trial(trial, logs, snap, CrashModel(), [], {})
    assert [p for p, _, _ in bad] == ["P6 durability"]


def test_crash_check_accepts_a_torn_in_flight_batch_as_a_warning():
    refs = [SampleRef(f"n{i}", "r", None, "", {}, {}, "s") for i in range(3)]
    trial = _trial_with([("commit", refs)])
    logs = {"A": {"error": None, "began": {0}, "done": {}, "ready": True, "end": False}}
    snap = {"all_ids": ["n0"], "count": 1, "marker": _marker([], None, False), "refs": {}, "committed": {}}
    warnings = []
    assert check_trial(trial, logs, snap, CrashModel(), warnings, {}) == []
    assert warnings and "torn" in warnings[0]


def test_crash_check_flags_a_half_applied_ack():
    trial = _trial_with([])
    trial.workers = {"B": [("ack", ["a", "b"], 5, True)]}
    m = CrashModel()
    m.refs = {"a": {}, "b": {}}
    m.order = ["a", "b"]
    logs = {"B": {"error": None, "began": {0}, "done": {}, "ready": True, "end": False}}
    snap = {"all_ids": ["a", "b"], "count": 2, "marker": _marker(["a"], None, False), "refs": {}, "committed": {}}
    bad = check_trial(trial, logs, snap, m, [], {})
    assert [p for p, _, _ in bad] == ["P5 ack atomicity"]
    # all or nothing is fine
    for state in (_marker([], None, False), _marker(["a", "b"], 5, True)):
        snap["marker"] = state
        m2 = CrashModel()
        m2.refs, m2.order = {"a": {}, "b": {}}, ["a", "b"]
        assert check_trial(trial, logs, snap, m2, [], {}) == []


def test_dedup_committers_race_the_minimum_rounds_even_past_their_seconds():
    # under load a round can take longer than the scenario's seconds; one round raced
    # missed RacyMemoryStore's check-then-insert race in CI, so the seconds alone never end a race
    from harness.certify.tier2_concurrency.roles import MIN_DEDUP_ROUNDS, Shared

    shared = Shared(parties=1, writers=0, seconds=0.5)
    past = time.monotonic() - 1.0  # the deadline has passed
    assert [shared.next_round(past, done) for done in range(1, MIN_DEDUP_ROUNDS + 2)] == (
        [True] * (MIN_DEDUP_ROUNDS - 1) + [False, False]
    )
    # and a race that has run past its patience stops whatever the rounds
    assert not shared.next_round(time.monotonic() - 0.5 * 21, 1)


def test_a_record_types_hints_are_resolved_once():
    # uncached, each ref re-evaluated its annotations (about 1 ms a ref): tier 2's ackers
    # spent their time building refs and the readers rarely met an ack in flight
    from harness.certify import records

    records._hints.cache_clear()
    records.active().random_ref(random.Random(0), "s1")
    records.active().random_ref(random.Random(1), "s2")
    assert records._hints.cache_info().hits > 0


def test_a_committer_slow_after_the_round_barrier_keeps_that_rounds_decision():
    # the fast committer races through the next round and decides to stop there; the slow one,
    # still reading the decision of the round before, must go on to meet it at the barrier
    # (a stop flag read late made it quit and left the other waiting 120 s: a CI run hung there)
    from harness.certify.tier2_concurrency.roles import MIN_DEDUP_ROUNDS, Shared

    shared = Shared(parties=2, writers=0, seconds=0.1, committers=2)
    real_wait = shared.round_barrier.wait

    def wait(timeout=None):
        i = real_wait(timeout)
        if threading.current_thread().name == "slow":
            time.sleep(0.5)
        return i

    shared.round_barrier.wait = wait
    future, past = time.monotonic() + 60, time.monotonic() - 60
    out = {"slow": [], "fast": []}

    def committer():
        for done, deadline in ((1, future), (MIN_DEDUP_ROUNDS, past)):
            going = shared.next_round(deadline, done)
            out[threading.current_thread().name].append(going)
            if not going:
                break

    threads = [threading.Thread(target=committer, name=n, daemon=True) for n in out]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    stuck = [t.name for t in threads if t.is_alive()]
    shared.round_barrier.abort()
    assert not stuck, f"{stuck} left waiting at the round barrier; decisions {out}"
    assert out == {"slow": [True, False], "fast": [True, False]}
