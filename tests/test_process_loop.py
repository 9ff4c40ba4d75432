"""The one process loop: exit codes by name, the peer sentinel, fail-closed and clean failures."""

import pytest

from reference_impl.channel import FAILED, sentinel, set_sentinel
from reference_impl.config import EXIT_FAIL_CLOSED, EXIT_FAILED, EXIT_OK, RunConfig
from reference_impl.process_loop import Exit, ExitCode, FailClosed, Failed, ProcessLoop, peer_failed_code
from reference_impl.stores import StoreUnavailable


class Log:
    def __init__(self):
        self.events = []

    def emit(self, ev, **fields):
        self.events.append((ev, fields))


class Script:
    """A steppable object that returns (or raises) what it is told, one item per step."""

    def __init__(self, *items):
        self.items = list(items)
        self.closed = False

    def step(self):
        item = self.items.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self):
        self.closed = True


def loop(tmp_path, *items):
    lines = []
    lp = ProcessLoop("consumer", RunConfig(workdir=str(tmp_path), poll_interval_s=0.0), Log(), say=lines.append)
    lp.start(lambda: Script(*items))
    return lp, lines


def test_exit_codes_by_name_are_the_config_values():
    assert (ExitCode.COMPLETED, ExitCode.FAIL_CLOSED, ExitCode.FAILED) == (EXIT_OK, EXIT_FAIL_CLOSED, EXIT_FAILED)


def test_done_completes_and_closes(tmp_path):
    lp, _ = loop(tmp_path, "progress", "idle", "done")
    assert lp.run() == Exit(ExitCode.COMPLETED, "completed")
    assert lp.obj.closed and lp.h.events[-1] == ("exit", {"code": 0, "outcome": "completed"})


@pytest.mark.parametrize("error, reason", [(FailClosed("ledger_lost", "ids gone"), "ledger_lost"),
                                           (StoreUnavailable("server gone"), "store_unavailable")])
def test_fail_closed_sets_the_sentinel_and_exits_3(tmp_path, error, reason):
    lp, lines = loop(tmp_path, "progress", error)
    ended = lp.run()
    assert ended.code == ExitCode.FAIL_CLOSED and ended.status == "fail_closed"
    assert sentinel(str(tmp_path), FAILED)["fail_closed"] is True
    assert lp.h.events[-1][0] == "fail_closed" and lp.h.events[-1][1]["reason"] == reason
    assert lines and "fail closed" in lines[0]


def test_a_clean_failure_exits_4_and_stops_the_peer(tmp_path):
    lp, _ = loop(tmp_path, Failed("channel: EIO"))
    assert lp.run() == Exit(ExitCode.FAILED, "failed", "channel: EIO")
    assert sentinel(str(tmp_path), FAILED) == {"proc": "consumer", "reason": "channel: EIO"}


@pytest.mark.parametrize("payload, code", [({"reason": "x", "fail_closed": True}, ExitCode.FAIL_CLOSED),
                                           ({"reason": "x"}, ExitCode.FAILED)])
def test_a_failed_peer_stops_this_process_with_one_rule(tmp_path, payload, code):
    assert peer_failed_code(payload) == code
    lp, _ = loop(tmp_path, "progress", "progress")
    assert lp.step() == "progress"
    set_sentinel(str(tmp_path), FAILED, payload)
    ended = lp.step()
    assert ended == Exit(code, "peer_failed", "x") and ended.status == "peer_failed"
    assert lp.h.events[-1] == ("exit", {"code": int(code), "outcome": "peer_failed", "reason": "x"})


def test_other_exceptions_propagate(tmp_path):
    lp, _ = loop(tmp_path, KeyError("bug"))
    with pytest.raises(KeyError):
        lp.run()
