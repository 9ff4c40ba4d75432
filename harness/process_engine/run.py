"""One run of the process engine in one object: its processes, its faults, its progress.

`Run` holds the supervisor (the processes), the store server with its node
proxies when the backend has one (`store_servers`), the fault ledger (what landed),
the run's progress (published and consumed counts) and each process's status,
and drives them until the run ends (`drive`):

1. every poll, processes that ended are reaped: a killed one restarts as its
   next incarnation (its failpoints armed from the schedule), one that exited
   sets its status; the run ends when no pipeline process runs, or after a
   clean failure once the peers had time to see it (`PEER_GRACE_S`);
2. the timed faults whose trigger holds (and whose planned incarnation is
   alive: `harness.faults.plan`) are delivered (`deliver`): a kill or pause to
   a process group or one rank's pid, a network fault to the node's proxy, a
   power cut to every process (`cut_power`); a target that cannot take a fault
   yet is retried for up to `DELIVERY_RETRY_S`;
3. pauses (timed, or stops at a `pause` failpoint) are resumed when due;
4. a process started while a kill at a progress point was still planned for it
   runs with `DFH_HOLD_AT_END=1`: at its end it writes a `hold` event and stops
   itself, so a kill whose trigger held only a moment before the process's end
   (its last record or sample) still lands however late this loop looks; a
   hold whose kill can no longer be due is resumed (`_release_holds`).

A process that stopped itself at a `powercut` failpoint is found in step 1's
place and the power is cut there.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from reference_impl.channel import read_json
from reference_impl.config import EXIT_FAIL_CLOSED, EXIT_FAILED, EXIT_OK, RunConfig
from reference_impl.process_loop import HOLD_ENV

from ..exit_codes import HarnessError
from ..faults import NETWORK_KINDS, Kill, Powercut, Schedule, Timed, rank_of
from ..history import HistoryError, read_events_file
from ..run_plumbing import Progress, roll_up
from .fault_ledger import FaultLedger
from .powercut import PowerLoss, stopped_at_powercut
from .supervisor import Supervisor, pid_stopped

POLL_S = 0.005
#: A target that exists but cannot be signalled for this long: the fault is missed.
DELIVERY_RETRY_S = 30.0
#: After a clean failure, how long the peers get to see the sentinel and exit.
PEER_GRACE_S = 10.0
#: {"inc": N, "pids": {"0": pid, ...}}: the rank pids the consumer group process publishes.
RANKS_FILE = "consumer.ranks.json"
PIPELINE = ("producer", "consumer")


@dataclass(frozen=True)
class Resume:
    """A SIGCONT due at `at` for incarnation `inc` of `target` (by process group, or by
    `pid` for one rank of the consumer group); `fault` is the pause's id, None for a
    failpoint's own stop."""

    at: float
    target: str
    inc: int
    fault: Optional[int]
    pid: Optional[int] = None


class Run:
    def __init__(self, cfg: RunConfig, schedule: Schedule, sup: Supervisor, ledger: FaultLedger, *,
                 timeout_s: float, say=lambda m: None, pl: Optional[PowerLoss] = None, net=None) -> None:
        self.cfg, self.schedule, self.sup, self.ledger = cfg, schedule, sup, ledger
        self.say, self.pl, self.net = say, pl, net
        self.timeout_s = float(timeout_s)
        self.t0 = time.monotonic()
        self.progress = Progress(cfg.workdir)
        self.status: Dict[str, str] = {name: "running" for name in PIPELINE}
        self.reason: Optional[str] = None  # why the run failed, when it did
        self.pending: List[Timed] = schedule.timed()
        self.first_try: Dict[int, float] = {}  # fault id -> when its delivery first failed
        self.resume_at: List[Resume] = []
        # `pause` failpoints: each stop they cause is resumed after its duration (in
        # schedule order when one incarnation has several).
        self.fp_pause_s: Dict[Tuple[str, int], List[float]] = {}
        for f in schedule.failpoints():
            if f.action == "pause":
                self.fp_pause_s.setdefault((f.target, f.incarnation), []).append(f.duration_s)
        self.fp_stops: Dict[Tuple[str, int], int] = {}  # (name, inc) -> stops seen so far
        self.settle_since: Optional[float] = None  # when the peers' grace after a clean failure began
        self.holds: Dict[str, int] = {}  # name -> the incarnation started with HOLD_ENV (a kill planned for it)

    # -- processes ----------------------------------------------------------------------
    def start(self, name: str) -> None:
        """Start `name`'s next incarnation (with its failpoints armed)."""
        if name == "store_server":
            self.net.start()
            return
        inc = self.sup.incarnations.get(name, -1) + 1
        rules = self.schedule.failpoint_rules(name, inc)
        if name == "producer":
            module = "reference_impl.producer"
        else:  # several data-parallel ranks run under one group process
            module = "reference_impl.consumer" if self.cfg.world_size == 1 else "reference_impl.dp_consumer"
        args = ["--config", self.cfg.path("config.json")] + (["--resume"] if name == "consumer" and inc > 0 else [])
        env = self.net.env_for(name) if self.net is not None else None
        if self._kill_planned_for(name, inc):
            env = dict(env or {}, **{HOLD_ENV: "1"})
            self.holds[name] = inc
        p = self.sup.spawn(name, module, args, failpoints=rules, env=env)
        self.say(f"  spawn {name}#{inc} pid {p.pid}" + (f" failpoints {rules}" if rules else ""))

    def start_all(self) -> None:
        if self.net is not None:  # the run's store server (in-memory or Redis), behind its node proxies
            self.start("store_server")
        for name in PIPELINE:
            self.start(name)

    def _reap(self) -> None:
        """Settle the ends of processes with the ledger; restart what was killed."""
        for p in self.sup.reap():
            code = p.code
            self.ledger.on_exit(p.name, p.inc, code)
            if p.name == "store_server":
                if "running" in (self.status.get("producer"), self.status.get("consumer")):
                    self.start("store_server")
            elif code == EXIT_OK:
                self.status[p.name] = "done"
            elif code == EXIT_FAIL_CLOSED:
                self.status[p.name] = "fail_closed"
            elif code == EXIT_FAILED:
                self.status[p.name] = "failed"
            elif code < 0 or code == 128 + signal.SIGKILL:
                self.say(f"  {p.name}#{p.inc} killed ({code}); restarting")
                self.start(p.name)
            else:
                self.status[p.name] = "error"
                self.reason = f"{p.name}#{p.inc} exited {code}: {p.stderr_tail(1500).strip()}"

    def _peers_settled(self, now: float) -> bool:
        """After a clean failure, give the peer time to see the sentinel and exit."""
        live = [p for n, p in self.sup.procs.items() if n != "store_server" and p.poll() is None]
        if not live:
            return True
        if self.settle_since is None:
            self.settle_since = now
        if now - self.settle_since > PEER_GRACE_S:
            for p in live:
                self.sup.kill(p.name)
            return True
        return False

    def _rank_info(self) -> Dict:
        return read_json(self.cfg.path(RANKS_FILE)) or {}

    # -- the loop -----------------------------------------------------------------------
    def drive(self) -> Tuple[str, Optional[str]]:
        """Run until the end; (outcome, reason)."""
        self.start_all()
        while True:
            end = self.poll(time.monotonic())
            if end is not None:
                return end
            self.sup.idle(POLL_S)

    def poll(self, now: float) -> Optional[Tuple[str, Optional[str]]]:
        """One round of the loop; (outcome, reason) once the run has ended."""
        if now > self.t0 + self.timeout_s:
            self.sup.h.emit("timeout", bound_s=self.timeout_s, state={
                "status": self.status, "published": self.progress.published, "consumed": self.progress.consumed})
            self._settle("timeout")
            return "timeout", f"no completion within {self.timeout_s} s"
        if self.pl is not None:
            self.pl.check()  # a journal over its bound (or unreadable) ends the run as a harness error
        self._reap()
        end = self._ended(now)
        if end is not None:
            return end
        if self.net is not None:  # a process stopped at a `lost_reply` failpoint: arm its proxy, resume it
            self.net.arm_at_failpoints(self.sup, self.cfg.workdir, self.schedule.failpoints())
        cut = self._powercut_due()
        if cut is not None:
            self.cut_power(*cut)
            return None
        self.progress.update()
        self._send_due(now)
        self._release_holds(now)
        for fid in self.ledger.poll(now):
            self.sup.h.emit("fault_landed_stop", fault=fid)
        for fid, how in self.net.landed() if self.net is not None else ():
            self.ledger.land(fid, how)
        self._schedule_failpoint_resumes(now)
        self._resume_due(now)
        return None

    def _ended(self, now: float) -> Optional[Tuple[str, Optional[str]]]:
        vals = set(self.status.values())
        if "running" in vals and not ({"fail_closed", "failed", "error"} & vals and self._peers_settled(now)):
            return None
        outcome = roll_up(vals) or "completed"
        if outcome != "completed" and self.reason is None:
            self.reason = (read_json(self.cfg.path("channel.failed")) or {}).get("reason")
        self._settle(outcome)
        return outcome, self.reason

    def _settle(self, outcome: str) -> None:
        """The run ended: every fault still pending missed, with why."""
        why = (f"the run ended ({outcome}) before the trigger held "
               f"(published {self.progress.published}, consumed {self.progress.consumed})")
        for f in self.pending:
            if f.id in self.first_try:
                self.ledger.miss(f.id, f"the run ended ({outcome}) before {f.target} could take it")
            elif not self._incarnation_reached(f):
                self.ledger.miss(f.id, f"the run ended ({outcome}) before the incarnation the plan holds it for "
                                       f"({self._held_for(f)}) was alive")
            else:
                self.ledger.miss(f.id, why)
        for p in self.sup.reap():
            self.ledger.on_exit(p.name, p.inc, p.code)

    # -- timed faults -------------------------------------------------------------------
    def _send_due(self, now: float) -> None:
        for f in list(self.pending):
            if not self._due(f, now):
                continue
            if isinstance(f, Powercut):
                self.pending.remove(f)
                self.cut_power(f.id, "timed")
                return  # the processes and the channel are new: triggers are judged again next round
            verdict = self.deliver(f, now)
            if verdict == "retry":
                first = self.first_try.setdefault(f.id, now)
                if now - first > DELIVERY_RETRY_S:
                    self.pending.remove(f)
                    p = self.sup.procs.get(f.target)
                    self.ledger.miss(f.id, f"could not signal {f.target} for {DELIVERY_RETRY_S:.0f} s: "
                                           f"{(p.last_signal_error if p else None) or 'its ranks were not published'}")
                continue
            self.pending.remove(f)
            if verdict != "sent":
                self.ledger.miss(f.id, verdict)

    def _due(self, f: Timed, now: float) -> bool:
        """Whether `f`'s trigger holds and the incarnations the plan holds it for are alive."""
        return self._incarnation_reached(f) and f.holds(self.progress.published, self.progress.consumed,
                                                        now - self.t0)

    def _held_for(self, f: Timed) -> Dict[str, int]:
        """The incarnations the plan holds `f` back for (`harness.faults.plan`)."""
        if isinstance(f, Powercut):
            return dict(f.after or {})
        return {f.process: f.incarnation} if f.incarnation is not None else {}

    def _incarnation_reached(self, f: Timed) -> bool:
        """Whether the incarnations the plan holds `f` back for are alive (or their process has ended)."""
        for name, inc in self._held_for(f).items():
            p = self.sup.procs.get(name)
            if self.status.get(name, "running") == "running" and (p is None or p.inc < inc):
                return False
        return True

    def deliver(self, f: Timed, now: float) -> str:
        """Send one timed fault: "sent", "retry" (as soon as the target can take it), or why it missed."""
        if f.kind in NETWORK_KINDS and self.net is not None:
            return self.net.deliver(f)
        target = f.target
        if target == "store_server" and "store_server" not in self.sup.procs:
            return f"no store_server: backend {self.cfg.backend!r} runs none (inmemory and redis do)"
        rank = rank_of(target)
        if rank is not None:
            return self._deliver_to_rank(f, rank, now)
        if target not in ("producer", "consumer", "store_server"):
            return f"target not in topology: {target!r}"
        if target != "store_server" and self.status.get(target) != "running":
            return f"target exited already: {target} is {self.status.get(target)}"
        p = self.sup.procs.get(target)
        if p is None or p.poll() is not None:
            return "retry"  # being restarted: the next incarnation takes it
        if self.ledger.in_flight(target, p.inc):
            return "retry"  # one fault at a time per incarnation: a second kill of a dying process proves nothing
        if isinstance(f, Kill):
            if self.pl is not None and not self.pl.stop_for_kill(p, self.cfg.path(RANKS_FILE)):
                return "retry"  # traced: not while a system call may lack its journal record
            sig = f.signal or signal.SIGKILL
            if not self.sup.kill(target, fault=f.id, sig=sig):
                return "retry"
            self.ledger.kill_sent(f.id, target, p.inc, p.pid, sig=sig)
            return "sent"
        if not self.sup.pause(target, fault=f.id):
            return "retry"
        self.ledger.pause_sent(f.id, target, p.inc, p.pid)
        self.resume_at.append(Resume(now + f.duration_s, target, p.inc, f.id))
        return "sent"

    def _deliver_to_rank(self, f: Timed, rank: int, now: float) -> str:
        """Kill or pause one rank of the consumer group by its pid."""
        if rank >= self.cfg.world_size:
            return f"no such rank: {f.target} with consumer_ranks = {self.cfg.world_size}"
        if self.status.get("consumer") != "running":
            return f"target exited already: consumer is {self.status.get('consumer')}"
        group = self.sup.procs.get("consumer")
        if group is None or group.poll() is not None or self.ledger.in_flight(f.target, group.inc):
            return "retry"
        info = self._rank_info()
        pid = (info.get("pids") or {}).get(str(rank))
        if pid is None or info.get("inc") != group.inc:
            return "retry"
        if isinstance(f, Kill):
            if self.pl is not None and not self.pl.stop_pid_for_kill(int(pid)):
                return "retry"  # traced: not while a system call may lack its journal record
            if not signal_pid(pid, signal.SIGKILL):
                return "retry"
            self.sup.h.emit("kill", target=f.target, target_inc=group.inc, signal=int(signal.SIGKILL), fault=f.id)
            self.ledger.kill_sent(f.id, f.target, group.inc, int(pid), by_pid=True)
            return "sent"
        if not signal_pid(pid, signal.SIGSTOP):
            return "retry"
        self.sup.h.emit("pause", target=f.target, target_inc=group.inc, fault=f.id)
        self.ledger.pause_sent(f.id, f.target, group.inc, int(pid), by_pid=True)
        self.resume_at.append(Resume(now + f.duration_s, f.target, group.inc, f.id, pid))
        return "sent"

    # -- holds at the end -------------------------------------------------------------------
    def _kill_planned_for(self, name: str, inc: int) -> bool:
        """Whether a kill at a progress point is still pending for `name`#`inc` (a single process:
        in a data-parallel group the loop runs in rank 0, not in the process the kill targets)."""
        if (name == "consumer" and self.cfg.world_size > 1) or not self.cfg.extra.get("history", True):
            return False
        return any(isinstance(f, Kill) and f.target == name and f.trigger != "at_s"
                   and (f.incarnation is None or f.incarnation <= inc) for f in self.pending)

    def _release_holds(self, now: float) -> None:
        """A process stopped at its end (`hold`) whose planned kill was sent meanwhile is dead or
        dying; one whose kill can no longer be due (its trigger does not hold at the end) goes on."""
        for name, inc in list(self.holds.items()):
            p = self.sup.procs.get(name)
            if p is None or p.inc != inc or p.code is not None:
                del self.holds[name]  # restarted or ended: the hold is over
                continue
            if not p.is_stopped() or not wrote_event(self.cfg.path("history", f"{name}.jsonl"), inc, "hold"):
                continue
            # Read again: the progress of this round may predate the process's last count, and
            # stopped at its end, its count is final.
            self.progress.update()
            if any(isinstance(f, Kill) and f.target == name and self._due(f, now) for f in self.pending):
                continue  # due, not sent yet (retried): the next round sends it
            del self.holds[name]
            self.sup.cont(name)

    # -- power cuts ---------------------------------------------------------------------
    def _powercut_due(self) -> Optional[Tuple[int, str]]:
        """(fault id, cause) when a process stopped itself at a `powercut` failpoint, else None."""
        if self.pl is None:
            return None
        for name in PIPELINE:
            p = self.sup.procs.get(name)
            if p is None or self.status.get(name) != "running" or p.code is not None:
                continue  # (never poll here: an end is reaped, and reported, at the top of the loop)
            stopped = p.is_stopped()
            if not stopped and name == "consumer" and self.cfg.world_size > 1:
                info = self._rank_info()
                stopped = info.get("inc") == p.inc and any(pid_stopped(x) for x in (info.get("pids") or {}).values())
            if not stopped:
                continue
            fid = stopped_at_powercut(self.cfg.workdir, name, p.inc, self.schedule.failpoints())
            if fid is not None and not self.ledger.settled(fid):
                return fid, f"failpoint in {name}#{p.inc}"
        return None

    def cut_power(self, fid: int, cause: str) -> None:
        """Cut power to every process, settle what the cut killed, restart every process that was running."""
        if self.pl is None:  # cannot happen: a schedule with a power cut always has its PowerLoss
            raise HarnessError(f"fault {fid}: a power cut in a run started without tracing")
        rec = self.pl.cut(self.sup, fid, cause, self.cfg.path(RANKS_FILE))
        for p in self.sup.reap():
            self.ledger.on_exit(p.name, p.inc, p.code)
        self.ledger.land(fid, f"power cut ({cause}): every process reaped dead "
                              f"({', '.join(rec['killed']) or 'none running'}) and the work dir rebuilt "
                              f"({rec['unsynced_writes_dropped']} unsynced writes dropped, "
                              f"{len(rec['files_reverted'])} files reverted)")
        self.say(f"  power cut #{rec['index']} ({cause}): killed {rec['killed']}; {rec['unsynced_writes_dropped']} "
                 f"unsynced writes dropped, {rec['bytes_lost']} bytes lost; restarting")
        if "store_server" in self.sup.procs:
            self.start("store_server")
        for name in PIPELINE:
            if self.status.get(name) == "running":
                self.start(name)
        self.progress = Progress(self.cfg.workdir)  # the channel may be shorter now

    # -- pauses -------------------------------------------------------------------------
    def _schedule_failpoint_resumes(self, now: float) -> None:
        """A process (or rank) stopped at a `pause` failpoint gets its SIGCONT scheduled."""
        for name in PIPELINE:
            p = self.sup.procs.get(name)
            key = (name, p.inc) if p else None
            if not p or key not in self.fp_pause_s or self.ledger.in_flight(name, p.inc):
                continue  # (a timed pause in flight is resumed by its own fault)
            if any(it.target.startswith(name) and it.inc == p.inc for it in self.resume_at):
                continue  # this stop's resume is scheduled already
            if p.is_stopped():
                self.resume_at.append(Resume(self._next_stop_end(key, now), name, p.inc, None))
            elif name == "consumer" and self.cfg.world_size > 1:
                # A `pause` failpoint inside one rank stops that rank, not the group.
                info = self._rank_info()
                for rank, pid in sorted((info.get("pids") or {}).items()):
                    if info.get("inc") == p.inc and pid_stopped(pid):
                        self.resume_at.append(Resume(self._next_stop_end(key, now), f"consumer.rank{rank}", p.inc,
                                                     None, pid))

    def _next_stop_end(self, key: Tuple[str, int], now: float) -> float:
        n = self.fp_stops[key] = self.fp_stops.get(key, 0) + 1
        durations = self.fp_pause_s[key]
        return now + durations[min(n, len(durations)) - 1]

    def _resume_due(self, now: float) -> None:
        for item in list(self.resume_at):
            if item.at > now:
                continue
            self.resume_at.remove(item)
            if item.pid is not None:  # one rank: SIGCONT by pid
                signal_pid(item.pid, signal.SIGCONT)
                self.sup.h.emit("cont", target=item.target, target_inc=item.inc, fault=item.fault)
                if item.fault is not None:
                    self.ledger.resume_sent(item.fault)
                continue
            p = self.sup.procs.get(item.target)
            if p and p.inc == item.inc and self.sup.cont(item.target, fault=item.fault) and item.fault is not None:
                self.ledger.resume_sent(item.fault)


def wrote_event(history_file: str, inc: int, ev: str) -> bool:
    """Whether incarnation `inc` wrote an `ev` event into this process history file."""
    try:
        return any(e.get("ev") == ev and e.get("inc") == inc for e in read_events_file(history_file))
    except (OSError, HistoryError):
        return False


def signal_pid(pid: int, sig: int) -> bool:
    """Signal one pid; False when it is gone (ESRCH) or not ours (EPERM)."""
    try:
        os.kill(int(pid), sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False
