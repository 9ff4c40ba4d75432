"""The simulation engine's power-cut rule (issue 12, item 5): `simulate --powercuts`.

The variants below patch the reference (as tests/pipeline_zoo.py does):

* `durable_reference`: the reference with a directory fsync after each
  creation or rename its files depend on (the durability bugs the power-cut
  rule exposes in the current reference, fixed here only for these tests);
* `channel_no_fsync`: `durable_reference`, but the channel append is never
  fsynced; `store_sync_off`: `durable_reference` with a SQLite store at
  `synchronous=OFF`. A SIGKILL keeps the unsynced pages, so only a power cut
  shows these.

The searches run `python -m harness simulate` as a child (it restarts itself
with the tracer preloaded), so each test also exercises that path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import reference_impl.channel as channel_mod
import reference_impl.consumer as consumer_mod
import reference_impl.feature_store as fs_mod
import reference_impl.stores.sqlite as sqlite_mod
from harness.scenario import tomllib  # tomllib, or tomli before Python 3.11
from reference_impl.fileio import fsync_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = "tests.test_simulate_powercut"


# -- variants ------------------------------------------------------------------------

def durable_reference():
    """Each file's directory entry made durable where the pipeline relies on it."""
    w_init = channel_mod.ChannelWriter.__init__
    f_init = fs_mod.FeatureStore.__init__
    f_put = fs_mod.FeatureStore.put
    s_init = sqlite_mod.SQLiteMetadataStore.__init__
    save = consumer_mod.save_checkpoint

    def writer_init(self, workdir):
        w_init(self, workdir)
        os.fsync(self._fd)  # records an earlier incarnation appended but never fsynced
        fsync_dir(workdir)

    def store_init(self, path, **kw):
        s_init(self, path, **kw)
        fsync_dir(os.path.dirname(os.path.abspath(path)))

    def feature_init(self, root):
        f_init(self, root)
        fsync_dir(os.path.dirname(os.path.abspath(root)))

    def put(self, sample_id, tensors):
        out = f_put(self, sample_id, tensors)
        fsync_dir(self.root)
        return out

    def save_checkpoint(cfg, state):
        save(cfg, state)
        fsync_dir(cfg.workdir)  # the checkpoint directory's own entry

    return [(channel_mod.ChannelWriter, "__init__", writer_init),
            (sqlite_mod.SQLiteMetadataStore, "__init__", store_init),
            (fs_mod.FeatureStore, "__init__", feature_init),
            (fs_mod.FeatureStore, "put", put),
            (consumer_mod, "save_checkpoint", save_checkpoint)]


def channel_no_fsync():
    """`durable_reference` whose channel append returns without an fsync."""

    def sync(self):
        channel_mod.failpoints.hit("channel.before_fsync")  # and no os.fsync

    return durable_reference() + [(channel_mod.ChannelWriter, "sync", sync)]


def store_sync_off():
    """`durable_reference` whose SQLite store runs with synchronous=OFF (never fsyncs its WAL)."""
    init_schema = sqlite_mod.SQLiteMetadataStore._init_schema

    def _init_schema(self):
        init_schema(self)
        self._conn.execute("PRAGMA synchronous=OFF")

    return durable_reference() + [(sqlite_mod.SQLiteMetadataStore, "_init_schema", _init_schema)]


# -- running the CLI --------------------------------------------------------------------

def simulate(tmp_path, *args, name="run"):
    out_json = tmp_path / f"{name}.json"
    out_toml = tmp_path / f"{name}.toml"
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-m", "harness", "simulate", "--jobs", "1", "--json", str(out_json),
                           "--out", str(out_toml), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    data = json.loads(out_json.read_text()) if out_json.exists() else None
    return proc, data, out_toml


def _found(data):
    return bool(data and data["found"])


@pytest.fixture(scope="module")
def tracer():
    from harness.exit_codes import UsageError
    from harness.powerloss import tracer_library

    try:
        return tracer_library()
    except UsageError as e:  # the CLI must then refuse --powercuts with exit 2 (test below)
        pytest.fail(f"no tracer on this machine: {e}")


def _found_by_power_loss(proc, data):
    """A failure whose schedule cuts power and whose cuts dropped unsynced writes."""
    assert proc.returncode == 1 and _found(data), proc.stdout + proc.stderr
    ce = data["counterexamples"][0]
    assert any(op[0] == "powercut" for op in ce["ops"]), ce["schedule"]
    assert ce["violated"] or ce["outcome"] != "completed", ce
    assert any(pl["unsynced_writes_dropped"] for pl in ce["powerloss"]), ce["powerloss"]
    assert data["faults_fired"].get("powercut", 0) >= 1
    return ce


def _never_by_crashes(tmp_path, var):
    """The same search without power cuts finds nothing: a SIGKILL keeps unsynced pages, and the
    simulation's crashes do too."""
    proc, data, _ = simulate(tmp_path, "--variant", var, "--examples", "60", "--seed", "3", "--no-shrink",
                             name="crash")
    assert proc.returncode == 0 and not _found(data), proc.stdout + proc.stderr
    assert "powercut" not in data["faults_fired"] and data["faults_fired"].get("kill", 0) >= 5


@pytest.mark.slow
def test_powercut_rule_finds_what_only_power_loss_shows(tmp_path, tracer):
    """(a) store_sync_off is found with power cuts (seed 3: P4, a commit lost with the unsynced WAL
    returns fresh again), never with crashes only. (channel_no_fsync, the other variant only power
    loss shows, is found, shrunk and replayed by the next test: one search serves both.)"""
    var = f"{HERE}:store_sync_off"
    _found_by_power_loss(*simulate(tmp_path, "--variant", var, "--examples", "60", "--seed", "3", "--powercuts",
                                   "--no-shrink", name="pc")[:2])
    _never_by_crashes(tmp_path, var)


@pytest.mark.slow
def test_durable_reference_passes_power_cuts(tmp_path, tracer):
    """No false alarm: with its directory entries made durable the reference keeps P1-P8 under
    power cuts, clean and torn, between steps and inside operations."""
    proc, data, _ = simulate(tmp_path, "--variant", f"{HERE}:durable_reference", "--examples", "80", "--seed", "3",
                             "--powercuts", "--no-shrink", name="durable")
    assert proc.returncode == 0 and not _found(data), proc.stdout + proc.stderr
    assert data["faults_fired"].get("powercut", 0) >= 10, data["faults_fired"]


@pytest.mark.slow
def test_powercut_schedule_shrinks_and_translates(tmp_path, tracer):
    """(a) channel_no_fsync is found with power cuts (seed 3: P7, blobs of lost records leak), never
    with crashes only; (b) its failing schedule is shrunk and written as a scenario with
    kind = "powercut", and the shrunk schedule replays."""
    proc, data, toml_path = simulate(tmp_path, "--variant", f"{HERE}:channel_no_fsync", "--examples", "60",
                                     "--seed", "3", "--powercuts", "--shrink-budget", "60", name="shrink")
    ce = _found_by_power_loss(proc, data)
    assert data["shrink_runs"] > 0
    assert len(ce["ops"]) <= data["workers"][0]["first_failure_ops"]
    assert len(ce["ops"]) <= 6, ce["schedule"]
    text = toml_path.read_text()
    sc = tomllib.loads(text)
    cuts = [f for f in sc["faults"]["explicit"] if f["kind"] == "powercut" or f.get("action") == "powercut"]
    assert cuts and sc["faults"]["powercut_mode"] in ("clean", "torn"), text
    assert all(sum(k in f for k in ("at_consumed", "at_published", "point")) == 1 for f in cuts), cuts
    assert sc["topology"]["variant"] == f"{HERE}:channel_no_fsync"
    # the shrunk schedule replays: the same failure from the saved --json
    proc = subprocess.run([sys.executable, "-m", "harness", "simulate", "--powercuts", "--variant",
                           f"{HERE}:channel_no_fsync", "--schedule", str(tmp_path / "shrink.json")], cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    for p in ce["violated"]:
        assert p in proc.stdout
    _never_by_crashes(tmp_path, f"{HERE}:channel_no_fsync")


@pytest.mark.slow
def test_reference_under_power_cuts(tmp_path, tracer):
    """(c) the reference with power cuts keeps P1-P8 (feature blobs and checkpoints are renamed
    into place and their directories fsynced before the commit or ack that names them)."""
    proc, data, _ = simulate(tmp_path, "--examples", "60", "--seed", "3", "--powercuts", "--shrink-budget", "20",
                             name="ref")
    assert data is not None, proc.stdout + proc.stderr
    assert proc.returncode == 0 and not _found(data), proc.stdout + proc.stderr
    assert data["faults_fired"].get("powercut", 0) >= 5, data["faults_fired"]


@pytest.mark.slow
def test_same_seed_same_schedules(tmp_path, tracer):
    a = simulate(tmp_path, "--examples", "12", "--seed", "5", "--powercuts", "--no-shrink",
                 "--variant", f"{HERE}:durable_reference", name="a")[1]
    b = simulate(tmp_path, "--examples", "12", "--seed", "5", "--powercuts", "--no-shrink",
                 "--variant", f"{HERE}:durable_reference", name="b")[1]
    assert a["faults_fired"] == b["faults_fired"] and a["schedules"] == b["schedules"]
    assert a["faults_fired"].get("powercut", 0) >= 1


def test_powercuts_refused_without_compiler(tmp_path):
    """No compiler (and no cached tracer): exit 2, with the cause named, never a silent run."""
    env = dict(os.environ, PYTHONPATH=REPO, CC="/nonexistent/cc", XDG_CACHE_HOME=str(tmp_path / "cache"))
    env.pop("LD_PRELOAD", None)
    proc = subprocess.run([sys.executable, "-m", "harness", "simulate", "--powercuts", "--examples", "2"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "compiler" in (proc.stdout + proc.stderr)


def test_powercut_op_needs_the_flag():
    from harness.faults.simulated import check_ops

    assert check_ops([["powercut", "torn", 3]], powercuts=True) == [("powercut", "torn", 3)]
    at = ("powercut", "clean", 0, "producer", "channel.before_fsync")
    assert check_ops([list(at)], powercuts=True) == [at]
    with pytest.raises(ValueError, match="point"):
        check_ops([["powercut", "clean", 0, "producer", "consumer.after_train_before_ack"]], powercuts=True)
    with pytest.raises(ValueError, match="--powercuts"):
        check_ops([["powercut", "clean", 0]])
    with pytest.raises(ValueError, match="mode"):
        check_ops([["powercut", "half", 0]], powercuts=True)


def test_channel_loss_after_a_cut_is_judged_by_what_was_fsynced(tmp_path):
    """Complete records an fsync covered and that vanish: P6; unsynced ones: recounted, not reported."""
    from harness.run_plumbing import Progress
    from harness.simulate.powercut import PowerCuts

    class Inv:
        def __init__(self):
            self.progress = Progress(str(tmp_path))
            self.found = []

        def add(self, prop, kind, msg):
            self.found.append((prop, kind, msg))

    path = tmp_path / "channel.jsonl"
    recs = b"".join(b'{"ref": {"sample_id": "s%d"}}\n' % i for i in range(4))
    path.write_bytes(recs)
    inv = Inv()
    assert inv.progress.update_published() == 4
    path.write_bytes(recs[: recs.index(b"\n") + 1])  # the cut left one record
    assert PowerCuts._resync_channel(inv, synced=recs.index(b"\n") + 1) == len(recs) - recs.index(b"\n") - 1
    assert inv.found == [] and inv.progress.published == 1  # the three lost were never fsynced
    path.write_bytes(recs)
    inv = Inv()
    inv.progress.update_published()
    path.unlink()  # fsynced, but its directory entry was not durable
    assert PowerCuts._resync_channel(inv, synced=len(recs)) == len(recs)
    assert [f[:2] for f in inv.found] == [("P6", "channel_records_lost")] and "gone" in inv.found[0][2]
    assert inv.progress.published == 0


CLOSE_PROBE = """
import json, os
from harness.powerloss import read_journal
from harness.simulate import powercut as P
from harness.simulate.engine import Simulation
seen = {}
orig = P.PowerCuts._close_observer
def probe(self, st):
    st.observer.durable_marker()
    n0 = len(read_journal(self.journal))
    orig(self, st)
    seen["ops"] = sorted({r.op for r in read_journal(self.journal)[n0:]})
    seen["wal"] = os.path.exists(os.path.join(self.workdir, "store.sqlite-wal"))
P.PowerCuts._close_observer = probe
r = Simulation(powercuts=True).run([("step", "producer", 9), ("step", "consumer", 9), ("powercut", "clean", 0)])
print(json.dumps(dict(seen, error=r.error)))
"""


@pytest.mark.slow
def test_cut_closes_sqlite_without_a_checkpoint(tracer):
    """The last connection's close must not checkpoint (write, fdatasync, unlink the WAL): a
    SIGKILL does not, and a checkpoint would make durable what a power cut loses."""
    from harness.powerloss import journal as J

    env = dict(os.environ, PYTHONPATH=REPO, LD_PRELOAD=tracer)
    proc = subprocess.run([sys.executable, "-c", CLOSE_PROBE], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["error"] is None and seen["wal"] is True, seen
    assert not set(seen["ops"]) & {J.WRITE, J.TRUNCATE, J.UNLINK, J.FSYNC, J.FDATASYNC}, seen


def test_bad_powercut_input_exits_2(tmp_path, capsys):
    from harness.simulate.cli import main

    assert main(["--powercuts", "--backend", "inmemory", "--examples", "1"]) == 2
    assert "in-memory store" in capsys.readouterr().err
    sched = tmp_path / "s.json"
    sched.write_text(json.dumps([["step", "producer", 2], ["powercut", "torn", 1]]))
    assert main(["--schedule", str(sched)]) == 2
    assert "needs --powercuts" in capsys.readouterr().err
