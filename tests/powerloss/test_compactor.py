"""The journal compactor: bounded journal, and a rebuild identical to one from the whole journal."""

from __future__ import annotations

import os
import random
import shutil

import psutil
import pytest

from harness.powerloss.compactor import JournalCompactor, allocated_bytes
from harness.powerloss.rebuild import load_baseline, powercut

from .conftest import needs_cc

pytestmark = needs_cc

# Every kind of operation the model knows, several processes, files that come and go, SQLite in WAL
# mode, a file written after its unlink, a hard link, truncation, fsynced and unsynced directories.
WORKLOAD = '''
import os, sqlite3, sys
seed = int(sys.argv[1])
os.makedirs("d/sub", exist_ok=True)
db = sqlite3.connect("store.sqlite")
db.execute("PRAGMA journal_mode=WAL")
db.execute("CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v BLOB)")
keep = os.open("kept", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
for i in range(60):
    db.execute("INSERT OR REPLACE INTO t VALUES (?, ?)", (i % 17, os.urandom(700)))
    db.commit()
    name = f"d/f{seed}-{i}"
    with open(name, "wb") as f:
        f.write(os.urandom(3000 + i))
        if i % 3:
            f.flush(); os.fsync(f.fileno())
    if i % 4 == 0:
        os.rename(name, name + ".r")
    if i % 5 == 0 and os.path.exists(name):
        os.unlink(name)
    if i % 7 == 0:
        fd = os.open("d/sub", os.O_RDONLY); os.fsync(fd); os.close(fd)
        fd = os.open("d", os.O_RDONLY); os.fsync(fd); os.close(fd)
    os.write(keep, b"k" * (100 + i))
    if i % 6 == 0:
        os.fsync(keep)
    if i == 30:
        os.link("kept", f"d/kept-link{seed}"); os.ftruncate(keep, 500)
        g = os.open("d/ghost", os.O_WRONLY | os.O_CREAT, 0o644); os.unlink("d/ghost")
        os.write(g, b"written after its unlink"); os.fsync(g); os.close(g)
fd = os.open(".", os.O_RDONLY); os.fsync(fd); os.close(fd)
os.write(keep, b"unsynced tail")
'''


def _tree(root):
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for n in dirs:
            out[os.path.relpath(os.path.join(dirpath, n), root)] = "dir"
        for n in files:
            with open(os.path.join(dirpath, n), "rb") as f:
                out[os.path.relpath(os.path.join(dirpath, n), root)] = f.read()
    return out


def _restore(src, dst):
    shutil.rmtree(dst)
    shutil.copytree(src, dst)


def _stats(st):
    d = st.as_dict()
    d.pop("rebuild_ms")
    return d


def _feed_in_pieces(journal: str, rng: random.Random):
    """A compactor stepped while the journal 'grows': the finished journal is handed to it in random
    pieces (cutting records anywhere), as a live run would."""
    with open(journal, "rb") as f:
        data = f.read()
    growing = journal + ".growing"
    os.replace(journal, journal + ".whole")
    comp = JournalCompactor(growing, load_baseline(journal))
    pos = 0
    with open(growing, "wb") as out:
        while pos < len(data):
            n = rng.randint(1, 40000)
            out.write(data[pos:pos + n])
            out.flush()
            pos += n
            comp.step()
    os.replace(journal + ".whole", journal)
    os.replace(growing, journal)  # (the compactor reopens its journal by name at each step)
    comp.journal = journal
    return comp, data


@pytest.mark.parametrize("mode", ["clean", "torn"])
def test_rebuild_from_the_compacted_model_is_the_rebuild_from_the_whole_journal(traced, tmp_path, mode):
    with open(traced.p("kept"), "wb") as f:
        f.write(b"baseline")
    traced.arm()
    procs = [traced.run(WORKLOAD, str(s), check=False) for s in range(2)]
    assert all(p.returncode == 0 for p in procs), [p.stderr for p in procs]
    saved = str(tmp_path / "saved")
    shutil.copytree(traced.root, saved)
    journal_copy = str(tmp_path / "journal.copy")
    shutil.copyfile(traced.journal, journal_copy)
    for seed in range(3):
        _restore(saved, traced.root)
        shutil.copyfile(journal_copy, traced.journal)
        whole = powercut(traced.root, traced.journal, mode=mode, seed=seed)
        expected = _tree(traced.root)
        _restore(saved, traced.root)
        comp, data = _feed_in_pieces(traced.journal, random.Random(seed))
        compacted = powercut(traced.root, traced.journal, mode=mode, seed=seed, compactor=comp)
        assert _tree(traced.root) == expected
        assert _stats(compacted) == _stats(whole)
        assert whole.unsynced_writes_dropped > 0 and whole.entries_undone and whole.records > 500
        assert comp.records == whole.records and comp.offset == len(data)


def test_journal_space_is_freed_as_it_is_read(traced):
    traced.arm()
    comp = JournalCompactor(traced.journal, load_baseline(traced.journal))
    writer = '''
import os
fd = os.open("big", os.O_WRONLY | os.O_CREAT, 0o644)
for i in range(1000):
    os.pwrite(fd, os.urandom(4096), (i % 64) * 4096)
    if i % 10 == 9:
        os.fsync(fd)
os.fsync(fd)
'''
    for _ in range(4):
        traced.run(writer)
        comp.step()
    assert comp.hole_punching, "this file system cannot punch holes"
    assert comp.bytes_read > 16_000_000  # four times 1000 pages of 4 KiB written through the journal
    assert comp.peak_bytes < 6_000_000  # what one phase appends, never all of it
    assert allocated_bytes(traced.journal) < 64 * 1024
    node = comp.model.inodes[os.stat(traced.p("big")).st_ino]
    assert node.ops == [] and len(node.base) == 64 * 4096  # every write synced and folded
    comp.step(final=True)
    st = powercut(traced.root, traced.journal, compactor=comp)
    assert st.unsynced_writes_dropped == 0 and st.files_reverted == []


def test_a_power_cut_run_reports_its_journal_peak(tmp_path):
    import json

    from harness.process_engine.runner import run_scenario
    from harness.scenario import load_scenario

    sc = load_scenario("powercut-random")
    sc.workload = dict(sc.workload, samples=600)
    r = run_scenario(sc, 1, reports_dir=str(tmp_path), render=False, keep_work=True)
    with open(os.path.join(r.report_dir, "result.json")) as f:
        pl = json.load(f)["powerloss"]
    assert pl["journal_compacted"] is True and pl["cuts"] >= 1
    assert 0 < pl["journal_peak_bytes"] < pl["journal_bytes_written"]
    assert pl["journal_compaction_cpu_s"] >= 0


def test_a_journal_over_its_bound_ends_the_run_as_a_harness_error(tmp_path, monkeypatch):
    from harness.exit_codes import HarnessError
    from harness.powerloss import compactor
    from harness.process_engine.runner import run_scenario
    from harness.scenario import load_scenario

    monkeypatch.setattr(compactor, "JOURNAL_SPACE_BYTES", 256 << 10)  # under one compaction step
    sc = load_scenario("powercut-random")
    sc.workload = dict(sc.workload, samples=600)
    with pytest.raises(HarnessError, match=r"over its bound of 0\.2 MiB"):
        run_scenario(sc, 1, reports_dir=str(tmp_path), render=False)
    left = [p.cmdline() for p in psutil.Process().children(recursive=True)]
    assert [c for c in left if "zygote_server" not in " ".join(c)] == []  # the zygote stays, as after any run
