from harness.checkers import p3_backpressure as p3
from harness.checkers import p4_exactly_one_fresh as p4

from .builder import H, final_state
from .test_p1_p2 import one

WM = {"high": 8, "low": 2, "publish_batch": 4}


def fin(**over):
    over.setdefault("channel_ids", [f"s{i}" for i in range(8)])
    over.setdefault("consumed", len(over["channel_ids"]))
    return final_state([f"s{i}" for i in range(8)], watermarks=WM, **over)


# -- P3 ---------------------------------------------------------------------------

def test_backpressure_valid_hysteresis():
    h = H()
    h.p("publish", ids=["s0", "s1", "s2", "s3"], first_pos=0, published=4, consumed=0, in_flight_before=0)
    h.p("publish", ids=["s4", "s5", "s6", "s7"], first_pos=4, published=8, consumed=0, in_flight_before=4)
    h.p("pause", published=8, consumed=0, in_flight=8, high=8)
    h.c("consumed", consumed=6)
    h.p("resume", published=8, consumed=6, in_flight=2, low=2)
    h.c("consumed", consumed=8)
    assert p3.check(h.events, fin()).valid is True


def test_consumed_exceeds_published():
    h = H()
    l1 = h.p("publish", ids=["s0"], first_pos=0, published=4, consumed=5, in_flight_before=-1)
    a = one(p3.check(h.events, fin()), "consumed_exceeds_published")
    assert a.lines == [l1] and a.incarnations == ["producer#0"] and a.sample_ids == ["s0"]
    h = H()
    l2 = h.c("consumed", consumed=9)
    a = one(p3.check(h.events, fin()), "consumed_exceeds_published")
    assert a.lines == [l2] and "8 complete records" in a.message


def test_consumed_backwards_across_restart():
    h = H()
    l1 = h.c("consumed", consumed=4)
    l2 = h.start_consumer(1, consumed_before=2)
    r = p3.check(h.events, fin())
    a = one(r, "consumed_backwards")
    assert a.lines == [l1, l2] and a.incarnations == ["consumer#0", "consumer#1"]
    assert "consumed=4" in a.message and "consumed=2" in a.message


def test_producer_readings_backwards():
    h = H()
    l1 = h.p("publish", ids=["s0"], first_pos=0, published=1, consumed=1, in_flight_before=0)
    l2 = h.p("publish", 1, ids=["s1"], first_pos=1, published=2, consumed=0, in_flight_before=1)
    a = one(p3.check(h.events, fin()), "consumed_backwards")
    assert a.lines == [l1, l2] and a.incarnations == ["producer#0", "producer#1"]


def test_published_over_watermark():
    h = H()
    ids = ["s0", "s1", "s2", "s3"]
    l1 = h.p("publish", ids=ids, first_pos=12, published=16, consumed=0, in_flight_before=12)
    a = one(p3.check(h.events, fin()), "published_over_watermark")
    assert a.lines == [l1] and a.sample_ids == ids and "in_flight 16 > high 8" in a.message
    # within high + batch after the publish, but published while in_flight_before >= high
    h = H()
    l2 = h.p("publish", ids=ids, first_pos=8, published=12, consumed=0, in_flight_before=8)
    a = one(p3.check(h.events, fin()), "published_over_watermark")
    assert a.lines == [l2] and "in_flight_before=8 >= high 8" in a.message


def test_pause_and_resume_against_watermarks():
    h = H()
    lp = h.p("pause", published=5, consumed=0, in_flight=5, high=8)
    lr = h.p("resume", published=5, consumed=1, in_flight=4, low=2)
    r = p3.check(h.events, fin())
    assert one(r, "pause_without_watermark").lines == [lp]
    assert one(r, "resume_above_low").lines == [lr]


def test_pause_and_resume_must_alternate_within_an_incarnation():
    h = H()
    lr = h.p("resume", published=4, consumed=2, in_flight=2, low=2)  # a resume with no pause: a hidden pause
    h.p("pause", published=8, consumed=0, in_flight=8, high=8)
    lp = h.p("pause", published=8, consumed=0, in_flight=8, high=8)
    h.p("pause", 1, published=8, consumed=0, in_flight=8, high=8)  # a new incarnation starts unpaused
    h.p("resume", 1, published=8, consumed=6, in_flight=2, low=2)
    r = p3.check(h.events, fin())
    a = [x for x in r.anomalies if x.kind == "pause_resume_out_of_order"]
    assert [x.lines for x in a] == [[lr], [lp]]


def test_consumed_before_ack():
    h = H()
    h.start_consumer(0)
    h.c("read", pos=0, id="s0")
    h.c("read", pos=1, id="s1")
    h.c("ack", step=1, ids=["s0"], durable=True)
    lr = h.c("skip", pos=2, id="s1", reason="duplicate")  # a second copy of s1, not acked yet
    h.c("consumed", consumed=1)  # s0 is acked: fine
    lc = h.c("consumed", consumed=3)
    a = [x for x in p3.check(h.events, fin()).anomalies if x.kind == "consumed_before_ack"]
    assert [x.sample_ids for x in a] == [["s1"], ["s1"]] and a[1].lines == [lr, lc], a
    assert "covers record 2 (sample s1, skip" in a[1].message
    # acked first (or released at the reconcile): nothing to report
    h = H()
    h.start_consumer(0, released=["s1"])
    h.c("read", pos=0, id="s0")
    h.c("skip", pos=1, id="s1", reason="released")
    h.c("ack", step=1, ids=["s0"], durable=True)
    h.c("consumed", consumed=2)
    assert "consumed_before_ack" not in p3.check(h.events, fin()).kinds()


def test_end_consumed_mismatch():
    h = H()
    lc = h.c("consumed", consumed=6)
    r = p3.check(h.events, fin(consumed=6))
    a = one(r, "end_consumed_mismatch")
    assert a.sample_ids == ["s6", "s7"] and a.lines == [lc] and a.incarnations == ["consumer#0"]
    assert p3.check(h.events, fin(consumed=6, outcome="fail_closed")).valid is True


# -- P4 ---------------------------------------------------------------------------

def test_fresh_twice_across_incarnations():
    h = H()
    l1 = h.p("commit", ids=["a", "b"], fresh=[True, True])
    l2 = h.p("commit", 1, ids=["b", "c"], fresh=[True, True])
    a = one(p4.check(h.events, final_state(["a", "b", "c"])), "fresh_twice")
    assert a.sample_ids == ["b"] and a.lines == [l1, l2] and a.incarnations == ["producer#0", "producer#1"]


def test_fresh_twice_in_one_batch():
    h = H()
    l1 = h.p("commit", ids=["a", "a"], fresh=[True, True])
    a = one(p4.check(h.events, final_state(["a"])), "fresh_twice")
    assert a.sample_ids == ["a"] and a.lines == [l1, l1]
    h = H()
    h.p("commit", ids=["a", "a"], fresh=[True, False])
    assert p4.check(h.events, final_state(["a"])).valid is True


def test_never_fresh():
    h = H()
    h.p("commit", ids=["a"], fresh=[True])
    l2 = h.p("commit", ids=["b"], fresh=[False])
    a = one(p4.check(h.events, final_state(["a", "b"])), "never_fresh")
    assert a.sample_ids == ["b"] and a.lines == [l2] and a.incarnations == ["producer#0"]


def test_replayed_batch_of_a_restarted_producer_is_exempt():
    # producer#0 committed [a, b] and died before its commit event; producer#1 replays the batch
    h = H()
    h.p("commit", 1, ids=["a", "b"], fresh=[False, False])
    h.p("commit", 1, ids=["c"], fresh=[True])
    assert p4.check(h.events, final_state(["a", "b", "c"])).valid is True
    # ... but only its first commit
    h.p("commit", 1, ids=["d"], fresh=[False])
    assert one(p4.check(h.events, final_state(["a", "b", "c", "d"])), "never_fresh").sample_ids == ["d"]


def test_volatile_ledger_loss_starts_a_new_epoch():
    h = H()
    h.p("commit", ids=["a"], fresh=[True])
    h.s("kill", target="store_server", target_inc=0, signal=9, fault="kill")
    h.p("commit", 1, ids=["a"], fresh=[True])
    assert p4.check(h.events, final_state(["a"], durable_store=False)).valid is True
    # a durable store keeps the ledger: the same history is a dedup failure
    assert one(p4.check(h.events, final_state(["a"], durable_store=True)), "fresh_twice").sample_ids == ["a"]


def test_power_cut_that_killed_the_store_server_starts_a_new_epoch():
    h = H()
    h.p("commit", ids=["a"], fresh=[True])
    h.s("powercut", fault=0, killed=["store_server#0", "producer#0", "consumer#0"], mode="clean")
    h.p("commit", 1, ids=["a"], fresh=[True])
    assert p4.check(h.events, final_state(["a"], durable_store=False)).valid is True
    # a cut that left the store server running (none in this run) keeps the ledger
    h = H()
    h.p("commit", ids=["a"], fresh=[True])
    h.s("powercut", fault=0, killed=["producer#0", "consumer#0"], mode="clean")
    h.p("commit", 1, ids=["a"], fresh=[True])
    assert one(p4.check(h.events, final_state(["a"], durable_store=False)), "fresh_twice").sample_ids == ["a"]


def test_malformed_commit():
    h = H()
    l1 = h.p("commit", ids=["a", "b"], fresh=[True])
    a = one(p4.check(h.events, final_state(["a", "b"])), "malformed_commit")
    assert a.lines == [l1] and a.sample_ids == ["a", "b"]


def test_commit_that_never_returned_is_indeterminate():
    # a commit failed on the network (reply lost), the caller gave up; a later commit of the same
    # ids in the same incarnation answers not fresh: either outcome of the lost call is accepted
    h = H()
    h.p("store_call", call="commit_samples", outcome="indeterminate", attempt=1, error="reset", ids=["a", "b"])
    h.p("store_call", call="commit_samples", outcome="failed", attempts=1, ids=["a", "b"])
    h.p("commit", ids=["a", "b"], fresh=[False, False])
    r = p4.check(h.events, final_state(["a", "b"]))
    assert r.valid is True and r.counts["ids_of_commits_never_returned"] == 2


def test_commit_retried_after_a_lost_reply_is_judged_by_its_answer():
    # the store's own retry returned: "not fresh" for ids its lost first attempt committed is a bug
    h = H()
    h.p("store_call", call="commit_samples", outcome="indeterminate", attempt=1, error="reset", ids=["a"])
    h.p("store_call", call="commit_samples", outcome="ok", attempts=2, ids=["a"])
    line = h.p("commit", ids=["a"], fresh=[False])
    a = one(p4.check(h.events, final_state(["a"])), "never_fresh")
    assert a.sample_ids == ["a"] and a.lines == [line]
