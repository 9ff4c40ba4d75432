from harness.checkers import p1_no_duplicate_training as p1
from harness.checkers import p2_no_loss as p2
from harness.checkers.lineage import surviving_lineage

from .builder import H, final_state


def one(result, kind):
    assert result.valid is False
    found = [a for a in result.anomalies if a.kind == kind]
    assert len(found) == 1, [a.to_dict() for a in result.anomalies]
    a = found[0]
    for x in a.sample_ids[:3] + [str(s) for s in a.steps] + a.incarnations + [str(n) for n in a.lines]:
        assert x in a.message, (x, a.message)
    return a


# -- lineage --------------------------------------------------------------------

def test_rolled_back_train_is_not_a_duplicate():
    h = H()
    h.start_consumer(0)
    h.step(0, 1, ["a"])
    lost = h.c("train", step=2, ids=["b"])  # never checkpointed: rolled back by the restart
    h.start_consumer(1, marker_step=1, checkpoint_step=1, released=["a"])
    again = h.step(1, 2, ["b"])["train"]
    final = final_state(["a", "b"], checkpoint_step=2)
    lin = surviving_lineage(h.events, final)
    assert lin.trains["b"] == [("consumer#1", 2, again)]
    assert lin.discarded["b"] == [("consumer#0", 2, lost)]
    assert p1.check(h.events, final).valid is True
    assert p2.check(h.events, final).valid is True


def test_checkpoint_durable_without_its_event_keeps_the_trains():
    # consumer#0 died inside the checkpoint write: the checkpoint at step 2 exists, its event does not.
    h = H()
    h.start_consumer(0)
    h.step(0, 1, ["a"])
    t2 = h.c("train", step=2, ids=["b"])
    h.start_consumer(1, marker_step=1, checkpoint_step=2, released=["a", "b"], rolled_forward=["b"])
    h.step(1, 3, ["c"])
    final = final_state(["a", "b", "c"], checkpoint_step=3)
    assert surviving_lineage(h.events, final).trains["b"] == [("consumer#0", 2, t2)]
    assert p1.check(h.events, final).valid is True
    # retraining b after that restart is a duplicate in the lineage
    h2 = H()
    h2.start_consumer(0)
    h2.step(0, 1, ["a"])
    t2 = h2.c("train", step=2, ids=["b"])
    h2.start_consumer(1, marker_step=1, checkpoint_step=2, released=["a"])
    t3 = h2.step(1, 3, ["b", "c"])["train"]
    a = one(p1.check(h2.events, final), "duplicate_in_lineage")
    assert a.sample_ids == ["b"] and a.steps == [2, 3] and a.lines == [t2, t3]
    assert a.incarnations == ["consumer#0", "consumer#1"]


def test_incarnation_killed_before_its_first_checkpoint_is_skipped():
    h = H()
    h.start_consumer(0)
    h.step(0, 1, ["a"])
    h.start_consumer(1, marker_step=1, checkpoint_step=1, released=["a"])
    h.c("train", 1, step=2, ids=["b"])  # killed before the checkpoint
    h.start_consumer(2, marker_step=1, checkpoint_step=1, released=["a"])
    t = h.step(2, 2, ["b"])["train"]
    final = final_state(["a", "b"], checkpoint_step=2)
    lin = surviving_lineage(h.events, final)
    assert lin.trains["b"] == [("consumer#2", 2, t)]
    assert lin.chains["consumer"] == [("consumer#2", 1, 2), ("consumer#0", 0, 1)]
    assert p1.check(h.events, final).valid is True


def test_two_ranks_training_one_sample_is_a_duplicate():
    h = H()
    for r in (0, 1):
        h.ev(f"consumer.rank{r}", 0, "reconcile", marker_step=None, checkpoint_step=None, released=[],
             rolled_forward=[], consumed_before=0)
    l0 = h.ev("consumer.rank0", 0, "train", step=1, ids=["a", "b"])
    l1 = h.ev("consumer.rank1", 0, "train", step=1, ids=["c", "a"])
    h.ev("consumer.rank0", 0, "checkpoint", step=1, unacked=["a", "b", "c"])
    final = final_state(["a", "b", "c"], checkpoint_step=1, witness=None)
    a = one(p1.check(h.events, final), "duplicate_in_lineage")
    assert a.sample_ids == ["a"] and a.lines == [l0, l1] and a.steps == [1, 1]
    assert a.incarnations == ["consumer.rank0#0", "consumer.rank1#0"]


# -- P1 ---------------------------------------------------------------------------

def test_duplicate_in_lineage_same_incarnation():
    h = H()
    h.start_consumer(0)
    t1 = h.step(0, 1, ["a", "b"])["train"]
    t2 = h.step(0, 2, ["a"])["train"]
    final = final_state(["a", "b"], checkpoint_step=2, witness=None)
    r = p1.check(h.events, final)
    a = one(r, "duplicate_in_lineage")
    assert (a.sample_ids, a.steps, a.lines, a.incarnations) == (["a"], [1, 2], [t1, t2], ["consumer#0"])
    assert r.counts["witness_checked"] is False


def test_witness_duplicate_names_the_trains():
    h = H()
    h.start_consumer(0)
    t1 = h.step(0, 1, ["a", "b"])["train"]
    final = final_state(["a", "b"], checkpoint_step=1, witness=[1.0, 2.0])
    a = one(p1.check(h.events, final), "witness_duplicate")
    assert a.sample_ids == ["b"] and a.lines == [t1] and a.steps == [1]
    assert "witness slot 1" in a.message and "is 2" in a.message


def test_witness_corrupt():
    h = H()
    h.start_consumer(0)
    h.step(0, 1, ["a", "b", "c"])
    final = final_state(["a", "b", "c"], checkpoint_step=1, witness=[1.0, 0.5, 1.0004])
    r = p1.check(h.events, final)
    a = one(r, "witness_corrupt")
    assert a.sample_ids == ["b"] and "0.5" in a.message
    # 1.0004 is within the 1e-3 tolerance; a short witness leaves samples without a slot
    short = final_state(["a", "b", "c"], checkpoint_step=1, witness=[1.0, 1.0])
    assert one(p1.check(h.events, short), "witness_corrupt").sample_ids == ["c"]


def test_p1_applies_to_fail_closed_runs():
    h = H()
    h.start_consumer(0)
    h.step(0, 1, ["a"])
    final = final_state(["a"], checkpoint_step=1, witness=[2.0], outcome="fail_closed")
    assert one(p1.check(h.events, final), "witness_duplicate").sample_ids == ["a"]


# -- P2 ---------------------------------------------------------------------------

def test_lost_committed_sample():
    h = H()
    cl = h.p("commit", ids=["a", "b"], fresh=[True, True])
    h.start_consumer(0)
    h.step(0, 1, ["a"])
    final = final_state(["a", "b"], checkpoint_step=1, witness=None)
    a = one(p2.check(h.events, final), "lost")
    assert a.sample_ids == ["b"] and a.lines == [cl] and a.steps == []


def test_lost_names_rolled_back_trains():
    h = H()
    cl = h.p("commit", ids=["a", "b"], fresh=[True, True])
    h.start_consumer(0)
    h.step(0, 1, ["a"])
    gone = h.c("train", step=2, ids=["b"])
    h.start_consumer(1, marker_step=1, checkpoint_step=1, released=["a"])
    h.c("skip", 1, pos=1, id="b", reason="released")  # a wrong skip: b was never acked
    final = final_state(["a", "b"], checkpoint_step=1, witness=[1.0, 0.0])
    r = p2.check(h.events, final)
    a = one(r, "lost")
    assert a.sample_ids == ["b"] and a.steps == [2] and a.lines == [cl, gone] and a.incarnations == ["consumer#0"]
    w = one(r, "witness_loss")
    assert w.sample_ids == ["b"] and w.lines == [cl, gone]


def test_witness_loss_only():
    h = H()
    h.p("commit", ids=["a", "b"], fresh=[True, True])
    h.start_consumer(0)
    t = h.step(0, 1, ["a", "b"])["train"]
    final = final_state(["a", "b"], checkpoint_step=1, witness=[1.0, 0.0])
    a = one(p2.check(h.events, final), "witness_loss")
    assert a.sample_ids == ["b"] and a.lines[-1] == t and "witness slot 1" in a.message


def test_not_requeued_after_restart():
    h = H()
    cl = h.p("commit", ids=["a", "b", "c"], fresh=[True] * 3)
    h.start_consumer(0)
    h.step(0, 1, ["a"])
    h.c("train", step=2, ids=["b", "c"])  # killed before the checkpoint
    rl = h.start_consumer(1, marker_step=1, checkpoint_step=1, released=["a"])
    h.step(1, 2, ["b"])  # c is forgotten
    final = final_state(["a", "b", "c"], checkpoint_step=2, witness=None)
    r = p2.check(h.events, final)
    a = one(r, "not_requeued")
    assert a.sample_ids == ["c"] and a.lines == [cl, rl] and a.incarnations == ["consumer#1"] and a.steps == [1]
    assert one(r, "lost").sample_ids == ["c"]


def test_released_at_restart_is_not_pending():
    # the ack of step 2 applied but its process died before the ack event: the restart releases b
    h = H()
    h.p("commit", ids=["a", "b"], fresh=[True, True])
    h.start_consumer(0, requeued=["a", "b"])
    h.step(0, 1, ["a"])
    h.c("train", step=2, ids=["b"])
    h.c("checkpoint", step=2, unacked=["b"])
    h.start_consumer(1, marker_step=2, checkpoint_step=2, released=["a", "b"])
    final = final_state(["a", "b"], checkpoint_step=2)
    assert p2.check(h.events, final).valid is True


def test_requeued_misreported():
    h = H()
    lc = h.p("commit", ids=["a", "b", "c"], fresh=[True] * 3)
    h.start_consumer(0, requeued=["a", "b", "c"])
    h.step(0, 1, ["a"])
    h.c("read", pos=1, id="b")
    lr = h.start_consumer(1, marker_step=1, checkpoint_step=1, released=["a"], requeued=["a", "c"])
    h.c("read", pos=1, id="b")
    h.c("read", pos=2, id="c")
    h.step(1, 2, ["b", "c"])
    a = one(p2.check(h.events, final_state(["a", "b", "c"], checkpoint_step=2)), "requeued_misreported")
    assert a.sample_ids == ["b", "a"] and a.lines == [lr, lc] and a.incarnations == ["consumer#1"]
    assert "not requeued: b; requeued and released: a" in a.message
    # a volatile ledger lost before the restart: the commits before the loss are not in the new ledger
    h = H()
    h.p("commit", ids=["a"], fresh=[True])
    h.start_consumer(0, requeued=["a"])
    h.s("kill", target="store_server", target_inc=0, signal=9)
    h.p("commit", ids=["b"], fresh=[True])
    h.start_consumer(1, requeued=["b"])
    h.c("read", pos=0, id="a")
    h.c("read", pos=1, id="b")
    h.step(1, 1, ["a", "b"])
    final = final_state(["a", "b"], checkpoint_step=1, durable_store=False)
    assert "requeued_misreported" not in p2.check(h.events, final).kinds()
    assert "requeued_misreported" in p2.check(h.events, dict(final, durable_store=True)).kinds()


def test_unjustified_skips():
    h = H()
    h.p("commit", ids=["a", "b", "c"], fresh=[True] * 3)
    h.start_consumer(0, requeued=["a", "b", "c"])
    h.c("read", pos=0, id="a")
    l1 = h.c("skip", pos=1, id="b", reason="released")  # never acked
    l2 = h.c("skip", pos=2, id="c", reason="duplicate")  # never read
    h.c("skip", pos=3, id="a", reason="duplicate")  # a second copy of a: fine
    h.step(0, 1, ["a"])
    h.c("skip", pos=4, id="a", reason="released")  # acked: fine
    l3 = h.c("skip", pos=5, id="a", reason="RELEASED")
    h.step(0, 2, ["b", "c"])
    r = p2.check(h.events, final_state(["a", "b", "c"], checkpoint_step=2))
    a = [x for x in r.anomalies if x.kind == "unjustified_skip"]
    assert [(x.sample_ids, x.lines) for x in a] == [(["b"], [l1]), (["c"], [l2]), (["a"], [l3])], a
    assert "no durable ack" in a[0].message and "not read it" in a[1].message and "not a reason" in a[2].message


def test_p2_not_applicable_unless_completed():
    h = H()
    h.p("commit", ids=["a"], fresh=[True])
    for outcome in ("fail_closed", "timeout", "failed"):
        r = p2.check(h.events, final_state(["a"], witness=[0.0], outcome=outcome))
        assert r.valid is None and r.anomalies == []
