import os

from reference_impl import failpoints
from reference_impl.channel import CHANNEL, ChannelReader, ChannelWriter, count_records, read_consumed, write_consumed


def rec(i):
    return {"sample_id": f"s{i}"}


def test_reader_never_parses_a_partial_record(tmp_path):
    w = ChannelWriter(str(tmp_path))
    w.append([rec(0), rec(1)], inc=0)
    with open(tmp_path / CHANNEL, "ab") as f:
        f.write(b'{"ref": {"sample_id": "s2"')  # torn: a crash mid-append
    r = ChannelReader(str(tmp_path))
    got = r.poll()
    assert [x["ref"]["sample_id"] for _, x in got] == ["s0", "s1"]
    assert r.poll() == []  # the fragment stays unread
    assert r.corrupt_lines == 0


def test_next_writer_cuts_a_torn_tail_so_records_do_not_glue(tmp_path):
    w = ChannelWriter(str(tmp_path))
    w.append([rec(0)], inc=0)
    w.close()
    with open(tmp_path / CHANNEL, "ab") as f:
        f.write(b'{"ref": {"sam')
    w2 = ChannelWriter(str(tmp_path))
    assert w2.torn_bytes_repaired == len(b'{"ref": {"sam')
    assert w2.records == 1
    w2.append([rec(1)], inc=1)
    r = ChannelReader(str(tmp_path))
    assert [(p, x["ref"]["sample_id"], x["inc"]) for p, x in r.poll()] == [(0, "s0", 0), (1, "s1", 1)]
    assert r.corrupt_lines == 0


def test_injected_eio_mid_append_leaves_a_clean_boundary(tmp_path):
    w = ChannelWriter(str(tmp_path))
    w.append([rec(0)], inc=0)
    failpoints.configure([{"point": "channel.mid_append", "action": "eio", "hit": 1}])
    try:
        try:
            w.append_one(rec(1), 0)
            raise AssertionError("the injected EIO did not surface")
        except OSError as e:
            assert e.errno == 5
    finally:
        failpoints.configure(None)
    assert os.path.getsize(tmp_path / CHANNEL) == w.size
    w.append([rec(2)], inc=0)
    assert count_records(str(tmp_path)) == 2


def test_consumed_sidecar_round_trip(tmp_path):
    assert read_consumed(str(tmp_path)) == 0
    write_consumed(str(tmp_path), 17)
    assert read_consumed(str(tmp_path)) == 17
    assert not [n for n in os.listdir(tmp_path) if ".tmp." in n]
