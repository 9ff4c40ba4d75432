"""RedisMetadataStore: the networked ledger on a Redis server (multi-node training).

Where the server is: a connection file (JSON, written by whoever started the
server) with `host`, `port`, `password_file` (a file holding the password),
`ledger_id`, optionally `namespace` (a prefix that keeps several ledgers apart
on one server) and `endpoints`: per-node addresses (`{"producer":
[host, port], ...}`) that a client uses instead of `host`/`port` when its node
name (environment variable `DFH_STORE_NODE`) is listed, so that each process
can reach the server through its own network path.

Every contract call is one Lua script, so each is one atomic server-side
transaction and one round trip:

* the ack (`record_train_ack`) adds the ids, sets the step and the flag in one
  script: no reader or restart ever sees half of it;
* the marker (`durable_marker`) reads the set, the step and the flag in one
  script: a snapshot;
* every script first checks the ledger key against the `ledger_id` this client
  was given: a server that lost its state (restarted empty, or from a snapshot
  older than the ledger) answers `LEDGER_LOST`, and the client fails closed
  (`StoreUnavailable`) instead of acting on an emptied ledger.

A call that fails on the network (timeout, reset, refused) has an
indeterminate outcome: the server may or may not have applied it. The client
reconnects and retries the same call until `retry_budget_s` runs out, and
every retry is idempotent:

* the ack is a set union plus two assignments: applying it twice is applying it once;
* a commit carries a token drawn once per call (not per attempt); the server
  records which token committed each id, so a retry that finds an id committed
  by its own earlier attempt answers fresh, as the lost reply would have.
  ("already committed" by oneself is not "committed before").

`on_network_event`, when set, receives each failed attempt and each call that
returned after one (`store_call` events in a process's history).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

from ..contracts import SampleRef, ref_to_dict
from .base import MetadataStore, StoreUnavailable, as_id_set, check_refs

NODE_ENV = "DFH_STORE_NODE"
CONNECTION_FILE = "store.redis.json"
PREFIX = "dfh:"
KEY_NAMES = ("ledger", "refs", "order", "owner", "acked", "step", "durable")


def keys_for(namespace: str = "") -> Dict[str, str]:
    """The store's Redis keys; a `namespace` keeps several ledgers apart on one server."""
    base = PREFIX + (f"{namespace}:" if namespace else "")
    return {name: base + name for name in KEY_NAMES}

LEDGER_LOST = "LEDGER_LOST"

#: One socket operation (connect, send, reply) waits at most this long.
DEFAULT_CALL_TIMEOUT_S = 2.0
#: One contract call retries network failures for at most this long, then fails closed.
DEFAULT_RETRY_BUDGET_S = 60.0

_CHECK = f"""
local have = redis.call('GET', KEYS[1])
if have ~= ARGV[1] then return redis.error_reply('{LEDGER_LOST} ' .. tostring(have)) end
"""

SCRIPTS = {
    # KEYS ledger refs order owner; ARGV ledger_id token (sid json)...
    "commit": _CHECK + """
local out, seen = {}, {}
for i = 3, #ARGV, 2 do
  local sid, fresh = ARGV[i], 0
  if not seen[sid] then
    seen[sid] = true
    if redis.call('HSETNX', KEYS[2], sid, ARGV[i + 1]) == 1 then
      redis.call('RPUSH', KEYS[3], sid)
      redis.call('HSET', KEYS[4], sid, ARGV[2])
      fresh = 1
    elseif redis.call('HGET', KEYS[4], sid) == ARGV[2] then
      fresh = 1
    end
  end
  out[#out + 1] = fresh
end
return out
""",
    # KEYS ledger acked step durable; ARGV ledger_id step('' keeps it) durable(0|1) ids...
    "ack": _CHECK + """
for i = 4, #ARGV do redis.call('SADD', KEYS[2], ARGV[i]) end
if ARGV[2] ~= '' then redis.call('SET', KEYS[3], ARGV[2]) end
redis.call('SET', KEYS[4], ARGV[3])
return 1
""",
    # KEYS ledger acked step durable
    "marker": _CHECK + """
return {redis.call('SMEMBERS', KEYS[2]), redis.call('GET', KEYS[3]), redis.call('GET', KEYS[4])}
""",
    # KEYS ledger refs order; ARGV ledger_id what [sid]
    "read": _CHECK + """
local what = ARGV[2]
if what == 'ledger' then return ARGV[1] end
if what == 'has' then return redis.call('HEXISTS', KEYS[2], ARGV[3]) end
if what == 'get' then return redis.call('HGET', KEYS[2], ARGV[3]) end
if what == 'count' then return redis.call('LLEN', KEYS[3]) end
return redis.call('LRANGE', KEYS[3], 0, -1)
""",
}


def read_connection(path: str) -> Dict[str, Any]:
    """The connection file as a dict; a missing or unreadable one is StoreUnavailable."""
    try:
        with open(path) as f:
            info = json.load(f)
        with open(info["password_file"]) as f:
            info["password"] = f.read().strip()
    except (OSError, ValueError, KeyError) as e:
        raise StoreUnavailable(f"Redis connection file {path} is unusable: {e}") from e
    return info


def connection_path(path: str) -> str:
    """`path` itself when it ends in .json, else `store.redis.json` in the directory `path`
    (or the directory of the file `path`: certification passes `<dir>/store.db`), or in
    that directory's parent (a backend's own directory inside a run's work dir)."""
    path = os.fspath(path)
    if path.endswith(".json"):
        return path
    d = path if os.path.isdir(path) else os.path.dirname(path) or "."
    here = os.path.join(d, CONNECTION_FILE)
    parent = os.path.join(os.path.dirname(os.path.abspath(d)), CONNECTION_FILE)
    return here if os.path.exists(here) or not os.path.exists(parent) else parent


def create_ledger(path: str) -> str:
    """Put the connection file's ledger id on its (new, empty) server; returns it.

    Done once, by whoever starts the server for the first time; a restarted
    server must bring the key back from its own files, or its clients fail closed.
    """
    info = read_connection(connection_path(path))
    client = _client(info["host"], info["port"], info["password"], DEFAULT_CALL_TIMEOUT_S)
    key = keys_for(info.get("namespace", ""))["ledger"]
    try:
        if not client.set(key, info["ledger_id"], nx=True) and client.get(key) != info["ledger_id"].encode():
            raise StoreUnavailable(f"the server at {info['host']}:{info['port']} holds another ledger")
    finally:
        client.close()
    return info["ledger_id"]


def _client(host: str, port: int, password: str, timeout_s: float):
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # No retries inside redis-py: this store decides what a retry may repeat.
    return redis.Redis(host=host, port=int(port), password=password, socket_timeout=timeout_s,
                       socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0),
                       single_connection_client=True, health_check_interval=0)


class RedisMetadataStore(MetadataStore):
    """The contract over one Redis server; see the module docstring for the protocol."""

    profile = "durable"
    #: The server this backend needs; certification and runs start one (see docs/networked-stores.md).
    store_server = "redis"
    store_persistence = "always"

    def __init__(self, path: str, *, node: Optional[str] = None, call_timeout_s: Optional[float] = None,
                 retry_budget_s: Optional[float] = None) -> None:
        self.connection_file = connection_path(path)
        info = read_connection(self.connection_file)
        self.node = node if node is not None else os.environ.get(NODE_ENV, "")
        host, port = (info.get("endpoints") or {}).get(self.node) or (info["host"], info["port"])
        self.address = (str(host), int(port))
        self.expected_ledger_id = str(info["ledger_id"])
        self.keys = keys_for(str(info.get("namespace") or ""))
        self.server = dict(info.get("server") or {})
        client_cfg = info.get("client") or {}
        self.call_timeout_s = float(call_timeout_s or client_cfg.get("call_timeout_s") or DEFAULT_CALL_TIMEOUT_S)
        self.retry_budget_s = float(retry_budget_s or client_cfg.get("retry_budget_s") or DEFAULT_RETRY_BUDGET_S)
        self._password = info["password"]
        self._conn = None
        self._scripts: Dict[str, Any] = {}
        self.on_network_event: Optional[Callable[..., None]] = None
        self.network_failures = 0  # attempts that failed on the network, over this client's life

    # -- plumbing -----------------------------------------------------------
    def _connection(self):
        if self._conn is None:
            self._conn = _client(*self.address, self._password, self.call_timeout_s)
            self._scripts = {name: self._conn.register_script(text) for name, text in SCRIPTS.items()}
        return self._conn

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    def _run(self, call: str, script: str, keys: List[str], args: List[Any], ids: Sequence[str] = ()):
        """One script, retried on network failures (each retry repeats the same arguments)."""
        import redis

        deadline = time.monotonic() + self.retry_budget_s
        attempt, delay = 0, 0.02
        while True:
            attempt += 1
            try:
                self._connection()
                out = self._scripts[script](keys=keys, args=[self.expected_ledger_id, *args])
            except redis.ResponseError as e:
                if str(e).startswith(LEDGER_LOST):
                    raise StoreUnavailable(f"Redis ledger lost during {call}: the server holds ledger "
                                           f"{str(e).split(' ', 1)[-1]}, not {self.expected_ledger_id}") from e
                raise
            except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
                self._drop_connection()
                self.network_failures += 1
                self._note(call=call, outcome="indeterminate", attempt=attempt, error=_short(e), ids=list(ids))
                if time.monotonic() + delay > deadline:
                    self._note(call=call, outcome="failed", attempts=attempt, ids=list(ids))
                    raise StoreUnavailable(f"Redis server at {self.address[0]}:{self.address[1]} unreachable "
                                           f"during {call} for {self.retry_budget_s:.0f} s "
                                           f"({attempt} attempts): {_short(e)}") from e
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
                continue
            if attempt > 1:
                self._note(call=call, outcome="ok", attempts=attempt, ids=list(ids))
            return out

    def _note(self, **fields: Any) -> None:
        if self.on_network_event is not None:
            self.on_network_event(**fields)

    def _read(self, what: str, *args: str):
        return self._run(what, "read", self._keys("ledger", "refs", "order"), [what, *args])

    def _keys(self, *names: str) -> List[str]:
        return [self.keys[n] for n in names]

    # -- contract -----------------------------------------------------------
    def ledger_id(self) -> str:
        return _text(self._read("ledger"))

    def commit_sample(self, ref: SampleRef) -> bool:
        return self.commit_samples([ref])[0]

    def commit_samples(self, refs: Sequence[SampleRef]) -> List[bool]:
        refs = check_refs(refs)
        if not refs:
            return []
        token = uuid.uuid4().hex  # one per call: every retry of this call carries it
        args: List[Any] = [token]
        for r in refs:
            args += [r.sample_id, json.dumps(ref_to_dict(r), sort_keys=True)]
        out = self._run("commit_samples", "commit", self._keys("ledger", "refs", "order", "owner"), args,
                        [r.sample_id for r in refs])
        return [bool(int(x)) for x in out]

    def is_committed(self, sample_id: str) -> bool:
        return bool(int(self._read("has", sample_id)))

    def get_committed(self, sample_id: str) -> Optional[SampleRef]:
        raw = self._read("get", sample_id)
        return None if raw is None else SampleRef.from_json(_text(raw))

    def committed_count(self) -> int:
        return int(self._read("count"))

    def all_committed_ids(self) -> List[str]:
        return [_text(x) for x in self._read("ids")]

    def record_train_ack(
        self, sample_ids: Iterable[str], *, global_step: Optional[int], optimizer_durable: bool
    ) -> None:
        ids = sorted(as_id_set(sample_ids))
        step = "" if global_step is None else str(int(global_step))
        self._run("record_train_ack", "ack", self._keys("ledger", "acked", "step", "durable"),
                  [step, "1" if optimizer_durable else "0", *ids], ids)

    def durable_marker(self) -> Dict[str, Any]:
        acked, step, durable = self._run("durable_marker", "marker", self._keys("ledger", "acked", "step", "durable"),
                                         [])
        return {"acked": {_text(x) for x in acked}, "global_step": None if step is None else int(step),
                "optimizer_durable": _text(durable or b"0") == "1"}

    def close(self) -> None:
        self._drop_connection()


def _text(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def _short(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:200]
