import json
import os

import pytest

from harness.history import HistoryError, load_history, load_merged, write_merged


def _line(proc, inc, seq, mono, ev, **f):
    e = {"proc": proc, "inc": inc, "seq": seq, "t": 1.7e9 + mono, "mono": mono, "ev": ev}
    e.update(f)
    return json.dumps(e, separators=(",", ":"))


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def test_merge_interleaved_processes_and_torn_tails(tmp_path):
    hist = tmp_path / "history"
    # producer: complete events at mono 1, 3, 5 then a torn last line (no newline)
    _write(str(hist / "producer.jsonl"),
           _line("producer", 0, 0, 1.0, "start") + "\n"
           + _line("producer", 0, 1, 3.0, "commit", ids=["a"], fresh=[True]) + "\n"
           + _line("producer", 0, 2, 5.0, "publish", ids=["a"]) + "\n"
           + _line("producer", 0, 3, 7.0, "close")[:25])
    # consumer: two incarnations, and a last line that is not JSON although it ends in a newline
    _write(str(hist / "consumer.jsonl"),
           _line("consumer", 0, 0, 2.0, "start") + "\n"
           + _line("consumer", 1, 0, 4.0, "start") + "\n"
           + '{"proc":"consumer","inc":1,"seq":1,"ev":\n')
    stats = {}
    events = load_history(str(tmp_path), stats)
    assert [(e["proc"], e["inc"], e["ev"]) for e in events] == [
        ("producer", 0, "start"), ("consumer", 0, "start"), ("producer", 0, "commit"),
        ("consumer", 1, "start"), ("producer", 0, "publish")]
    assert [e["line"] for e in events] == [1, 2, 3, 4, 5]
    assert stats == {"torn": 2, "events": 5}


def test_fragment_glued_to_next_incarnation_is_dropped(tmp_path):
    # A SIGKILL tore an event; the next incarnation appended a complete event to the same line.
    text = (_line("consumer", 0, 0, 1.0, "start") + "\n"
            + _line("consumer", 0, 1, 2.0, "train", step=1, ids=["a"])[:30]
            + _line("consumer", 1, 0, 3.0, "start") + "\n"
            + _line("consumer", 1, 1, 4.0, "reconcile") + "\n")
    _write(str(tmp_path / "history" / "consumer.jsonl"), text)
    events = load_history(str(tmp_path))
    assert [(e["inc"], e["ev"]) for e in events] == [(0, "start"), (1, "start"), (1, "reconcile")]


def test_garbage_in_the_middle_is_an_error(tmp_path):
    _write(str(tmp_path / "history" / "producer.jsonl"),
           _line("producer", 0, 0, 1.0, "start") + "\nnot json at all\n" + _line("producer", 0, 1, 2.0, "exit") + "\n")
    with pytest.raises(HistoryError, match="producer.jsonl:2"):
        load_history(str(tmp_path))


def test_equal_mono_orders_by_proc_inc_seq(tmp_path):
    _write(str(tmp_path / "history" / "b.jsonl"), _line("supervisor", 0, 0, 5.0, "kill") + "\n")
    _write(str(tmp_path / "history" / "a.jsonl"),
           _line("consumer", 1, 0, 5.0, "start") + "\n" + _line("consumer", 0, 7, 5.0, "train") + "\n")
    events = load_history(str(tmp_path))
    assert [(e["proc"], e["inc"]) for e in events] == [("consumer", 0), ("consumer", 1), ("supervisor", 0)]


def test_empty_run_dir(tmp_path):
    assert load_history(str(tmp_path)) == []


def test_write_and_load_merged_round_trip(tmp_path):
    _write(str(tmp_path / "history" / "producer.jsonl"),
           _line("producer", 0, 0, 1.0, "commit", ids=["a", "b"], fresh=[True, False]) + "\n"
           + _line("producer", 0, 1, 2.0, "exit", code=0) + "\n")
    events = load_history(str(tmp_path))
    path = str(tmp_path / "report" / "history.jsonl")
    write_merged(events, path)
    again = load_merged(path)
    assert again == events
    assert again[0]["fresh"] == [True, False] and again[1]["line"] == 2
