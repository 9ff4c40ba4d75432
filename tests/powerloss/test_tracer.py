"""The tracer journals each intercepted call, in one total order across processes."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys

import pytest

from harness.exit_codes import UsageError
from harness.powerloss import build
from harness.powerloss import journal as J

from .conftest import needs_cc

pytestmark = needs_cc

OS_CALLS = r'''
import ctypes, json, os, sys
R = os.getcwd()
libc = ctypes.CDLL(None, use_errno=True)
ino = {}
fd = os.open("a", os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
ino["a"] = os.fstat(fd).st_ino
os.write(fd, b"hello")                       # write at 0
os.pwrite(fd, b"XY", 1)                      # pwrite at 1
os.writev(fd, [b"ab", b"cd"])                # writev at 5 (after "hello")
os.pwritev(fd, [b"12", b"345"], 20)          # pwritev at 20
os.ftruncate(fd, 30)
os.posix_fallocate(fd, 0, 64)
assert libc.fallocate(fd, 0, ctypes.c_long(0), ctypes.c_long(128)) == 0
assert libc.sync_file_range(fd, ctypes.c_long(0), ctypes.c_long(0), 2) == 0
os.fdatasync(fd)
fd2 = os.dup(fd)
os.write(fd2, b"D")                          # through a dup: position 9
fd3 = os.dup2(fd, 50)
os.write(50, b"E")                           # position 10
os.fsync(fd)
os.close(fd); os.close(fd2); os.close(50)
os.truncate("a", 7)
os.mkdir("d")
ino["d"] = os.stat("d").st_ino
with open("d/b", "wb") as f:                  # Python's open()
    f.write(b"B" * 10)
    f.flush()
    os.fsync(f.fileno())
ino["b"] = os.stat("d/b").st_ino
os.rename("d/b", "d/c")
os.replace("d/c", os.path.join(R, "c"))
os.link("c", "c2")
dfd = os.open("d", os.O_RDONLY)
os.rename("c2", "c3", dst_dir_fd=dfd)        # renameat into d/
os.unlink("c3", dir_fd=dfd)                  # unlinkat
os.fsync(dfd)                                # fsync of a directory fd
os.close(dfd)
os.unlink("c")
os.rmdir("d")
cfd = libc.creat(os.path.join(R, "e").encode(), 0o644)
assert cfd >= 0
ino["e"] = os.fstat(cfd).st_ino
src = os.open("a", os.O_RDONLY)
os.copy_file_range(src, cfd, 7)
os.sendfile(cfd, src, 0, 3)
assert libc.syncfs(cfd) == 0
os.close(cfd); os.close(src)
os.sync()
outside = os.path.join(sys.argv[1], "outside.txt")
with open(outside, "wb") as f:
    f.write(b"not traced")
    os.fsync(f.fileno())
os.unlink(outside)
ino["root"] = os.stat(R).st_ino
print(json.dumps(ino))
'''


def test_each_os_call_is_journaled(traced, tmp_path):
    out = traced.run(OS_CALLS, str(tmp_path))
    ino = json.loads(out.stdout)
    recs = traced.records()
    assert recs[0].op == J.HELLO and recs[0].path1 == traced.root
    seq = [r for r in recs if r.op != J.HELLO]
    a = [r for r in seq if r.ino == ino["a"] and r.op == J.WRITE]
    assert [(r.a, bytes(r.data)) for r in a] == [(0, b"hello"), (1, b"XY"), (5, b"abcd"), (20, b"12345"),
                                                (9, b"D"), (10, b"E")]
    kinds = [(r.name, r.a, r.b, r.c) for r in seq if r.ino == ino["a"] and r.op != J.WRITE]
    assert kinds[0][:3] == ("create", 0, 0)
    assert kinds[0][3] & (os.O_CREAT | os.O_TRUNC | os.O_ACCMODE) == os.O_CREAT | os.O_WRONLY | os.O_TRUNC
    assert ("truncate", 30, 0, 0) in kinds and ("truncate", 7, 0, 0) in kinds
    assert ("fallocate", 0, 64, 0) in kinds and ("fallocate", 0, 128, 0) in kinds
    assert ("sync_file_range", 0, 0, 2) in kinds
    assert [k[0] for k in kinds if "sync" in k[0] and k[0] != "sync_file_range"] == ["fdatasync", "fsync"]
    names = [(r.name, os.path.relpath(r.path1, traced.root) if r.path1 else "",
              os.path.relpath(r.path2, traced.root) if r.path2 else "") for r in seq
             if r.op in (J.RENAME, J.LINK, J.UNLINK, J.RMDIR, J.MKDIR, J.CREATE)]
    assert names == [
        ("create", "a", ""), ("mkdir", "d", ""), ("create", "d/b", ""), ("rename", "d/b", "d/c"),
        ("rename", "d/c", "c"), ("link", "c", "c2"), ("rename", "c2", "d/c3"), ("unlink", "d/c3", ""),
        ("unlink", "c", ""), ("rmdir", "d", ""), ("create", "e", ""),
    ]
    e_created = next(r.seq for r in seq if r.op == J.CREATE and r.path1.endswith("/e"))
    # (b's inode number may be reused by e, created after b's last link is gone)
    b = [r for r in seq if r.ino == ino["b"] and r.op in (J.WRITE, J.FSYNC) and r.seq < e_created]
    assert [(r.name, bytes(r.data)) for r in b] == [("write", b"B" * 10), ("fsync", b"")]
    dsync = [r for r in seq if r.op == J.FSYNC and r.is_dir]
    assert len(dsync) == 1 and dsync[0].ino == ino["d"] and dsync[0].path1 == traced.p("d")
    # (and e's inode number may be b's: only what was written after e's creation is e's)
    e = [r for r in seq if r.ino == ino["e"] and r.op == J.WRITE and r.seq > e_created]
    assert [(r.a, bytes(r.data)) for r in e] == [(0, b"hXYloab"), (7, b"hXY")]  # copy_file_range, sendfile
    assert any(r.op == J.SYNCFS for r in seq) and seq[-1].op == J.SYNC
    assert not any("outside" in (r.path1 + r.path2) for r in recs)
    assert [r.seq for r in recs] == list(range(len(recs)))


def test_sqlite_wal_full_is_seen(traced):
    traced.run('''
        import sqlite3
        c = sqlite3.connect("s.db", isolation_level=None)
        c.execute("PRAGMA journal_mode=WAL"); c.execute("PRAGMA synchronous=FULL")
        c.execute("CREATE TABLE t(a)")
        for i in range(100):
            c.execute("INSERT INTO t VALUES (?)", (i,))
        c.close()
    ''')
    recs = traced.records()
    count = collections.Counter(r.name for r in recs)
    assert count["write"] >= 200 and count["fdatasync"] >= 100, count
    created = {os.path.basename(r.path1) for r in recs if r.op == J.CREATE}
    assert {"s.db", "s.db-wal", "s.db-shm"} <= created
    assert any(r.op == J.FDATASYNC and r.is_dir and r.path1 == traced.root for r in recs)
    wal = next(r.ino for r in recs if r.op == J.CREATE and r.path1.endswith("-wal"))
    assert sum(1 for r in recs if r.op == J.WRITE and r.ino == wal) >= 200


def test_untraced_without_env_and_outside_root(traced, tmp_path):
    lib = build.tracer_library()
    env = dict(os.environ, LD_PRELOAD=lib)
    env.pop(build.ENV_ROOT, None)
    code = "import os; fd=os.open('x', os.O_CREAT|os.O_WRONLY); os.write(fd, b'1'); os.fsync(fd); print('ok')"
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=str(tmp_path), capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
    assert not os.path.exists(traced.journal)
    # traced, but working outside the root: only the HELLO record
    traced.arm()
    proc = subprocess.run([sys.executable, "-c", code], env=traced.environ(), cwd=str(tmp_path),
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0
    assert [r.op for r in traced.records()] == [J.HELLO]


TWO_PROCS = r'''
import os, sys
who, rfd, wfd, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
fd = os.open(f"f-{who}", os.O_CREAT | os.O_WRONLY, 0o644)
for i in range(rounds):
    if who == "B" or i > 0:
        assert os.read(rfd, 1) == b"t"             # wait for the other's turn
    os.write(fd, f"{who}{i}.".encode())
    os.fsync(fd)
    if who == "A" or i < rounds - 1:               # B's last turn has no one to hand over to (A may be gone)
        os.write(wfd, b"t")                        # hand the turn over
'''


def test_total_order_across_two_processes(traced):
    env = traced.environ()
    a2b_r, a2b_w = os.pipe()
    b2a_r, b2a_w = os.pipe()
    rounds = 25
    pa = subprocess.Popen([sys.executable, "-c", TWO_PROCS, "A", str(b2a_r), str(a2b_w), str(rounds)], env=env,
                          cwd=traced.root, pass_fds=(b2a_r, a2b_w))
    pb = subprocess.Popen([sys.executable, "-c", TWO_PROCS, "B", str(a2b_r), str(b2a_w), str(rounds)], env=env,
                          cwd=traced.root, pass_fds=(a2b_r, b2a_w))
    for fd in (a2b_r, a2b_w, b2a_r, b2a_w):
        os.close(fd)
    assert pa.wait(60) == 0 and pb.wait(60) == 0
    recs = [r for r in traced.records() if r.op in (J.WRITE, J.FSYNC)]
    by_pid = {r.pid: [] for r in recs}
    for r in recs:
        by_pid[r.pid].append(r)
    assert set(by_pid) == {pa.pid, pb.pid}
    # program order within each process, and the pipe's happens-before across them
    expected = []
    for i in range(rounds):
        for who, pid in (("A", pa.pid), ("B", pb.pid)):
            expected += [(pid, "write", f"{who}{i}."), (pid, "fsync", "")]
    assert [(r.pid, r.name, bytes(r.data).decode()) for r in recs] == expected
    offs = [r.a for r in by_pid[pa.pid] if r.op == J.WRITE]
    assert offs == sorted(offs) and offs[1] == 3


def test_reader_tolerates_torn_records(traced):
    traced.run("import os\nfor i in range(20):\n"
               "    fd=os.open(f'x{i}', os.O_CREAT|os.O_WRONLY); os.write(fd, b'y'*1000); os.close(fd)")
    with open(traced.journal, "rb") as f:
        buf = f.read()
    whole = list(J.parse(buf))
    assert len(whole) == 41
    st = J.JournalStats()
    assert len(list(J.parse(buf[:-3], st))) == 40  # torn last record
    cut = buf.find(J.MAGIC_BYTES, 2000)             # a record torn in the middle, others after it
    total = J.HEADER.unpack_from(buf, cut)[3]
    torn = buf[:cut + total // 2] + buf[cut + total:]  # half of one record, then the rest
    st = J.JournalStats()
    got = list(J.parse(torn, st))
    starts, pos = [], 0
    while pos < len(buf):
        starts.append(pos)
        pos += J.HEADER.unpack_from(buf, pos)[3]
    lost = starts.index(cut)
    assert len(got) == 40 and st.torn >= 1
    assert [(r.op, r.ino, bytes(r.data)) for r in got] == [
        (r.op, r.ino, bytes(r.data)) for i, r in enumerate(whole) if i != lost]


def test_no_compiler_is_refused_with_exit_2(tmp_path, monkeypatch):
    from harness.exit_codes import ExitCode

    monkeypatch.setattr(build, "_cached", None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.raises(UsageError, match="need a C compiler") as ei:
        build.tracer_library()
    assert isinstance(ei.value, UsageError) and ExitCode.USAGE == 2
    cache = tmp_path / "cache" / "dataflow-harness"
    assert not os.path.exists(cache) or not os.listdir(cache)


def test_build_is_cached_by_source_hash(tmp_path, monkeypatch):
    monkeypatch.setattr(build, "_cached", None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    lib = build.tracer_library()
    assert lib.startswith(str(tmp_path / "cache")) and os.path.exists(lib)
    mtime = os.stat(lib).st_mtime_ns
    monkeypatch.setattr(build, "_cached", None)
    assert build.tracer_library() == lib and os.stat(lib).st_mtime_ns == mtime
    assert [n for n in os.listdir(os.path.dirname(lib)) if n.startswith(".")] == []


def test_journal_inside_root_is_refused(traced):
    with pytest.raises(UsageError, match="outside the traced work dir"):
        build.tracer_env(traced.root, os.path.join(traced.root, "j"))


def test_fork_children_and_threads_are_traced(traced):
    traced.run('''
        import os, threading
        def worker(k):
            fd = os.open(f"t{k}", os.O_CREAT | os.O_WRONLY, 0o644)
            for i in range(200):
                os.write(fd, b"%d.%d;" % (k, i))
            os.fsync(fd); os.close(fd)
        ts = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        [t.start() for t in ts]; [t.join() for t in ts]
        pid = os.fork()
        if pid == 0:
            fd = os.open("forked", os.O_CREAT | os.O_WRONLY, 0o644); os.write(fd, b"child"); os._exit(0)
        os.waitpid(pid, 0)
        print(pid)
    ''')
    recs = traced.records()
    for k in range(4):
        ino = next(r.ino for r in recs if r.op == J.CREATE and r.path1.endswith(f"/t{k}"))
        ws = [r for r in recs if r.op == J.WRITE and r.ino == ino]
        assert b"".join(bytes(r.data) for r in ws) == b"".join(b"%d.%d;" % (k, i) for i in range(200))
        assert all(a.a + len(a.data) == b.a for a, b in zip(ws, ws[1:]))
    forked = [r for r in recs if r.op == J.WRITE and bytes(r.data) == b"child"]
    assert len(forked) == 1 and forked[0].pid != recs[0].pid


def test_a_zygote_child_reconfigures_from_its_environment(traced, tmp_path):
    """A parent preloaded without a root (a zygote) forks a child that sets the variables and
    calls dfh_tracer_reconfigure: only the child's writes are journaled."""
    env = dict(os.environ, LD_PRELOAD=build.tracer_library(), PYTHONPATH=os.getcwd())
    code = f'''
import os
from harness.powerloss.build import reconfigure_in_process, tracing_active
assert not tracing_active()
fd = os.open({traced.p("before")!r}, os.O_CREAT | os.O_WRONLY); os.write(fd, b"untraced"); os.close(fd)
pid = os.fork()
if pid == 0:
    os.environ.update({{"DFH_TRACE_ROOT": {traced.root!r}, "DFH_TRACE_JOURNAL": {traced.journal!r}}})
    assert reconfigure_in_process() and tracing_active()
    fd = os.open({traced.p("after")!r}, os.O_CREAT | os.O_WRONLY); os.write(fd, b"traced"); os.close(fd)
    os._exit(0)
_, st = os.waitpid(pid, 0)
assert st == 0
print("ok")
'''
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    assert proc.stdout.strip() == "ok", proc.stderr
    recs = traced.records()
    assert [r.op for r in recs] == [J.HELLO, J.CREATE, J.WRITE]
    assert recs[1].path1 == traced.p("after") and bytes(recs[2].data) == b"traced"


def test_excluded_paths_are_not_traced(traced):
    os.mkdir(traced.p("history"))
    traced.env = None
    from harness.powerloss.rebuild import arm, powercut

    traced.env = arm(traced.root, traced.journal, exclude=[traced.p("history")])
    traced.run('''
        import os
        for name in ("history/h.jsonl", "data"):
            fd = os.open(name, os.O_CREAT | os.O_WRONLY); os.write(fd, b"x"); os.close(fd)
    ''')
    paths = [r.path1 for r in traced.records() if r.op == J.CREATE]
    assert paths == [traced.p("data")]
    st = powercut(traced.root, traced.journal)
    assert os.path.exists(traced.p("history", "h.jsonl")) and not os.path.exists(traced.p("data"))
    assert [e.split(" ")[0] for e in st.entries_undone] == ["data"]


def test_signal_handler_writes_do_not_deadlock(traced):
    """CPython's C signal handler writes to the wakeup fd while the main thread may be
    inside a traced write: the fd cache must not take a lock there."""
    traced.run('''
        import os, signal, threading
        r, w = os.pipe()
        os.set_blocking(w, False)
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        signal.signal(signal.SIGUSR1, lambda *a: None)
        stop = False
        def pest():
            while not stop:
                os.kill(os.getpid(), signal.SIGUSR1)
        t = threading.Thread(target=pest); t.start()
        fd = os.open("f", os.O_CREAT | os.O_WRONLY, 0o644)
        for i in range(3000):
            os.write(fd, b"x")
        stop = True; t.join()
        print("ok")
    ''')
    assert sum(1 for r in traced.records() if r.op == J.WRITE) == 3000
