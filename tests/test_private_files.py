"""Secrets and run dirs are private: another local user can neither read a run's key files nor
connect to its store server.

The other user is `nobody` (uid 65534): a forked child of this test drops to it (setgid, setuid)
and tries what an intruder would. That needs root (CI runs as root); as another user the test
is skipped, as there is then no second user to become.
"""

import hmac  # noqa: F401 - imported before dropping to the other user, who cannot read the stdlib under /root
import json
import multiprocessing.connection  # noqa: F401 - likewise
import os
import stat
import subprocess
import sys
import time
from multiprocessing import AuthenticationError
from multiprocessing.managers import BaseManager

import pytest

from reference_impl.private_files import is_private, make_private_dir, write_secret, write_secret_json

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OTHER_UID = 65534


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def as_other_user(fn):
    """Run `fn()` in a forked child as uid/gid 65534; return what it returns (JSON-able)."""
    if os.geteuid() != 0:
        pytest.skip("becoming another user needs root (CI runs as root)")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the intruder
        os.close(r)
        try:
            os.setgroups([])
            os.setgid(OTHER_UID)
            os.setuid(OTHER_UID)
            out = fn()
        except BaseException as e:  # noqa: BLE001 - reported to the parent, which fails the test
            out = {"child_error": f"{type(e).__name__}: {e}"}
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    chunks = []
    while True:
        b = os.read(r, 65536)
        if not b:
            break
        chunks.append(b)
    os.close(r)
    os.waitpid(pid, 0)
    out = json.loads(b"".join(chunks) or b"null")
    assert out is not None and "child_error" not in out, out
    return out


def test_private_dir_and_secret_modes_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        d = make_private_dir(str(tmp_path / "a" / "run"))
        write_secret(os.path.join(d, "key"), b"k")
        write_secret_json(os.path.join(d, "addr.json"), {"authkey": "00"})
    finally:
        os.umask(old)
    assert _mode(d) == 0o700 and _mode(os.path.join(d, "key")) == 0o600
    assert _mode(os.path.join(d, "addr.json")) == 0o600 and is_private(d)
    assert json.load(open(os.path.join(d, "addr.json"))) == {"authkey": "00"}
    os.chmod(d, 0o755)
    make_private_dir(d, exist_ok=True)  # an existing dir of ours is tightened
    assert _mode(d) == 0o700
    with pytest.raises(FileExistsError):
        make_private_dir(d)


def _intrude(addr_file: str, address):
    """What another user tries: read the key file, list the dir, connect with a guessed key."""
    out, key = {}, b"\0" * 16
    try:
        key = bytes.fromhex(json.load(open(addr_file))["authkey"])  # a readable key file lets anyone in
        out["read_key"] = "allowed"
    except PermissionError:
        out["read_key"] = "denied"
    try:
        os.listdir(os.path.dirname(addr_file))
        out["list_dir"] = "allowed"
    except PermissionError:
        out["list_dir"] = "denied"
    m = BaseManager(address=tuple(address), authkey=key)
    try:
        m.connect()
        out["connect"] = "connected"
    except AuthenticationError:
        out["connect"] = "authentication failed"
    except (OSError, EOFError) as e:
        out["connect"] = f"refused: {e}"
    return out


def test_store_server_key_unreadable_and_connection_refused_for_another_user(tmp_path):
    work = make_private_dir(str(tmp_path / "run" / "work"))
    addr = os.path.join(work, "store.addr")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.Popen([sys.executable, "-m", "reference_impl.stores.server", "--address-file", addr], env=env)
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(addr):
            assert p.poll() is None and time.monotonic() < deadline, "store server did not start"
            time.sleep(0.05)
        info = json.load(open(addr))
        assert _mode(addr) == 0o600 and _mode(work) == 0o700
        assert info["address"][0] == "127.0.0.1"  # loopback only
        seen = as_other_user(lambda: _intrude(addr, info["address"]))
        assert seen == {"read_key": "denied", "list_dir": "denied", "connect": "authentication failed"}, seen
        # the owner, with the key, gets in: the refusal above is the key's doing
        from reference_impl.stores.server import RemoteMetadataStore

        assert RemoteMetadataStore(addr).committed_count() == 0
    finally:
        p.terminate()
        p.wait(timeout=30)


def test_run_dir_and_work_dir_are_private(tmp_path):
    from harness.process_engine.runner import run_scenario
    from harness.scenario import load_scenario

    sc = load_scenario(os.path.join(REPO, "scenarios", "baseline.toml")).with_backend("inmemory")
    sc.workload = dict(sc.workload, samples=16)
    r = run_scenario(sc, 0, reports_dir=str(tmp_path / "reports"), keep_work=True, render=False)
    work = os.path.join(r.report_dir, "work")
    assert _mode(r.report_dir) == 0o700 and _mode(work) == 0o700
    assert _mode(os.path.join(work, "store.addr")) == 0o600
    seen = as_other_user(lambda: _intrude(os.path.join(work, "store.addr"), ("127.0.0.1", 1)))
    assert seen["read_key"] == "denied" and seen["list_dir"] == "denied", seen


def test_campaign_dir_is_private(tmp_path):
    from harness.campaign.core import make_campaign_dir

    old = os.umask(0)
    try:
        d = make_campaign_dir(str(tmp_path / "reports"))
    finally:
        os.umask(old)
    assert _mode(d) == 0o700
