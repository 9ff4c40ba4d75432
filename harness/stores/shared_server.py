"""One Redis server shared by every store that certification opens, one ledger per working directory.

A backend that talks to a Redis server declares it (`store_server = "redis"`
on its class or factory; `store_persistence` names the persistence it is
meant to run on, default `always`). Certification then starts one server for
the whole certification (`start`, in the certifying process, before any tier:
its children inherit the connection through `DFH_SHARED_REDIS`), and every
working directory a tier opens a store on gets its own namespace and ledger
on that server (`provision`): a fresh directory is a fresh, empty store, and
processes that open the same directory share one store, as with a file.

The server is stopped and its directory removed when the certifying process
exits; the server also dies with that process (parent-death signal), and the
directory of a certifying process SIGKILLed before its exit handlers ran is
removed by the next certification that starts a server (`harness.owned_dirs`).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import tempfile
import uuid
from typing import Any, Dict, Optional

from reference_impl.procutil import set_parent_death_signal

from ..owned_dirs import make_owned_dir, sweep_dead
from .redis_server import CONNECTION_FILE, RedisServer, _write_private

SHARED_ENV = "DFH_SHARED_REDIS"
#: the shared server's temp dir: `certify-redis-<certifying pid>-...`
SERVER_DIR_PREFIX = "certify-redis-"
_server: Optional[RedisServer] = None


def declared_server(factory: Any) -> Optional[str]:
    """What a factory declares it needs: "redis" or None."""
    kind = getattr(factory, "store_server", None)
    return kind if isinstance(kind, str) else None


def start(factory: Any) -> Optional[Dict[str, Any]]:
    """Start the shared server for `factory` (once per process tree); its description, or None."""
    global _server
    if declared_server(factory) is None:
        return None
    if _server is not None:
        return _server.describe()
    if os.environ.get(SHARED_ENV):  # a child of the certifying process: the server is its parent's
        with open(os.environ[SHARED_ENV]) as f:
            return json.load(f)["server"]
    sweep_dead(tempfile.gettempdir(), SERVER_DIR_PREFIX)
    root = make_owned_dir(SERVER_DIR_PREFIX)
    server = RedisServer(root, getattr(factory, "store_persistence", "always"))
    server.prepare()
    server.write_connection()
    log = open(os.path.join(server.dir, "server.log"), "ab")
    try:
        server._popen = subprocess.Popen([server.binary, server.conf], stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, preexec_fn=set_parent_death_signal)
    finally:
        log.close()
    server.wait_ready(lambda: server._popen.poll() is None)
    _server = server
    os.environ[SHARED_ENV] = server.connection_file
    atexit.register(_stop, root)
    return server.describe()


def _stop(root: str) -> None:
    global _server
    if _server is not None:
        _server.stop()
        _server = None
    os.environ.pop(SHARED_ENV, None)
    shutil.rmtree(root, ignore_errors=True)


def provision(workdir: str) -> Optional[str]:
    """The connection file of the store on `workdir`: its own namespace and ledger on the shared
    server, created on the first open of that directory (None when no shared server runs)."""
    base = os.environ.get(SHARED_ENV)
    if not base:
        return None
    path = os.path.join(workdir, CONNECTION_FILE)
    if os.path.exists(path):
        return path
    with open(base) as f:
        info = json.load(f)
    info.update(namespace=uuid.uuid4().hex[:16], ledger_id=uuid.uuid4().hex, endpoints={})
    from reference_impl.stores.redis import create_ledger

    tmp = os.path.join(workdir, f".store.redis.{os.getpid()}.json")
    _write_private(tmp, json.dumps(info, sort_keys=True))
    try:
        create_ledger(tmp)  # the ledger exists before any opener can see the file
        os.link(tmp, path)  # first opener wins; the others use its ledger
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    return path
