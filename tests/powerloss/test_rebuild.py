"""The rebuild rules: what a power cut keeps and what it drops (strict POSIX model)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from harness.exit_codes import UsageError
from harness.powerloss.rebuild import powercut, snapshot_baseline

from .conftest import needs_cc

pytestmark = needs_cc


def read(path):
    with open(path, "rb") as f:
        return f.read()


def put(path, data):
    with open(path, "wb") as f:
        f.write(data)


def test_unsynced_write_dropped_synced_kept(traced):
    put(traced.p("old"), b"0123456789")  # in the baseline: durable
    traced.arm()
    traced.run('''
        import os
        fd = os.open("old", os.O_WRONLY)
        os.pwrite(fd, b"AB", 2); os.fsync(fd)          # synced
        os.pwrite(fd, b"zz", 6)                        # not synced
        os.write(os.open("old", os.O_WRONLY | os.O_APPEND), b"tail")   # not synced either
    ''')
    assert read(traced.p("old")) == b"01AB45zz89tail"
    st = powercut(traced.root, traced.journal)
    assert read(traced.p("old")) == b"01AB456789"
    assert st.unsynced_writes_dropped == 2 and st.bytes_lost == 6 and st.files_reverted == ["old"]
    assert st.entries_undone == [] and st.processes == 1


def test_fsync_covers_a_write_by_another_process(traced):
    put(traced.p("shared"), b"....")
    traced.arm()
    writer = "import os; fd = os.open('shared', os.O_WRONLY); os.pwrite(fd, b'W', 1)"
    traced.run(writer)
    traced.run("import os; fd = os.open('shared', os.O_RDONLY); os.fsync(fd)")   # another process, its own fd
    traced.run("import os; fd = os.open('shared', os.O_WRONLY); os.pwrite(fd, b'L', 2)")  # after: lost
    st = powercut(traced.root, traced.journal)
    assert read(traced.p("shared")) == b".W.." and st.unsynced_writes_dropped == 1 and st.processes == 3


def test_new_file_needs_a_directory_fsync(traced):
    os.mkdir(traced.p("d"))
    traced.arm()
    traced.run('''
        import os
        for name, dirsync in (("kept", True), ("lost", False)):
            with open("d/" + name, "wb") as f:
                f.write(b"data"); f.flush(); os.fsync(f.fileno())
            if dirsync:
                fd = os.open("d", os.O_RDONLY); os.fsync(fd); os.close(fd)
        os.mkdir("sub")                                  # root never fsynced: sub and its file vanish
        with open("sub/x", "wb") as f:
            f.write(b"x"); f.flush(); os.fsync(f.fileno())
        fd = os.open("sub", os.O_RDONLY); os.fsync(fd); os.close(fd)
    ''')
    st = powercut(traced.root, traced.journal)
    assert read(traced.p("d", "kept")) == b"data"
    assert not os.path.exists(traced.p("d", "lost")) and not os.path.exists(traced.p("sub"))
    assert any(e.startswith("d/lost ") for e in st.entries_undone)
    assert any(e.startswith("sub ") for e in st.entries_undone)


@pytest.mark.parametrize("dirsync", [False, True])
def test_rename_without_directory_fsync_is_undone(traced, dirsync):
    put(traced.p("ckpt"), b"v1")
    traced.arm()
    traced.run('''
        import os, sys
        with open("ckpt.tmp", "wb") as f:
            f.write(b"v2"); f.flush(); os.fsync(f.fileno())
        os.replace("ckpt.tmp", "ckpt")
        if sys.argv[1] == "1":
            fd = os.open(".", os.O_RDONLY); os.fsync(fd); os.close(fd)
    ''', "1" if dirsync else "0")
    assert read(traced.p("ckpt")) == b"v2"
    st = powercut(traced.root, traced.journal)
    if dirsync:
        assert read(traced.p("ckpt")) == b"v2" and st.entries_undone == []
    else:
        assert read(traced.p("ckpt")) == b"v1" and not os.path.exists(traced.p("ckpt.tmp"))
        assert [e.split(" ")[0] for e in st.entries_undone] == ["ckpt"]


def test_unlink_without_directory_fsync_is_undone(traced):
    put(traced.p("gone"), b"still here")
    traced.arm()
    traced.run("import os; os.unlink('gone')")
    powercut(traced.root, traced.journal)
    assert read(traced.p("gone")) == b"still here"


def test_torn_tail_is_cut_at_a_sector_boundary(traced):
    traced.arm()
    traced.run('''
        import os
        with open("f", "wb") as f:
            f.write(b"S" * 100); f.flush(); os.fsync(f.fileno())
            fd = os.open(".", os.O_RDONLY); os.fsync(fd); os.close(fd)
            f.write(bytes(range(256)) * 16); f.flush()     # 4096 unsynced bytes at offset 100
            f.write(b"T" * 700); f.flush()                 # 700 more at 4196
    ''')
    journal = read(traced.journal)
    full = b"S" * 100 + bytes(range(256)) * 16 + b"T" * 700
    lengths = set()
    for seed in range(40):
        with open(traced.journal, "wb") as f:
            f.write(journal)
        put(traced.p("f"), full)
        st = powercut(traced.root, traced.journal, mode="torn", seed=seed)
        got = read(traced.p("f"))
        assert full.startswith(got) and len(got) >= 100
        # a sector boundary, or the end of a whole write (a sector written in full)
        assert len(got) in (100, 4196, len(full)) or len(got) % 512 == 0, len(got)
        assert st.bytes_lost == len(full) - len(got) and st.torn_bytes_kept == len(got) - 100
        lengths.add(len(got))
        put(traced.p("f"), full)
        assert read(traced.p("f")) == full
        powercut(traced.root, traced.journal, mode="torn", seed=seed)
        assert read(traced.p("f")) == got  # the same seed, the same state
    assert 100 in lengths and len(lengths) >= 4 and any(n % 512 == 0 for n in lengths)
    powercut(traced.root, traced.journal, mode="clean")
    assert read(traced.p("f")) == b"S" * 100


COUNT = "import sqlite3; print(sqlite3.connect('s.db').execute('select count(*) from t').fetchone()[0])"


def test_sqlite_shm_removed_and_synced_commits_survive(traced):
    traced.arm()
    code = '''
        import sqlite3, sys
        c = sqlite3.connect("s.db", isolation_level=None)
        c.execute("PRAGMA journal_mode=WAL"); c.execute("PRAGMA synchronous=" + sys.argv[1])
        c.execute("CREATE TABLE IF NOT EXISTS t(a)")
        for i in range(50):
            c.execute("INSERT INTO t VALUES (?)", (i,))
        print("done", flush=True)
        import os; os._exit(0)                           # like a kill: no checkpoint, -shm and -wal stay
    '''
    traced.run(code, "FULL")
    st = powercut(traced.root, traced.journal)
    assert st.shm_removed == ["s.db-shm"] and not os.path.exists(traced.p("s.db-shm"))
    out = subprocess.run([sys.executable, "-c", COUNT], cwd=traced.root, capture_output=True, text=True, check=False)
    assert out.stdout.strip() == "50", out.stderr
    # synchronous=OFF: nothing after the first cut is synced, so the new rows are lost
    traced.arm()
    traced.run(code, "OFF")
    st = powercut(traced.root, traced.journal)
    out = subprocess.run([sys.executable, "-c", COUNT], cwd=traced.root, capture_output=True, text=True, check=False)
    assert out.stdout.strip() == "50" and st.unsynced_writes_dropped >= 50 and st.bytes_lost > 0
    assert any(p.startswith("s.db-wal") for p in st.files_reverted + st.entries_undone)


def test_ext4_ordered_persists_namespace_on_any_fsync(traced):
    traced.arm()
    traced.run('''
        import os
        with open("f", "wb") as f:
            f.write(b"x"); f.flush(); os.fsync(f.fileno())
    ''')
    with open(traced.journal, "rb") as f:
        j = f.read()
    powercut(traced.root, traced.journal, namespace="ext4-ordered")
    assert read(traced.p("f")) == b"x"
    with open(traced.journal, "wb") as f:
        f.write(j)
    powercut(traced.root, traced.journal)
    assert not os.path.exists(traced.p("f"))


def test_bad_mode_and_root_are_usage_errors(traced, tmp_path):
    traced.arm()
    with pytest.raises(UsageError, match="mode 'half'"):
        powercut(traced.root, traced.journal, mode="half")
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(UsageError, match="baseline"):
        powercut(str(other), traced.journal)
    assert snapshot_baseline(traced.root).root == traced.root
