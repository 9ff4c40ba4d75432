"""SQLite `commit_samples` per second against the raw append+fsync rate, batches, acks.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from typing import Any, Dict

from .procfs import in_fresh_process
from .registry import BenchRun, goal, section


def _ref(i: int):
    from reference_impl.contracts import FeatureSpec, SampleRef

    sid = f"b{i:08d}"
    return SampleRef(sample_id=sid, run_id="bench", source_task_id=f"prompt-{i}",
                     feature_store_uri=f"file:///bench/features/{sid}",
                     feature_keys={k: f"{sid}/{k}" for k in ("input_ids", "hidden_states", "target")},
                     feature_specs={"input_ids": FeatureSpec("input_ids", (8,), "int64"),
                                    "hidden_states": FeatureSpec("hidden_states", (8, 16), "float32"),
                                    "target": FeatureSpec("target", (8,), "int64")},
                     strategy="eagle3", target_model_version="tiny-target-seed0", num_tokens=8, estimated_bytes=704,
                     metadata={"index": i})


def _rate(fn, secs: float) -> float:
    """Calls of fn per second over about `secs` seconds."""
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        el = time.perf_counter() - t0
        if el >= secs:
            return n / el


def sqlite_worker(base: str, rounds: int, secs: float) -> Dict[str, Any]:
    from reference_impl.stores.sqlite import SQLiteMetadataStore

    d = tempfile.mkdtemp(prefix="sqlite-", dir=base)
    raw = os.open(os.path.join(d, "raw.bin"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    record = b"x" * 200 + b"\n"

    def append_fsync():
        os.write(raw, record)
        os.fsync(raw)

    store = SQLiteMetadataStore(os.path.join(d, "store.sqlite"))
    counter = [0]

    def commit(b):
        def go():
            i = counter[0]
            counter[0] += b
            store.commit_samples([_ref(i + k) for k in range(b)])
        return go

    # Short interleaved slices: the disk's rate drifts by 2-5x within seconds
    # here (other tenants, writeback), so each ratio compares two rates taken
    # a fraction of a second apart; the figure is the median ratio.
    fs, c1, ratios = [], [], []
    for _ in range(rounds):
        a = _rate(append_fsync, secs / 2)
        b = _rate(commit(1), secs)
        a2 = _rate(append_fsync, secs / 2)
        fs += [a, a2]
        c1.append(b)
        ratios.append(b / ((a + a2) / 2))
    batches = {}
    for b in (16, 64, 256):
        batches[str(b)] = round(_rate(commit(b), secs) * b, 1)
    acked = [0]
    window = 8  # the default scenario's optimizer window (train_batch 4 x accumulation 2)

    def ack():
        i = acked[0]
        acked[0] += window
        store.record_train_ack([f"b{j:08d}" for j in range(i, i + window)], global_step=i // window + 1,
                               optimizer_durable=True)

    ack_rate = _rate(ack, secs)
    fs_after = _rate(append_fsync, secs / 2)
    store.close()
    os.close(raw)
    shutil.rmtree(d, ignore_errors=True)
    return {
        "fsync_per_s": round(statistics.median(fs), 1), "fsync_per_s_range": [round(min(fs), 1), round(max(fs), 1)],
        "batch1_samples_per_s": round(statistics.median(c1), 1),
        "batch1_vs_fsync": round(statistics.median(ratios), 3),
        "batch1_vs_fsync_rounds": [round(r, 3) for r in ratios],
        "batch1_vs_fsync_quartiles": [round(x, 3) for x in statistics.quantiles(ratios, n=4)],
        "commit_samples_per_s": {"1": round(statistics.median(c1), 1), **batches},
        "record_train_ack_per_s": round(ack_rate, 1), "record_train_ack_ids_per_s": round(ack_rate * window, 1),
        "record_train_ack_vs_fsync": round(ack_rate / fs_after, 3), "fsync_per_s_at_ack": round(fs_after, 1),
    }


@section("sqlite", order=4)
def sqlite_section(run: BenchRun) -> None:
    sq = in_fresh_process(sqlite_worker, run.base, 15 if run.quick else 40, 0.2)
    run.out["sqlite_batch1_vs_fsync"] = sq["batch1_vs_fsync"]
    run.out["sqlite"] = sq
    cs = sq["commit_samples_per_s"]
    run.say(f"sqlite commit_samples/s at batch 1: {cs['1']} vs raw append+fsync {sq['fsync_per_s']}/s "
            f"(range {sq['fsync_per_s_range']}) = {sq['batch1_vs_fsync']} "
            f"(median of {len(sq['batch1_vs_fsync_rounds'])} interleaved rounds, quartiles "
            f"{sq['batch1_vs_fsync_quartiles']}); {goal('sqlite_batch1_vs_fsync', sq['batch1_vs_fsync'])}")
    run.say(f"    batch 16: {cs['16']}/s, 64: {cs['64']}/s, 256: {cs['256']}/s; record_train_ack: "
            f"{sq['record_train_ack_per_s']}/s ({sq['record_train_ack_ids_per_s']} ids/s, "
            f"{sq['record_train_ack_vs_fsync']} of fsync {sq['fsync_per_s_at_ack']}/s)")
