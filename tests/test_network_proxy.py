"""The loopback TCP proxy (harness.network.proxy) against a small echo server:
pass-through, partition (hang, then reset), latency, reset, lost reply."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from harness.network.proxy import NodeProxy, resp_command


@pytest.fixture
def echo():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    seen = []
    stop = threading.Event()

    def serve(c):
        with c:
            while True:
                try:
                    data = c.recv(4096)
                except OSError:
                    return
                if not data:
                    return
                seen.append(data)
                c.sendall(b"re:" + data)

    def accept():
        srv.settimeout(0.05)
        while not stop.is_set():
            try:
                c, _ = srv.accept()
            except socket.timeout:
                continue
            threading.Thread(target=serve, args=(c,), daemon=True).start()

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield srv.getsockname(), seen
    stop.set()
    t.join()
    srv.close()


@pytest.fixture
def proxy(echo):
    p = NodeProxy("consumer", echo[0], seed=3)
    yield p
    p.close()


def call(addr, payload: bytes, timeout: float = 2.0) -> bytes:
    with socket.create_connection(addr, timeout=timeout) as s:
        s.sendall(payload)
        return s.recv(4096)


def test_passes_requests_and_replies(proxy, echo):
    assert call(proxy.address, b"hello") == b"re:hello"
    assert proxy.stats["connections"] == 1 and proxy.stats["bytes_down"] == len(b"re:hello")


def test_partition_hangs_then_resets(proxy, echo):
    s = socket.create_connection(proxy.address, timeout=0.3)
    s.sendall(b"one")
    assert s.recv(100) == b"re:one"
    proxy.partition(0.8, fault=1)
    s.sendall(b"two")
    with pytest.raises(socket.timeout):
        s.recv(100)  # hangs while partitioned
    assert b"two" not in echo[1]  # the request never reached the server
    s.settimeout(3)
    with pytest.raises(ConnectionResetError):
        s.recv(100)  # and fails at the heal
    s.close()
    assert call(proxy.address, b"three") == b"re:three"  # healed
    assert [x.kind for x in proxy.landed] == ["partition"] and proxy.landed[0].fault == 1


def test_latency_delays_each_direction(proxy):
    proxy.latency(0.2, 0.0, "reply", duration_s=5)
    t = time.monotonic()
    assert call(proxy.address, b"x") == b"re:x"
    assert time.monotonic() - t >= 0.2
    with pytest.raises(ValueError):
        proxy.latency(0.1, direction="sideways")


def test_reset_resets_open_connections(proxy):
    s = socket.create_connection(proxy.address, timeout=2)
    s.sendall(b"a")
    assert s.recv(10) == b"re:a"
    assert proxy.reset(fault=2) == 1
    with pytest.raises((ConnectionResetError, BrokenPipeError)):
        s.sendall(b"b")
        s.recv(10)
    s.close()


def test_lost_reply_reaches_the_server_and_drops_the_answer(proxy, echo):
    proxy.lose_next_reply(fault=9)
    with pytest.raises(ConnectionResetError):
        call(proxy.address, b"*1\r\n$4\r\nEVAL\r\n")
    deadline = time.monotonic() + 2
    while not proxy.landed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert echo[1] == [b"*1\r\n$4\r\nEVAL\r\n"]  # applied by the server
    assert proxy.landed[0].kind == "lost_reply" and proxy.landed[0].fault == 9
    assert call(proxy.address, b"next") == b"re:next"  # one reply only


def test_two_lost_replies_armed_at_once_drop_two_replies(proxy, echo):
    # a timed fault and a failpoint's can arm before the next request: each must land, in order
    proxy.lose_next_reply(fault=4)
    proxy.lose_next_reply(fault=5)
    for _ in range(2):
        with pytest.raises(ConnectionResetError):
            call(proxy.address, b"*1\r\n$4\r\nEVAL\r\n")
    deadline = time.monotonic() + 2
    while len(proxy.landed) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [(x.kind, x.fault) for x in proxy.landed] == [("lost_reply", 4), ("lost_reply", 5)]
    assert call(proxy.address, b"next") == b"re:next"  # and no third


def test_lost_reply_skips_connection_handshakes(proxy, echo):
    proxy.lose_next_reply(fault=1)
    s = socket.create_connection(proxy.address, timeout=2)
    s.sendall(b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n")
    assert s.recv(100).startswith(b"re:")
    s.sendall(b"*1\r\n$6\r\nEVALSHA\r\n")
    with pytest.raises(ConnectionResetError):
        s.recv(100)
    s.close()


def test_resp_command():
    assert resp_command(b"*3\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n") == b"EVALSHA"
    assert resp_command(b"*1\r\n$4\r\nping\r\n") == b"PING"
    assert resp_command(b"\x80\x04pickle") is None
