"""A TCP proxy on loopback: one node's network path to a store server.

Each client process of a run (producer, consumer, a consumer rank) reaches the
store server through its own `NodeProxy`, so each is its own "node" and a
network fault hits one node and not the others. Rootless: plain sockets on
127.0.0.1, one thread per direction of each connection.

Faults (each method returns at once; the proxy applies the fault from then on):

* `partition(duration_s)`: nothing passes in either direction, new
  connections are accepted and hang; when it heals, every connection that
  lived through it is reset (the client sees its calls hang, then fail);
* `latency(delay_s, jitter_s, direction, duration_s)`: each chunk waits
  `delay_s` plus a seeded uniform draw up to `jitter_s` before it is passed on,
  in `request`, `reply` or `both` directions; order is kept;
* `reset()`: every open connection is reset now (RST, not FIN);
* `lose_next_reply(fault)`: the next request (not a connection handshake: for
  Redis's protocol, AUTH, HELLO, CLIENT, PING, SELECT and SCRIPT are let
  through) reaches the server; its reply is dropped when it arrives and the
  client's connection is reset. The outcome of that call is indeterminate to
  the client; the server did apply it.

Every fault that took effect is appended to `landed` (fault id, what happened,
when), which is how the harness confirms a network fault landed.
"""

from __future__ import annotations

import collections
import random
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, List, Optional, Tuple

POLL_S = 0.05
CHUNK = 65536
DIRECTIONS = ("request", "reply", "both")
#: Redis commands a client sends to set up a connection: a lost reply there loses no store call.
HANDSHAKE = {b"AUTH", b"HELLO", b"CLIENT", b"PING", b"SELECT", b"SCRIPT", b"READONLY", b"ECHO"}


def resp_command(data: bytes) -> Optional[bytes]:
    """The command name of a Redis request (`*N\\r\\n$L\\r\\nNAME...`), or None if `data` is not one."""
    if not data.startswith(b"*"):
        return None
    parts = data.split(b"\r\n", 3)
    if len(parts) < 3 or not parts[1].startswith(b"$"):
        return None
    return parts[2].upper()


@dataclass
class _Conn:
    client: socket.socket
    upstream: Optional[socket.socket]
    doomed: bool = False  # lived through a partition: reset when it heals
    reply_lost: Optional[int] = None  # the lost_reply fault whose reply this connection drops
    closed: bool = False
    requests: int = 0


@dataclass
class _Latency:
    delay_s: float
    jitter_s: float
    direction: str
    until: float


@dataclass
class Landed:
    fault: Optional[int]
    kind: str
    detail: str
    t: float = field(default_factory=time.monotonic)


class NodeProxy:
    """The network path of node `node` to `upstream` (host, port); see the module docstring."""

    def __init__(self, node: str, upstream: Tuple[str, int], *, seed: int = 0) -> None:
        self.node = node
        self.upstream = (str(upstream[0]), int(upstream[1]))
        self._rng = random.Random(f"{seed}:{node}")
        self._lock = threading.Lock()
        self._conns: List[_Conn] = []
        self._partition_until = 0.0
        self._partition_fault: Optional[int] = None
        self._latency: Optional[_Latency] = None
        # armed lost replies, first armed first served: two armed before the next request (a timed
        # one and a failpoint's, say) drop two replies, not one (the other would never land)
        self._lose_next: Deque[int] = collections.deque()
        self.landed: List[Landed] = []
        self.stats = {"connections": 0, "requests": 0, "bytes_up": 0, "bytes_down": 0, "resets": 0}
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(POLL_S)
        self.address: Tuple[str, int] = self._listener.getsockname()
        self._stop = threading.Event()
        self._threads: List[threading.Thread] = []
        self._spawn(self._accept_loop, f"proxy-{node}-accept")

    # -- faults ---------------------------------------------------------------
    def partition(self, duration_s: float, fault: Optional[int] = None) -> None:
        with self._lock:
            self._partition_until = time.monotonic() + float(duration_s)
            self._partition_fault = fault
            for c in self._conns:
                c.doomed = True
        self._spawn(self._heal_later, f"proxy-{self.node}-heal", float(duration_s), fault)
        self._land(fault, "partition", f"{self.node} cut off from the store server for {duration_s:.2f} s "
                                       f"({len(self._conns)} open connections hang)")

    def latency(self, delay_s: float, jitter_s: float = 0.0, direction: str = "both", duration_s: float = 1.0,
                fault: Optional[int] = None) -> None:
        if direction not in DIRECTIONS:
            raise ValueError(f"direction {direction!r}; allowed: {', '.join(DIRECTIONS)}")
        with self._lock:
            self._latency = _Latency(float(delay_s), float(jitter_s), direction, time.monotonic() + float(duration_s))
        self._land(fault, "latency", f"{self.node}: +{delay_s * 1000:.0f} ms (jitter {jitter_s * 1000:.0f} ms, "
                                     f"{direction}) for {duration_s:.2f} s")

    def reset(self, fault: Optional[int] = None) -> int:
        with self._lock:
            conns = [c for c in self._conns if not c.closed]
        for c in conns:
            self._close(c, rst=True)
        self._land(fault, "reset", f"{self.node}: {len(conns)} connections reset")
        return len(conns)

    def lose_next_reply(self, fault: Optional[int] = None) -> None:
        """Arm: the next request's reply is dropped (landing is recorded when it is); each arming drops one."""
        with self._lock:
            self._lose_next.append(-1 if fault is None else int(fault))

    @property
    def partitioned(self) -> bool:
        return time.monotonic() < self._partition_until

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            self._close(c, rst=False)
        try:
            self._listener.close()
        except OSError:
            pass
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=2)

    # -- plumbing -------------------------------------------------------------
    def _spawn(self, fn, name: str, *args: Any) -> None:
        t = threading.Thread(target=fn, args=args, name=name, daemon=True)
        self._threads = [x for x in self._threads if x.is_alive()]
        self._threads.append(t)
        t.start()

    def _land(self, fault: Optional[int], kind: str, detail: str) -> None:
        with self._lock:
            self.landed.append(Landed(fault, kind, detail))

    def _heal_later(self, duration_s: float, fault: Optional[int]) -> None:
        if self._stop.wait(duration_s):
            return
        with self._lock:
            if time.monotonic() < self._partition_until:  # a later partition extended it
                return
            doomed = [c for c in self._conns if c.doomed and not c.closed]
        for c in doomed:
            self._close(c, rst=True)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(client, None, doomed=self.partitioned)
            with self._lock:
                self._conns.append(conn)
                self.stats["connections"] += 1
            self._spawn(self._open_upstream, f"proxy-{self.node}-conn", conn)

    def _open_upstream(self, conn: _Conn) -> None:
        while self.partitioned and not conn.closed and not self._stop.is_set():
            time.sleep(POLL_S)  # a partitioned node's connect hangs
        if conn.closed or self._stop.is_set():
            return
        try:
            up = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            self._close(conn, rst=True)  # server down: the client sees its connection reset
            return
        up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            closed_meanwhile = conn.closed
            conn.upstream = up
        if closed_meanwhile:  # reset while connecting: nothing else will close it
            up.close()
            return
        self._spawn(self._pump, f"proxy-{self.node}-down", conn, False)
        self._pump(conn, True)

    def _pump(self, conn: _Conn, up: bool) -> None:
        src, dst = (conn.client, conn.upstream) if up else (conn.upstream, conn.client)
        try:
            src.settimeout(POLL_S)
        except OSError:  # closed by a reset meanwhile
            self._close(conn, rst=False)
            return
        while not conn.closed and not self._stop.is_set():
            try:
                data = src.recv(CHUNK)
            except socket.timeout:
                continue
            except OSError:
                break
            if not data:
                break
            if conn.doomed or self.partitioned:
                continue  # dropped on the floor: the call hangs (a doomed connection is reset at the heal)
            if up:
                self._on_request(conn, data)
            elif conn.reply_lost is not None:
                fid = conn.reply_lost
                self._close(conn, rst=True)
                self._land(None if fid < 0 else fid, "lost_reply",
                           f"{self.node}: request {conn.requests} reached the server, its reply "
                           f"({len(data)} bytes) was dropped and the connection reset")
                return
            self._delay(up)
            self.stats["bytes_up" if up else "bytes_down"] += len(data)
            try:
                dst.sendall(data)
            except OSError:
                break
        self._close(conn, rst=False)

    def _on_request(self, conn: _Conn, data: bytes) -> None:
        cmd = resp_command(data)
        with self._lock:
            if cmd is not None or conn.requests == 0:
                conn.requests += 1
                self.stats["requests"] += 1
            if self._lose_next and conn.reply_lost is None and cmd not in HANDSHAKE:
                conn.reply_lost = self._lose_next.popleft()

    def _delay(self, up: bool) -> None:
        lat = self._latency
        if lat is None or time.monotonic() >= lat.until:
            return
        if lat.direction == "both" or lat.direction == ("request" if up else "reply"):
            with self._lock:
                extra = self._rng.uniform(0, lat.jitter_s) if lat.jitter_s else 0.0
            time.sleep(lat.delay_s + extra)

    def _close(self, conn: _Conn, rst: bool) -> None:
        with self._lock:
            if conn.closed:
                return
            conn.closed = True
            if conn in self._conns:
                self._conns.remove(conn)
            if rst:
                self.stats["resets"] += 1
        for s in (conn.client, conn.upstream):
            if s is None:
                continue
            try:
                if rst:  # linger 0: close sends RST, the peer reads ECONNRESET
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()
            except OSError:
                pass

    def summary(self) -> Dict[str, Any]:
        return {"node": self.node, "address": list(self.address), "upstream": list(self.upstream), **self.stats,
                "landed": [{"fault": x.fault, "kind": x.kind, "detail": x.detail} for x in self.landed]}
