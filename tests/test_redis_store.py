"""The reference RedisMetadataStore on a real Redis server started by the harness.

Covers the contract, restart with each persistence setting, the ledger check
(a server that lost its state fails closed), idempotent retries after a lost
reply on a commit and on an ack, a partition that heals within the retry
budget, one that does not, and the server's private files and password.
"""

from __future__ import annotations

import json
import os
import socket
import stat

import pytest

from harness.network.proxy import NodeProxy
from harness.stores.redis_server import RedisServer, is_dynamic
from reference_impl.contracts import SampleRef
from reference_impl.stores import StoreUnavailable
from reference_impl.stores.redis import RedisMetadataStore


def ref(sid: str) -> SampleRef:
    return SampleRef(sid, "run", None, f"mem://{sid}", {"h": f"{sid}/h"}, {}, "eagle3", metadata={"i": sid})


@pytest.fixture
def server(tmp_path):
    s = RedisServer(str(tmp_path / "w"), "always")
    s.start()
    yield s
    s.stop()


@pytest.fixture
def proxied(server):
    p = NodeProxy("producer", ("127.0.0.1", server.port), seed=1)
    server.write_connection({"producer": p.address})
    events = []
    st = RedisMetadataStore(server.workdir, node="producer", call_timeout_s=0.5, retry_budget_s=10)
    st.on_network_event = lambda **kw: events.append(kw)
    yield st, p, events
    st.close()
    p.close()


def test_contract_round_trip(server):
    st = RedisMetadataStore(server.workdir)
    assert st.commit_samples([ref("a"), ref("a"), ref("b")]) == [True, False, True]
    assert st.commit_sample(ref("a")) is False
    assert st.all_committed_ids() == ["a", "b"] and st.committed_count() == 2
    assert st.get_committed("a") == ref("a") and st.get_committed("zz") is None
    assert st.is_committed("b") and not st.is_committed("c")
    assert st.durable_marker() == {"acked": set(), "global_step": None, "optimizer_durable": False}
    st.record_train_ack(["a"], global_step=4, optimizer_durable=True)
    st.record_train_ack(["b"], global_step=None, optimizer_durable=False)
    assert st.durable_marker() == {"acked": {"a", "b"}, "global_step": 4, "optimizer_durable": False}
    assert st.ledger_id() == server.ledger_id
    st.close()


def _hold(port: int) -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


def test_a_port_taken_before_the_servers_bind_moves_the_server_not_the_verdict(tmp_path):
    # The port is free when picked and bound by the server only later; another process may take it.
    s = RedisServer(str(tmp_path / "w"), "always")
    s.prepare()
    s.write_connection({"producer": ("127.0.0.1", 1)})
    taken = [_hold(s.port)]
    try:
        s.start()
        s.create_ledger()
        first = s.port
        assert first != taken[0].getsockname()[1]
        st = RedisMetadataStore(s.workdir)
        assert st.commit_samples([ref("a")]) == [True]
        st.close()
        s.kill()
        taken.append(_hold(first))  # taken again while the server is down: the restart moves it too
        s.start()
        assert s.port not in (first, taken[0].getsockname()[1])
        with open(s.connection_file) as f:
            info = json.load(f)
        assert info["port"] == s.port and info["endpoints"] == {"producer": ["127.0.0.1", 1]}
        st = RedisMetadataStore(s.workdir)
        assert st.all_committed_ids() == ["a"]
        st.close()
    finally:
        s.stop()
        for t in taken:
            t.close()


def test_restart_with_appendfsync_always_keeps_everything(server):
    st = RedisMetadataStore(server.workdir)
    st.commit_samples([ref("a")])
    st.record_train_ack(["a"], global_step=1, optimizer_durable=True)
    server.kill()
    server.start()
    assert st.durable_marker()["acked"] == {"a"} and st.all_committed_ids() == ["a"]
    st.close()


def test_server_that_lost_its_state_fails_closed(tmp_path):
    s = RedisServer(str(tmp_path / "w"), "snapshot")
    s.start()
    try:
        st = RedisMetadataStore(s.workdir, call_timeout_s=0.5, retry_budget_s=5)
        st.commit_samples([ref("a")])
        s.kill()  # within a second of the first write: no snapshot yet
        for name in os.listdir(s.data):
            os.unlink(os.path.join(s.data, name))
        s.start()
        with pytest.raises(StoreUnavailable, match="ledger lost"):
            st.durable_marker()
        st.close()
    finally:
        s.stop()


def test_lost_reply_on_commit_is_retried_and_still_fresh(proxied):
    st, p, events = proxied
    p.lose_next_reply(fault=3)
    assert st.commit_samples([ref("a"), ref("b")]) == [True, True]
    assert [x.kind for x in p.landed] == ["lost_reply"] and p.landed[0].fault == 3
    assert [e["outcome"] for e in events] == ["indeterminate", "ok"]
    assert events[0]["ids"] == ["a", "b"] and events[0]["call"] == "commit_samples"
    assert st.commit_samples([ref("a")]) == [False]  # another call: not fresh
    assert st.all_committed_ids() == ["a", "b"]


def test_lost_reply_on_ack_is_retried(proxied):
    st, p, events = proxied
    st.commit_samples([ref("a"), ref("b")])
    p.lose_next_reply(fault=4)
    st.record_train_ack(["a", "b"], global_step=2, optimizer_durable=True)
    assert st.durable_marker() == {"acked": {"a", "b"}, "global_step": 2, "optimizer_durable": True}
    assert [e["call"] for e in events] == ["record_train_ack", "record_train_ack"]
    assert p.landed and p.landed[0].kind == "lost_reply"


def test_partition_that_heals_within_the_budget(proxied):
    st, p, events = proxied
    p.partition(1.2, fault=5)
    assert st.commit_samples([ref("a")]) == [True]
    assert events[0]["outcome"] == "indeterminate" and events[-1]["outcome"] == "ok"


def test_partition_longer_than_the_budget_is_store_unavailable(server):
    p = NodeProxy("consumer", ("127.0.0.1", server.port))
    server.write_connection({"consumer": p.address})
    st = RedisMetadataStore(server.workdir, node="consumer", call_timeout_s=0.3, retry_budget_s=1.0)
    events = []
    st.on_network_event = lambda **kw: events.append(kw)
    try:
        p.partition(5.0)
        with pytest.raises(StoreUnavailable, match="unreachable during record_train_ack"):
            st.record_train_ack(["a"], global_step=1, optimizer_durable=True)
        assert events[-1]["outcome"] == "failed"
    finally:
        st.close()
        p.close()


def test_server_files_are_private_and_password_protected(server):
    import redis

    assert stat.S_IMODE(os.stat(server.dir).st_mode) == 0o700
    for path in (server.conf, server.password_file, server.connection_file):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=2).get("dfh:ledger")
    d = server.describe()
    assert d["version"].startswith("6.") and d["appendfsync"] == "always" and d["bind"] == "127.0.0.1"
    assert is_dynamic(server.binary)  # the power-loss tracer (LD_PRELOAD) can reach it
