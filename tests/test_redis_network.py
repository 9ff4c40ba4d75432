"""End to end on a real Redis server: lost replies on a commit and on an ack, and
the Redis store zoo caught by the process engine.

The reference survives a lost reply on the producer's commit and on the
consumer's ack (completed, every property holds, every planned fault landed,
the histories show the indeterminate attempt and the retry that returned).
Broken Redis stores are reported for the property they break.
"""

from __future__ import annotations

import json
import os

import pytest

from harness.process_engine.runner import run_scenario
from harness.scenario import load_scenario, scenario_from_dict
from tests.pipeline_zoo import NETWORK_ZOO, scenario_for_network


def _store_calls(report_dir: str):
    with open(os.path.join(report_dir, "history.jsonl")) as f:
        return [e for e in map(json.loads, f) if e.get("ev") == "store_call"]


@pytest.mark.parametrize("scenario, call, node", [("redis-lost-reply-commit", "commit_samples", "producer"),
                                                  ("redis-lost-reply-ack", "record_train_ack", "consumer")])
def test_reference_survives_lost_replies(tmp_path, scenario, call, node):
    r = run_scenario(scenario, 0, reports_dir=str(tmp_path), keep_work=True)
    assert r.outcome == "completed" and r.as_expected and r.valid, r.verdict
    assert r.faults["planned"] == r.faults["landed"] >= 3, r.faults
    calls = _store_calls(r.report_dir)
    lost = [e for e in calls if e["outcome"] == "indeterminate"]
    assert len(lost) == r.faults["planned"]
    assert {e["call"] for e in lost} == {call} and {e["proc"] for e in lost} == {node}
    retried = [e for e in calls if e["outcome"] == "ok"]
    # each lost attempt was retried until one returned; two lost replies armed at once (a
    # timed fault and a failpoint's) can drop a call's reply and then its retry's
    assert [e["ids"] for e in retried for _ in range(e["attempts"] - 1)] == [e["ids"] for e in lost]
    with open(os.path.join(r.report_dir, "result.json")) as f:
        server = json.load(f)["final"]["store_server"]["server"]
    assert server["version"].startswith("6.") and server["appendfsync"] == "always"
    with open(os.path.join(r.report_dir, "report.md")) as f:
        assert "Store server: redis 6." in f.read()  # every report names the server it judged


def _with(scenario: str, **changes):
    sc = load_scenario(scenario)
    faults = [f.to_dict() for f in sc.explicit_faults]
    data = json.loads(json.dumps({"name": sc.name, "topology": sc.topology, "store": sc.store,
                                  "workload": sc.workload, "faults": {"explicit": faults}, "expect": sc.expect}))
    for f in data["faults"]["explicit"]:
        f.pop("origin", None)
    for k, v in changes.items():
        data[k] = v
    return scenario_from_dict(data, f"{scenario} (test)")


ZOO = "tests.store_zoo.redis:"


def test_commit_retry_not_idempotent_is_caught(tmp_path):
    r = run_scenario("redis-lost-reply-commit", 0, backend=ZOO + "RetryNotIdempotentCommitStore",
                     reports_dir=str(tmp_path))
    assert r.faults["landed"] == 3 and "P4" in r.verdict["violated"], r.verdict
    assert "never_fresh" in json.dumps(r.properties["P4"])


def test_ack_as_separate_commands_is_caught(tmp_path):
    crash = {"kind": "failpoint", "target": "consumer", "point": "store.mid_ack_txn", "action": "crash", "hit": 3}
    sc = _with("redis-baseline", faults={"explicit": [crash]})
    r = run_scenario(sc, 0, backend=ZOO + "SeparateCommandsAckStore", reports_dir=str(tmp_path))
    assert r.faults["landed"] == 1 and "P5" in r.verdict["violated"], r.verdict


@pytest.mark.slow
def test_everysec_presented_as_durable_is_caught(tmp_path):
    r = run_scenario("redis-powercut-everysec", 0, backend=ZOO + "EverysecAsDurableStore",
                     reports_dir=str(tmp_path))
    assert "P6" in r.verdict["violated"], r.verdict


@pytest.mark.parametrize("name", sorted(NETWORK_ZOO))
def test_network_zoo_member_is_caught_and_the_reference_is_not(tmp_path, name):
    member = NETWORK_ZOO[name]
    sc = scenario_for_network(member)
    r = run_scenario(sc, 0, reports_dir=str(tmp_path))
    assert r.faults["landed"] == r.faults["planned"] and r.as_expected, r.verdict
    assert member.violates in r.verdict["violated"]
    sc.topology["variant"] = ""  # the reference client under the same lost replies
    ok = run_scenario(sc, 0, reports_dir=str(tmp_path))
    assert ok.valid and ok.outcome == "completed" and ok.faults["landed"] == ok.faults["planned"], ok.verdict
