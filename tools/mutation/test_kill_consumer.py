"""The killing test's items aimed at `reference_impl.consumer`'s survivors (tools/mutation/run.py runs
every tools/mutation/test_kill*.py; triage in tools/mutation/triage/consumer.toml). Each runs in the
test's own process (mutmut selects, for a mutant, only the tests that it saw call the mutant's function
there), each in a second or two:

1. the consumer's command line names itself: `--help` prints the prog and the description, and a
   config it cannot load is a usage error signed `consumer:`;
2. the consumer's main, run in this process after the producer's: its `start` event (pid, resume,
   device, backend), its `done` event and the `channel.consumer_done` sentinel (the consumed count
   and the last step), the checkpoint's writer incarnation (`--incarnation`); a second start without
   `--resume` over that checkpoint is refused with a usage error that names it, on stderr; a start
   with `--resume` over a lost ledger (the SQLite file removed) fails closed as `ledger_lost`, the
   sentinel and the stderr line naming the consumer and the detail;
3. what a restarted consumer records (two crashes between checkpoint and ack): the reconcile event
   of the third incarnation field by field, every ack durable, every release naming the ids of the
   ack before it, the blobs a crash left behind released (`gc`) after the failpoint between ack and
   release, the `done` event, each consumed count once, and no replay nobody asked for;
4. a planted replay recorded once, from where to where;
5. the last, short window (18 samples, windows of 4): trained after the failpoint between read and
   train, and checkpointed though not due;
6. a restart after an ack: no roll-forward ack (the checkpoint is at the marker's step);
7. the pre-O1.1 layout's reconcile events, field by field, on a restart after an ack;
8. a consumer built directly: its device, the model moved onto it, the error of a device it cannot
   have naming the consumer, a networked store's failed attempts recorded as `store_call` events,
   replay requests adding up, a poll that brought a record counted as progress (and the window
   taking no more than its size), and on a closed, empty channel the finishing step says done, once
   (a finished consumer stays done);
9. a consumer built directly trains its windows in `accumulation` micro-batches (the model's loss
   recorded: indices, cross-entropy share, the device the tensors went to), names each missing blob,
   honours a step delay, and is not starved at exactly `starve_checkpoint_s`;
10. power cuts (the durability tracer preloaded, as tools/mutation/run.py does; skipped without it):
    one after a restarted consumer rolled the ledger forward to a checkpoint its predecessor renamed
    but did not make durable, one after a checkpoint and its ack; the reference completes both;
11. a checkpoint that is not plain weights is refused (weights-only), also where torch's own default
    would unpickle it (TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD).
"""

from __future__ import annotations

import json
import os
import re

import pytest

CKPT_BEFORE_ACK = "consumer.after_checkpoint_before_ack"
VOLATILE = ("proc", "inc", "seq", "t", "mono", "reached", "line")


def _fields(e):
    return {k: v for k, v in e.items() if k not in VOLATILE}


def _events(sim, ev, inc=None):
    return [e for e in sim.st.log.events
            if e.get("proc") == "consumer" and e.get("ev") == ev and (inc is None or e.get("inc") == inc)]


def test_the_consumer_cli_names_itself(capsys):
    from reference_impl import consumer

    with pytest.raises(SystemExit) as exc:
        consumer.main(["--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    assert out.startswith("usage: python -m reference_impl.consumer ")
    assert "\nReference consumer: train the draft head on published refs.\n" in out
    # a config it cannot load: a usage error that the consumer signs
    from reference_impl.config import EXIT_USAGE

    assert consumer.main(["--config", "/nonexistent/config.json"]) == EXIT_USAGE
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err.startswith("consumer: error: "), cap.err


def _history(path, inc):
    with open(path) as f:
        return [json.loads(line) for line in f if json.loads(line).get("inc") == inc]


def test_the_consumer_main_records_its_run_and_refuses_or_fails_closed(tmp_path, capsys):

    from harness.simulate.engine import config_for
    from reference_impl import consumer, producer
    from reference_impl.channel import CONSUMER_DONE, FAILED, sentinel
    from reference_impl.config import EXIT_FAIL_CLOSED, EXIT_USAGE

    cfg = config_for(str(tmp_path), {"samples": 8, "high_watermark": 16, "low_watermark": 4}, "sqlite")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg.to_dict()))
    conf = ["--config", str(path)]
    assert (producer.main(conf + ["--incarnation", "0"]), consumer.main(conf + ["--incarnation", "2"])) == (0, 0)
    hist = str(tmp_path / "history" / "consumer.jsonl")
    events = _history(hist, 2)
    done = [_fields(e) for e in events if e["ev"] == "done"]
    step = done[0]["step"] if done else None
    assert _fields(events[0]) == {"ev": "start", "pid": os.getpid(), "resume": False, "device": "cpu",
                                  "backend": "sqlite"}
    assert done == [{"ev": "done", "consumed": 8, "step": step}] and step >= 1
    assert sentinel(str(tmp_path), CONSUMER_DONE) == {"consumed": 8, "global_step": step}
    ckpt = consumer.checkpoint_path(cfg)
    state = consumer.load_checkpoint(cfg)
    assert (state["writer_inc"], state["global_step"]) == (2, step)
    capsys.readouterr()

    # over a checkpoint, without --resume: refused, the checkpoint named on stderr
    assert consumer.main(conf) == EXIT_USAGE
    cap = capsys.readouterr()
    assert (cap.out, cap.err) == ("", f"consumer: error: {ckpt} exists; pass --resume to continue that run "
                                      f"or use a fresh workdir\n")

    # the ledger lost under the checkpoint: fail closed, said by the consumer with the detail
    for name in os.listdir(tmp_path):
        if name.startswith("store.sqlite"):
            os.remove(tmp_path / name)
    assert consumer.main(conf + ["--resume", "--incarnation", "3"]) == EXIT_FAIL_CLOSED
    err = capsys.readouterr().err
    detail = r"store ledger \S+ is not the ledger \S+ of the checkpoint"
    assert re.fullmatch(rf"consumer: fail closed \(ledger_lost\): {detail}\n", err), err
    failed = sentinel(str(tmp_path), FAILED)
    assert (failed["proc"], failed["fail_closed"]) == ("consumer", True)
    assert re.fullmatch(rf"ledger_lost: {detail}", failed["reason"]), failed
    events = _history(hist, 3)
    assert _fields(events[0])["resume"] is True
    closed = [_fields(e) for e in events if e["ev"] == "fail_closed"]
    assert len(closed) == 1 and re.fullmatch(detail, closed[0]["detail"]), closed


def test_a_restarted_consumer_records_its_reconcile_acks_and_releases():
    from harness.simulate import Simulation

    sim = Simulation()
    r = sim.run([("fail", "consumer", CKPT_BEFORE_ACK), ("fail", "consumer", CKPT_BEFORE_ACK)])
    assert (r.outcome, r.violated) == ("completed", []), r.summary()
    ids = [f"s{i:06d}" for i in range(24)]
    assert [_fields(e) for e in _events(sim, "reconcile", 2)] == [
        {"ev": "reconcile", "marker_step": 1, "checkpoint_step": 2, "checkpoint_inc": 1, "released": ids[:8],
         "requeued": [], "rolled_forward": ids[4:8], "consumed_before": 4, "marker_acked_count": 4}]
    acks, releases = [], []
    for e in sim.st.log.events:
        if e.get("proc") == "consumer" and e.get("ev") == "ack":
            acks.append((e.get("durable"), e.get("ids")))
        elif e.get("proc") == "consumer" and e.get("ev") == "release_features" and not e.get("gc"):
            releases.append((e.get("ids"), acks[-1][1] if acks else None))
    assert [d for d, _ in acks] == [True] * 6
    assert releases == [(ids[i:i + 4], ids[i:i + 4]) for i in range(8, 24, 4)]
    # the blobs a crash left behind, released by the restart after the failpoint between ack and release
    gc = [(e["inc"], _fields(e), e.get("reached")) for e in _events(sim, "release_features") if e.get("gc")]
    assert gc == [(inc, {"ev": "release_features", "ids": ids[4 * inc - 4:4 * inc], "gc": True},
                   {"consumer.after_ack_before_release": 1}) for inc in (1, 2)]
    assert [_fields(e) for e in _events(sim, "done")] == [{"ev": "done", "consumed": 24, "step": 6}]
    assert [e.get("consumed") for e in _events(sim, "consumed")] == [4, 8, 12, 16, 20, 24]
    assert _events(sim, "replay") == []


def test_a_planted_replay_is_recorded_once():
    # the replay fault asked for at the second hit of after_read_before_train: one rewind, from the
    # read position (8) back to the first record not acked (0), recorded once
    from harness.simulate.exhaustive import Planted, PlantedSimulation

    sim = PlantedSimulation()
    r, _ = sim.run_plan([Planted("consumer", 0, "consumer.after_read_before_train", 2, "replay")])
    assert (r.outcome, r.violated) == ("completed", []), r.summary()
    assert [_fields(e) for e in _events(sim, "replay")] == [{"ev": "replay", "from_pos": 8, "to_pos": 0}]


def test_the_last_short_window_is_trained_and_checkpointed():
    # 18 samples, windows of 4, a checkpoint every 2 steps: the fifth step trains the last 2 records after
    # the failpoint between read and train, and is checkpointed though not due
    from harness.simulate import Simulation

    sim = Simulation(workload={"samples": 18, "checkpoint_every": 2})
    r = sim.run([])
    assert (r.outcome, r.violated) == ("completed", []), r.summary()
    trains = [(e.get("step"), len(e.get("ids")), e.get("reached")) for e in _events(sim, "train")]
    assert trains == [(s, 4 if s < 5 else 2, {"consumer.after_read_before_train": 1}) for s in range(1, 6)]
    assert [e.get("step") for e in _events(sim, "checkpoint")] == [2, 4, 5]


AFTER_AN_ACK = [("step", "producer", 8), ("step", "consumer", 8), ("kill", "consumer")]


def test_a_restart_after_an_ack_rolls_nothing_forward():
    # the checkpoint is at the marker's step: the restart acks nothing again
    from harness.simulate import Simulation

    sim = Simulation()
    r = sim.run(AFTER_AN_ACK)
    assert (r.outcome, r.violated) == ("completed", []), r.summary()
    assert [(e.get("step"), e.get("roll_forward")) for e in _events(sim, "ack", 1)] == [(s, None) for s in range(2, 7)]


def test_the_pre_o11_reconcile_events():
    from harness.simulate import Simulation

    sim = Simulation(backend="private")
    r = sim.run(AFTER_AN_ACK)
    assert (r.outcome, r.violated) == ("completed", []), r.summary()
    blank = {"ev": "reconcile", "marker_step": None, "released": [], "requeued": [], "rolled_forward": [],
             "marker_acked_count": 0, "layout": "private"}
    assert [_fields(e) for e in _events(sim, "reconcile")] == [
        dict(blank, checkpoint_step=None, checkpoint_inc=None, consumed_before=0),
        dict(blank, checkpoint_step=1, checkpoint_inc=0, consumed_before=4)]


def _publish(w, cfg, *indices):
    """Append the refs of samples `indices` of `cfg` to the channel writer `w` (incarnation 0)."""
    from reference_impl.contracts import SampleRef, ref_to_dict

    for i in indices:
        w.append_one(ref_to_dict(SampleRef(sample_id=cfg.sample_id(i), run_id="r", source_task_id=None,
                                           feature_store_uri="file:///f", feature_keys={}, feature_specs={},
                                           strategy="s")), 0)


def _moved(status):
    # the process loop and the simulation compare a step's status only with idle and done
    return status not in ("idle", "done")


class _Recorder:
    def __init__(self):
        self.events = []

    def emit(self, ev, **fields):
        self.events.append(dict(fields, ev=ev))


def test_a_consumer_built_directly(tmp_path, monkeypatch):
    import dataclasses

    import torch

    from harness.simulate.engine import config_for
    from reference_impl import failpoints
    from reference_impl.consumer import Consumer
    from reference_impl.devices import DeviceError
    from reference_impl.model import DraftModel
    from reference_impl.stores.sqlite import SQLiteMetadataStore

    monkeypatch.setattr(failpoints, "_HANDLERS", {})
    moved = []

    def to(self, *a, **kw):
        moved.append(a[0] if a else kw.get("device"))
        return torch.nn.Module.to(self, *a, **kw)

    monkeypatch.setattr(DraftModel, "to", to, raising=False)
    cfg = config_for(str(tmp_path), {}, "sqlite")
    store = SQLiteMetadataStore(os.path.join(str(tmp_path), "store.sqlite"))
    store.on_network_event = None  # as a networked store has it
    h = _Recorder()
    c = Consumer(cfg, incarnation=0, history=h, store=store)
    try:
        assert (c.device, moved, c.replay) == (torch.device("cpu"), [torch.device("cpu")], 0)
        store.on_network_event(call="ack", attempt=1)
        assert [e for e in h.events if e["ev"] == "store_call"] == [{"ev": "store_call", "call": "ack",
                                                                      "attempt": 1}]
        assert failpoints.act("replay", 2) and failpoints.act("replay", 3)
        assert c.replay == 5
    finally:
        c.close()
    # a poll that brought a record is progress (no sleep) and restarts the starvation clock
    from reference_impl.channel import ChannelWriter

    now = [10.0]
    c = Consumer(cfg, incarnation=1, history=h, store=SQLiteMetadataStore(os.path.join(str(tmp_path), "store.sqlite")),
                 clock=lambda: now[0])
    w = ChannelWriter(str(tmp_path))

    try:
        _publish(w, cfg, 0)
        now[0] = 11.0
        assert (_moved(c.step()), c.last_progress, len(c.window)) == (True, 11.0, 1)
        now[0] = 12.0
        assert (c.step(), c.last_progress) == ("idle", 11.0)
        # more records than the window has room for: it takes cfg.window of them, then trains
        _publish(w, cfg, *range(1, cfg.window + 1))
        assert (_moved(c.step()), [r.sample_id for r in c.window], c.phase) == (
            True, [cfg.sample_id(i) for i in range(cfg.window)], "train")
    finally:
        w.close()
        c.close()
    # the channel closed and empty: the step that finishes says done, the sentinel and the event say
    # what was consumed, and a finished consumer stays done without finishing again
    from reference_impl.channel import CLOSED, CONSUMER_DONE, sentinel, set_sentinel

    empty = tmp_path / "empty"
    cfg2 = config_for(str(empty), {}, "sqlite")
    os.makedirs(str(empty))
    set_sentinel(str(empty), CLOSED, {"records": 0})
    h2 = _Recorder()
    c = Consumer(cfg2, incarnation=0, history=h2)
    try:
        assert (c.step(), c.step()) == ("done", "done")
    finally:
        c.close()
    assert [e for e in h2.events if e["ev"] == "done"] == [{"ev": "done", "consumed": 0, "step": 0}]
    assert sentinel(str(empty), CONSUMER_DONE) == {"consumed": 0, "global_step": 0}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match=r"^consumer: device 'cuda' was demanded"):
        Consumer(dataclasses.replace(cfg, consumer_device="cuda"), incarnation=0, history=_Recorder())


def test_a_consumer_trains_its_windows_in_accumulation_micro_batches(tmp_path, monkeypatch):
    # the model's loss recorded, not computed: each micro-batch's sample indices, its cross-entropy
    # weight (its share of the step) and where its tensors went (the consumer's device, here `meta`)
    import torch

    from harness.simulate.engine import config_for
    from reference_impl import failpoints
    from reference_impl.channel import ChannelWriter
    from reference_impl.consumer import Consumer

    monkeypatch.setattr(failpoints, "_HANDLERS", {})
    cfg = config_for(str(tmp_path), {"checkpoint_every": 2}, "sqlite")
    now = [20.0]
    h = _Recorder()
    c = Consumer(cfg, incarnation=0, history=h, clock=lambda: now[0])
    w = ChannelWriter(str(tmp_path))

    calls = []

    def loss(batch, indices, world_size, ce_weight=None):
        calls.append((list(indices), ce_weight, sorted({str(t.device) for b in batch for t in b.values()})))
        return c.model.witness.sum() * 0

    try:
        # a window whose blobs are missing: each named in a missing_features event, nothing trained
        _publish(w, cfg, 0, 1, 2, 3)
        assert (_moved(c.step()), c.phase) == (True, "train")
        c.step()
        assert [e for e in h.events if e["ev"] == "missing_features"] == [
            {"ev": "missing_features", "id": cfg.sample_id(i)} for i in range(4)]
        assert (c.global_step, c.phase) == (0, "fill")
        c.features.get = lambda sid: {"t": torch.zeros(2)}
        c.model.loss = loss
        c.device = torch.device("meta")
        cfg.consumer_step_delay_s = 0.001
        _publish(w, cfg, 4, 5, 6, 7)
        c.step()
        c.step()
        assert calls == [([4, 5], 0.5, ["meta"]), ([6, 7], 0.5, ["meta"])]
        assert (c.global_step, c.unacked, c.phase) == (1, [cfg.sample_id(i) for i in range(4, 8)], "fill")
        # starved for exactly starve_checkpoint_s: not yet more than it, so no checkpoint
        now[0] = 20.0 + cfg.starve_checkpoint_s
        assert (c.step(), c.phase) == ("idle", "fill")
        calls.clear()
        cfg.train_batch, cfg.accumulation = 1, 4  # a window of 4 in 4 micro-batches of 1
        _publish(w, cfg, 8, 9, 10, 11)
        c.step()
        c.step()
        assert calls == [([i], 0.25, ["meta"]) for i in range(8, 12)]
        assert (c.global_step, c.phase) == (2, "checkpoint")
    finally:
        w.close()
        c.close()


POWERCUTS = {
    # killed between the checkpoint's rename and its directory fsync; the restart rolls the ledger
    # forward to that checkpoint, which must be durable first
    "after-a-roll-forward": [("fail", "consumer", "consumer.mid_checkpoint_replace"), ("step", "consumer", 3),
                             ("powercut", "clean", 0)],
    # after a checkpoint and its ack: the checkpoint's rename must be durable before the ack
    "after-an-ack": [("step", "producer", 8), ("step", "consumer", 8), ("powercut", "clean", 0)],
}


@pytest.mark.parametrize("name", list(POWERCUTS))
def test_a_power_cut_after_a_checkpoint(name):
    from harness.simulate import Simulation
    from harness.simulate.powercut import tracer_loaded

    if not tracer_loaded():  # tools/mutation/run.py preloads it (LD_PRELOAD)
        pytest.skip("power cuts in the simulation need the durability tracer preloaded")
    r = Simulation(powercuts=True).run(POWERCUTS[name])
    assert (r.outcome, r.violated) == ("completed", []), r.summary()


def test_a_checkpoint_that_is_not_plain_weights_is_refused(tmp_path):
    # the consumer never unpickles its checkpoint: a torch.save file (a pickle) is refused, not run
    import torch

    from harness.simulate.engine import config_for
    from reference_impl.consumer import checkpoint_path, load_checkpoint, save_checkpoint

    cfg = config_for(str(tmp_path), {}, "sqlite")
    save_checkpoint(cfg, {"global_step": 1, "model": {"witness": torch.ones(2)}})
    ckpt = load_checkpoint(cfg)
    assert ckpt["global_step"] == 1 and ckpt["model"]["witness"].tolist() == [1.0, 1.0]
    torch.save({"global_step": 1}, checkpoint_path(cfg))
    with pytest.raises(ValueError, match="not a checkpoint"):
        load_checkpoint(cfg)
