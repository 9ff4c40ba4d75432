import json

from reference_impl.channel import ChannelReader, ChannelWriter
from reference_impl.flow_control import Backpressure
from reference_impl.ref_queue import StreamingRefQueue


def test_backpressure_hysteresis():
    bp = Backpressure(high=10, low=4)
    assert bp.observe(9, 0) is None and bp.may_publish()
    assert bp.observe(10, 0) == "pause" and not bp.may_publish()
    assert bp.observe(12, 5) is None  # 7 in flight: still above low
    assert bp.observe(12, 8) == "resume" and bp.may_publish()


def _ref(i):
    return {"sample_id": f"s{i}", "run_id": "r", "source_task_id": "t", "feature_store_uri": "u",
            "feature_keys": {}, "feature_specs": {}, "strategy": "eagle3", "target_model_version": "v",
            "num_tokens": 1, "estimated_bytes": 1, "metadata": {}}


def test_queue_skips_released_and_duplicates_and_counts_exactly(tmp_path):
    w = ChannelWriter(str(tmp_path))
    w.append([_ref(0), _ref(1), _ref(2), _ref(1), _ref(3)], inc=0)
    q = StreamingRefQueue(ChannelReader(str(tmp_path)), skip_ids={"s0"})
    q.poll()
    kinds = [q.next()[0] for _ in range(5)]
    assert kinds == ["skip-released", "take", "take", "skip-duplicate", "take"]
    assert q.next() is None
    assert q.consumed == 1  # only the released s0 is done
    assert q.mark_acked(["s2"]) == 1  # s1 at position 1 still blocks the frontier
    assert q.mark_acked(["s1"]) == 4  # s1, s2 and the second copy of s1
    assert q.mark_acked(["s3"]) == 5


def test_a_rewound_queue_skips_what_it_met_already_and_counts_exactly(tmp_path):
    w = ChannelWriter(str(tmp_path))
    w.append([_ref(0), _ref(1), _ref(2), _ref(3)], inc=0)
    q = StreamingRefQueue(ChannelReader(str(tmp_path)))
    q.poll()
    assert [q.next()[0] for _ in range(3)] == ["take", "take", "take"]
    assert q.mark_acked(["s0", "s1"]) == 2  # s2 taken, not acked; s3 still buffered
    assert q.rewind(10) == (3, 0)
    met = [q.next() for _ in range(4)]
    assert [(k, pos) for k, pos, _ in met] == [("skip-released", 0), ("skip-released", 1), ("skip-duplicate", 2),
                                              ("take", 3)]
    assert q.next() is None and q.consumed == 2
    assert q.mark_acked(["s2"]) == 3 and q.mark_acked(["s3"]) == 4
    assert q.rewind(1) == (4, 3) and q.next()[0] == "skip-released" and q.consumed == 4


def test_the_first_record_is_decided_before_the_backlog_is_parsed(tmp_path):
    # a restarted consumer acts on its first record at once, whatever the channel's length
    w = ChannelWriter(str(tmp_path))
    w.append([_ref(i) for i in range(50)], inc=0)
    with open(w.path, "ab") as f:  # a line no correct writer writes: skipped, no position, counted
        f.write(b"{not json\n" + json.dumps({"ref": _ref(50), "inc": 0}).encode() + b"\n")
    reader = ChannelReader(str(tmp_path))
    q = StreamingRefQueue(reader)
    assert q.poll() == 52 and q.buffered == 52
    assert q.next()[:2] == ("take", 0) and reader.position == 1
    decided = [q.next() for _ in range(50)]
    assert [pos for _, pos, _ in decided] == list(range(1, 51)) and decided[-1][2].sample_id == "s50"
    assert q.next() is None and reader.corrupt_lines == 1 and q.buffered == 0
