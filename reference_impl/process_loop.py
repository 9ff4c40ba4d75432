"""One process loop for the producer and the consumer, one step at a time.

The producer and the consumer are steppable objects (`step()` returns
"progress", "idle" or "done"). `ProcessLoop` is what a process does around
them, written once:

* before each step, the `channel.failed` sentinel: a peer that failed stops
  this process too (`peer_failed`, exit code by `peer_failed_code`);
* the step, where a `FailClosed` or a lost store connection (`StoreUnavailable`)
  fails closed (the `fail_closed` event, the sentinel, exit 3) and a `Failed`
  error (I/O past the retry budget) is a clean failure (the sentinel, an
  `exit` event, exit 4);
* "done" is the `exit` event with code 0; a process the harness started with
  `DFH_HOLD_AT_END=1` first writes a `hold` event and stops itself, for the
  harness to kill or resume (`HOLD_ENV`).

The process mains (`run_producer`, `run_consumer`: `run_process`; rank 0 of
the data-parallel consumer) call `run()`, a thin loop; the simulation engine
calls `check_peer()` and `advance()` itself, one step at a time, under its
scheduler. Any other exception (a `FailpointCrash`, a bug) propagates to the
caller. The mains' common start (`process_args`, `load_process`,
`open_history`) is here too.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Callable, Dict, Optional, Tuple, Union

from . import failpoints
from .channel import FAILED, fail_closed, sentinel, set_sentinel
from .config import EXIT_ERROR, EXIT_FAIL_CLOSED, EXIT_FAILED, EXIT_OK, EXIT_USAGE, ConfigError, RunConfig, load_config
from .devices import DeviceError, pick_device
from .history import HistoryWriter, NullHistory
from .stores import StoreUnavailable
from .variant import apply_from_env

IDLE, PROGRESS, DONE = "idle", "progress", "done"
#: "1": at its end, before its `exit` event, the process writes a `hold` event and stops itself
#: (SIGSTOP) until the harness kills or resumes it. The harness sets it for a process it still plans
#: to kill at a progress point: on a busy machine it may look at the progress only after the
#: process has reached the point and finished, and the kill then still lands.
HOLD_ENV = "DFH_HOLD_AT_END"


class ExitCode(IntEnum):
    """A process's exit status, by name (the values are `reference_impl.config.EXIT_*`)."""

    COMPLETED = EXIT_OK
    ERROR = EXIT_ERROR  # a bug or an unexpected exception (the traceback is on stderr)
    USAGE = EXIT_USAGE  # bad config, bad failpoint rules, no such device
    FAIL_CLOSED = EXIT_FAIL_CLOSED  # stopped rather than risk wrong training (e.g. ledger lost)
    FAILED = EXIT_FAILED  # a clean, reported failure (e.g. I/O errors past the retry budget)


class FailClosed(RuntimeError):
    """Stop rather than risk wrong training; `reason` is a short tag, `detail` the why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Failed(RuntimeError):
    """A clean, reported failure (for instance I/O past the retry budget)."""


@dataclass(frozen=True)
class Exit:
    """How a process loop ended: the exit code, the outcome its `exit` event names, why."""

    code: ExitCode
    outcome: str  # completed | failed | fail_closed | peer_failed
    reason: Optional[str] = None

    @property
    def status(self) -> str:
        """The end as a process status: `done` for completed, else the outcome."""
        return "done" if self.outcome == "completed" else self.outcome


def peer_failed_code(payload: Dict[str, Any]) -> ExitCode:
    """The exit code of a process stopped by its peer's `channel.failed` sentinel:
    fail-closed when the peer failed closed, else failed."""
    return ExitCode.FAIL_CLOSED if payload.get("fail_closed") else ExitCode.FAILED


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class ProcessLoop:
    """The loop around one steppable object of process `proc` (history `history`).

    `say` receives the lines a process prints on stderr (the simulation passes
    a no-op). After an `Exit`, the loop is over: `ended` holds it.
    """

    def __init__(self, proc: str, cfg, history, obj: Any = None, *,
                 say: Callable[[str], None] = _stderr, hold_at_end: bool = False) -> None:
        self.proc = proc
        self.cfg = cfg
        self.h = history
        self.obj = obj
        self.say = say
        self.hold_at_end = hold_at_end
        self.ended: Optional[Exit] = None

    def start(self, make: Callable[[], Any]) -> Optional[Exit]:
        """Build the steppable object; a fail-closed error while building ends the loop."""
        try:
            self.obj = make()
        except FailClosed as e:
            return self.fail_closed(e.reason, e.detail)
        except StoreUnavailable as e:
            return self.fail_closed("store_unavailable", str(e))
        return None

    def check_peer(self) -> Optional[Exit]:
        """The peer failed (the `channel.failed` sentinel is set): stop too."""
        failed = sentinel(self.cfg.workdir, FAILED)
        if failed is None:
            return None
        code = peer_failed_code(failed)
        self.h.emit("exit", code=int(code), outcome="peer_failed", reason=failed.get("reason"))
        return self._end(Exit(code, "peer_failed", failed.get("reason")))

    def advance(self) -> Union[str, Exit]:
        """One step of the object: its status, or the `Exit` it ended with."""
        try:
            status = self.obj.step()
        except FailClosed as e:
            return self.fail_closed(e.reason, e.detail)
        except StoreUnavailable as e:
            return self.fail_closed("store_unavailable", str(e))
        except Failed as e:
            return self.failed(str(e))
        if status == DONE:
            if self.hold_at_end:
                self.h.emit("hold")
                os.kill(os.getpid(), signal.SIGSTOP)
            self.h.emit("exit", code=int(ExitCode.COMPLETED), outcome="completed")
            return self._end(Exit(ExitCode.COMPLETED, "completed"))
        return status

    def step(self) -> Union[str, Exit]:
        """One iteration of the process loop: the peer check, then one step."""
        return self.check_peer() or self.advance()

    def fail_closed(self, reason: str, detail: str) -> Exit:
        """The `fail_closed` event, the `channel.failed` sentinel (fail_closed), a line on stderr."""
        fail_closed(self.cfg.workdir, self.h, self.proc, reason, detail, say=self.say)
        return self._end(Exit(ExitCode.FAIL_CLOSED, "fail_closed", f"{reason}: {detail}"))

    def failed(self, reason: str) -> Exit:
        """A clean failure: the sentinel (so the peer stops), the `exit` event, a line on stderr."""
        set_sentinel(self.cfg.workdir, FAILED, {"proc": self.proc, "reason": reason})
        self.h.emit("exit", code=int(ExitCode.FAILED), outcome="failed", reason=reason)
        self.say(f"{self.proc}: failed cleanly: {reason}")
        return self._end(Exit(ExitCode.FAILED, "failed", reason))

    def _end(self, ended: Exit) -> Exit:
        self.ended = ended
        return ended

    def run(self, *, sleep: Callable[[float], None] = time.sleep) -> Exit:
        """Step until the loop ends (sleeping `poll_interval_s` when idle); closes the object."""
        try:
            while True:
                r = self.step()
                if isinstance(r, Exit):
                    return r
                if r == IDLE:
                    sleep(self.cfg.poll_interval_s)
        finally:
            self.close()

    def close(self) -> None:
        if self.obj is not None:
            self.obj.close()


def run_process(proc: str, cfg: RunConfig, history, make: Callable[[], Any]) -> int:
    """A process's whole life: build the object with `make`, run the loop; the exit code."""
    # (never without a history: the `hold` event is how the harness tells this stop from others)
    hold = os.environ.get(HOLD_ENV) == "1" and not isinstance(history, NullHistory)
    loop = ProcessLoop(proc, cfg, history, hold_at_end=hold)
    ended = loop.start(make)
    return int((ended or loop.run()).code)


# -- the mains' common start ------------------------------------------------------


def process_args(prog: str, description: str, argv, *, resume: bool) -> argparse.Namespace:
    """--config, --incarnation (default $DFH_INCARNATION) and, for a consumer, --resume."""
    ap = argparse.ArgumentParser(prog=prog, description=description)
    ap.add_argument("--config", required=True, help="run config JSON (see reference_impl/config.py)")
    if resume:
        ap.add_argument("--resume", action="store_true", help="resume from the checkpoint and the store's ledger")
    ap.add_argument("--incarnation", type=int, default=int(os.environ.get("DFH_INCARNATION", "0")))
    return ap.parse_args(argv)


def load_process(proc: str, config_path: str, device: Optional[str] = None) -> Optional[Tuple[RunConfig, Any]]:
    """Load the config, check the failpoint rules, apply the variant and pick the `device`
    request (None: no device): `(cfg, device)`, or None after printing why it is bad input."""
    try:
        cfg = load_config(config_path)
        failpoints.parse_rules(os.environ.get(failpoints.ENV_VAR) or None)  # bad rules: usage error
        apply_from_env()
        dev = pick_device(getattr(cfg, device), proc) if device else None
    except (ConfigError, ValueError, DeviceError) as e:
        print(f"{proc}: error: {e}", file=sys.stderr)
        return None
    return cfg, dev


def open_history(cfg: RunConfig, proc: str, incarnation: int, **failpoint_kw: Any):
    """The process's history writer (a null one when the run turned history off), with its
    failpoints armed from the environment and reported into it."""
    history = (HistoryWriter(cfg.path("history", f"{proc}.jsonl"), proc, incarnation)
               if cfg.extra.get("history", True) else NullHistory())
    failpoints.configure_from_env(lambda point, action: history.emit("failpoint", point=point, action=action),
                                  **failpoint_kw)
    return history
