from harness.checkers import p5_marker_atomicity as p5
from harness.checkers import p6_durability as p6
from harness.checkers import p7_release_after_ack as p7
from harness.checkers import p8_liveness as p8

from .builder import H, final_state
from .test_p1_p2 import one


def marker(acked, step):
    return {"acked": sorted(acked), "global_step": step, "optimizer_durable": True}


def crashed_between_checkpoint_and_ack():
    """consumer#0 acked [a, b] at step 1, checkpointed [c, d] at step 2 and died before that ack."""
    h = H()
    h.start_consumer(0)
    lines = h.step(0, 1, ["a", "b"])
    h.c("train", step=2, ids=["c", "d"])
    lc = h.c("checkpoint", step=2, unacked=["c", "d"])
    return h, lines["ack"], lc


def rolled_forward_at_restart():
    """As crashed_between_checkpoint_and_ack, then consumer#1 rolled the ack of [c, d] forward at its reconcile."""
    h, _, _ = crashed_between_checkpoint_and_ack()
    h.c("ack", 1, step=2, ids=["c", "d"], durable=True, roll_forward=True)
    h.start_consumer(1, marker_step=1, checkpoint_step=2, released=list("abcd"), rolled_forward=["c", "d"])
    return h


# -- P5 ---------------------------------------------------------------------------

def test_final_marker_with_part_of_a_returned_ack():
    h = H()
    h.start_consumer(0)
    la = h.step(0, 1, ["a", "b", "c"])["ack"]
    a = one(p5.check(h.events, final_state(["a", "b", "c"], marker=marker(["a", "c"], 1))), "torn_ack")
    assert a.sample_ids == ["a", "c", "b"] and a.steps == [1] and a.lines == [la]
    assert "present a, c; missing b" in a.message


def test_final_marker_with_part_of_an_interrupted_ack():
    h, _, lc = crashed_between_checkpoint_and_ack()
    final = final_state(["a", "b", "c", "d"], marker=marker(["a", "b", "c"], 1))
    a = one(p5.check(h.events, final), "torn_ack")
    assert a.sample_ids == ["c", "d"] and a.steps == [2] and a.lines == [lc] and "interrupted" in a.message
    # all or nothing of it is fine
    assert p5.check(h.events, final_state(["a", "b", "c", "d"], marker=marker(["a", "b"], 1))).valid is True
    assert p5.check(h.events, final_state(["a", "b", "c", "d"], marker=marker("abcd", 2))).valid is True


def test_restart_reads_ids_without_their_step():
    h, _, lc = crashed_between_checkpoint_and_ack()
    h.c("ack", 1, step=2, ids=["c", "d"], durable=True, roll_forward=True)
    # the marker read had c (no step 2): only d was rolled forward
    lr = h.start_consumer(1, marker_step=1, checkpoint_step=2, released=["a", "b", "c", "d"], rolled_forward=["d"])
    final = final_state(["a", "b", "c", "d"], marker=marker("abcd", 2))
    a = one(p5.check(h.events, final), "torn_ack")
    assert a.sample_ids == ["c", "d"] and a.lines == [lc, lr] and a.steps == [2]
    assert a.incarnations == ["consumer#0", "consumer#1"] and "ids without step 2" in a.message


def test_restart_reads_step_without_all_ids():
    h, _, lc = crashed_between_checkpoint_and_ack()
    lr = h.start_consumer(1, marker_step=2, checkpoint_step=2, released=["a", "b", "c"])
    a = one(p5.check(h.events, final_state(list("abcd"), marker=marker("abcd", 2))), "torn_ack")
    assert a.lines == [lc, lr] and a.sample_ids == ["c", "d"] and "step 2 without all its ids" in a.message


def test_restart_reads_part_of_a_returned_ack():
    h = H()
    h.start_consumer(0)
    la = h.step(0, 1, ["a", "b"])["ack"]
    lr = h.start_consumer(1, marker_step=1, checkpoint_step=1, released=["a"])
    a = one(p5.check(h.events, final_state(["a", "b"], marker=marker("ab", 1))), "torn_ack")
    assert a.lines == [la, lr] and a.sample_ids == ["a", "b"]


def test_restart_sees_whole_transactions():
    # the interrupted ack applied whole (no roll-forward needed), then the restart rolled nothing
    h, _, _ = crashed_between_checkpoint_and_ack()
    h.start_consumer(1, marker_step=2, checkpoint_step=2, released=list("abcd"))
    assert p5.check(h.events, final_state(list("abcd"), marker=marker("abcd", 2))).valid is True
    # ... or not at all, rolled forward by the reconcile
    h = rolled_forward_at_restart()
    assert p5.check(h.events, final_state(list("abcd"), marker=marker("abcd", 2))).valid is True


def test_final_marker_not_optimizer_durable_after_durable_acks():
    # the roll-forward ack (the last one) wrote the marker with optimizer_durable false
    h = rolled_forward_at_restart()
    last = max(e["line"] for e in h.events if e.get("ev") == "ack")
    for flag in (False, None):
        m = dict(marker("abcd", 2), optimizer_durable=flag)
        a = one(p5.check(h.events, final_state(list("abcd"), marker=m)), "marker_not_optimizer_durable")
        assert a.steps == [2] and a.lines == [last] and f"optimizer_durable {flag!r}" in a.message
    # an empty marker (nothing acked in this ledger) says nothing; nor does a history with a non-durable ack
    empty = {"acked": [], "global_step": None, "optimizer_durable": False}
    assert p5.check(h.events, final_state(list("abcd"), marker=empty)).valid is True
    h.c("ack", 1, step=3, ids=[], durable=False)
    m = dict(marker("abcd", 3), optimizer_durable=False)
    assert p5.check(h.events, final_state(list("abcd"), marker=m)).valid is True


# -- P6 ---------------------------------------------------------------------------

def test_lost_commit():
    h = H()
    lc = h.p("commit", ids=["a", "b"], fresh=[True, True])
    a = one(p6.check(h.events, final_state(["a", "b"], committed_ids=["a"])), "lost_commit")
    assert a.sample_ids == ["b"] and a.lines == [lc] and a.incarnations == ["producer#0"]


def test_lost_ack():
    h = H()
    h.start_consumer(0)
    la = h.step(0, 1, ["a", "b"])["ack"]
    a = one(p6.check(h.events, final_state(["a", "b"], marker=marker(["a"], 1))), "lost_ack")
    assert a.sample_ids == ["b"] and a.lines == [la] and a.steps == [1]


def test_step_regressed():
    h = H()
    h.start_consumer(0)
    h.step(0, 1, ["a"])
    la = h.step(0, 3, ["b"])["ack"]
    a = one(p6.check(h.events, final_state(["a", "b"], marker=marker("ab", 2))), "step_regressed")
    assert a.steps == [3, 2] and a.lines == [la] and a.sample_ids == ["b"]


def test_lost_ack_at_restart():
    h = H()
    h.start_consumer(0)
    la = h.step(0, 3, ["a"])["ack"]
    lr = h.start_consumer(1, marker_step=2, checkpoint_step=3, released=["a"])
    a = one(p6.check(h.events, final_state(["a"], marker=marker("a", 3))), "lost_ack_at_restart")
    assert a.steps == [3, 2] and a.lines == [la, lr] and a.incarnations == ["consumer#0", "consumer#1"]
    # fewer acked ids than returned
    h = H()
    h.start_consumer(0)
    la = h.step(0, 1, ["a", "b"])["ack"]
    lr = h.start_consumer(1, marker_step=1, checkpoint_step=1, released=["a"])
    a = one(p6.check(h.events, final_state(["a", "b"], marker=marker("ab", 1))), "lost_ack_at_restart")
    assert a.sample_ids == ["b"] and a.lines == [la, lr]


def test_roll_forward_ack_belongs_to_its_reconcile():
    h = rolled_forward_at_restart()
    assert p6.check(h.events, final_state(list("abcd"), marker=marker("abcd", 2))).valid is True


def test_p6_not_applicable_to_volatile_or_unreadable_store():
    h = H()
    h.p("commit", ids=["a"], fresh=[True])
    assert p6.check(h.events, final_state(["a"], committed_ids=[], durable_store=False)).valid is None
    assert p6.check(h.events, final_state(["a"], committed_ids=None)).valid is None


# -- P7 ---------------------------------------------------------------------------

def test_released_before_ack():
    h = H()
    h.start_consumer(0)
    h.c("train", step=1, ids=["a", "b"])
    h.c("checkpoint", step=1, unacked=["a", "b"])
    lr = h.c("release_features", ids=["a", "b"])
    la = h.c("ack", step=1, ids=["a", "b"], durable=True)
    a = one(p7.check(h.events, final_state(["a", "b"])), "released_before_ack")
    assert a.sample_ids == ["a", "b"] and a.lines == [lr, la] and a.steps == [1]


def test_non_durable_ack_does_not_allow_release():
    h = H()
    h.c("ack", step=1, ids=["a"], durable=False)
    lr = h.c("release_features", ids=["a"])
    a = one(p7.check(h.events, final_state(["a"])), "released_before_ack")
    assert a.lines[0] == lr and "non-durable" in a.message


def test_release_of_samples_released_at_reconcile():
    h = H()
    h.start_consumer(1, marker_step=1, checkpoint_step=1, released=["a"])
    h.c("release_features", 1, ids=["a"], gc=True)
    assert p7.check(h.events, final_state(["a"])).valid is True


def test_features_leaked():
    h = H()
    h.start_consumer(0)
    la = h.c("ack", step=1, ids=["a", "b"], durable=True)
    h.c("release_features", ids=["a"])
    r = p7.check(h.events, final_state(["a", "b"], features_left=["b"]))
    a = one(r, "features_leaked")
    assert a.sample_ids == ["b"] and a.lines == [la] and a.steps == [1]
    assert p7.check(h.events, final_state(["a", "b"], features_left=["b"], outcome="fail_closed")).valid is True


# -- P8 ---------------------------------------------------------------------------

def test_hang():
    h = H()
    h.start_consumer(0)
    lk = h.s("kill", target="producer", target_inc=0, signal=9, fault="kill")
    lt = h.s("timeout", bound_s=30.0, state={"consumer": "waiting for records", "unacked": ["a"]})
    a = one(p8.check(h.events, final_state(["a"], outcome="timeout")), "hang")
    assert a.lines == [lt, lk] and "waiting for records" in a.message and a.sample_ids == ["a"]
    assert "consumer#0 last did reconcile" in a.message


def test_slow_recovery():
    h = H()
    h.start_consumer(0)
    lk = h.s("kill", target="consumer", target_inc=0, signal=9, fault="kill")
    h.start_consumer(1)
    le = h.c("exit", 1, dt=50.0, code=0, outcome="completed")
    r = p8.check(h.events, final_state(["a"], bound_s=10.0))
    a = one(r, "slow_recovery")
    assert a.lines == [lk, le] and a.incarnations == ["consumer#0", "consumer#1"]
    assert p8.check(h.events, final_state(["a"], bound_s=100.0)).valid is True


def test_pause_cont_and_failpoint_are_faults():
    h = H()
    h.s("pause", target="consumer", target_inc=0, fault="pause")
    lc = h.s("cont", target="consumer", target_inc=0, fault="pause", dt=40.0)
    h.c("exit", code=0, outcome="completed")
    assert p8.check(h.events, final_state(["a"], bound_s=10.0)).counts["last_fault_line"] == lc
    lf = h.c("failpoint", 1, point="consumer.after_train_before_checkpoint", action="crash")
    h.c("exit", 1, dt=20.0, code=0, outcome="completed")
    a = one(p8.check(h.events, final_state(["a"], bound_s=10.0)), "slow_recovery")
    assert a.lines[0] == lf


def test_no_fault_no_bound():
    h = H()
    h.start_consumer(0)
    h.c("exit", dt=500.0, code=0, outcome="completed")
    assert p8.check(h.events, final_state(["a"], bound_s=1.0)).valid is True
