"""The fault ledger: which planned faults were seen to land, and why the others missed.

A fault counts only when its effect is observed, never when the harness merely
tried to send it:

1. a kill of `NAME` lands when the reaped exit status of the incarnation it
   was aimed at shows death by that signal (`-SIGKILL`); a kill of one rank of
   a data-parallel group (`consumer.rankN`, not the supervisor's child) lands
   when that pid is seen gone or a zombie;
2. a pause lands when the target is seen stopped (state `T` in
   /proc/PID/stat) and then, after SIGCONT, seen running again;
3. a failpoint lands when the targeted incarnation records it in its history
   (`ev = "failpoint"` with that point, in that rank when one is named);
4. a power cut (a timed `powercut`, or a failpoint with action `powercut`)
   lands when every process of the run was reaped dead and the work dir was
   rebuilt: the runner calls `land` once `PowerLoss.cut` returned.

Every other planned fault is `missed`, with the reason (the target had exited
already, was never seen stopped, the trigger never held, the point was never
reached, ...). The ledger is pure bookkeeping; the runner feeds it.
"""

from __future__ import annotations

import signal
import time
from typing import Any, Dict, Iterable, List, Optional

from reference_impl.procutil import proc_state as pid_state

from ..faults import Failpoint, Fault, Timed

#: How long a signalled target may take to show the effect before the fault is missed.
CONFIRM_S = 10.0


def _where(f: Fault) -> str:
    if isinstance(f, Timed):
        return f"{f.trigger}={f.at}"
    if isinstance(f, Failpoint):
        return f"{f.point} hit {f.hit} inc {f.incarnation}"
    return "?"


class FaultLedger:
    def __init__(self, faults: Iterable[Fault]) -> None:
        self.faults = {int(f.id): f for f in faults}
        self.landed: Dict[int, str] = {}  # id -> how it was seen
        self.missed: Dict[int, str] = {}  # id -> reason
        # Awaiting confirmation: id -> dict(kind, name, inc, pid, sig, phase, since)
        self.awaiting: Dict[int, Dict[str, Any]] = {}

    # -- outcomes -------------------------------------------------------------
    def land(self, fid: int, how: str) -> None:
        if fid not in self.landed and fid not in self.missed:
            self.landed[fid] = how
        self.awaiting.pop(fid, None)

    def miss(self, fid: int, reason: str) -> None:
        if fid not in self.landed and fid not in self.missed:
            self.missed[fid] = reason
        self.awaiting.pop(fid, None)

    def settled(self, fid: int) -> bool:
        return fid in self.landed or fid in self.missed

    # -- timed faults ---------------------------------------------------------
    def kill_sent(self, fid: int, name: str, inc: int, pid: int, sig: int = signal.SIGKILL,
                  by_pid: bool = False) -> None:
        self.awaiting[fid] = {"kind": "kill", "name": name, "inc": inc, "pid": pid, "sig": int(sig),
                              "by_pid": by_pid, "since": time.monotonic()}

    def pause_sent(self, fid: int, name: str, inc: int, pid: int, by_pid: bool = False) -> None:
        self.awaiting[fid] = {"kind": "pause", "name": name, "inc": inc, "pid": pid, "phase": "stop",
                              "by_pid": by_pid, "since": time.monotonic()}

    def resume_sent(self, fid: int) -> None:
        a = self.awaiting.get(fid)
        if a is not None and a["kind"] == "pause":
            a["phase"] = "cont"
            a["since"] = time.monotonic()

    def in_flight(self, name: str, inc: int) -> bool:
        """A kill or pause aimed at this incarnation is not settled yet: another fault must wait for the next."""
        return any(a["name"] == name and a["inc"] == inc for a in self.awaiting.values())

    def on_exit(self, name: str, inc: int, code: Optional[int]) -> None:
        """A supervised process was reaped: settle the kills and pauses aimed at it."""
        for fid, a in list(self.awaiting.items()):
            if a["name"] != name or a["inc"] != inc or a.get("by_pid"):
                continue
            if a["kind"] == "kill":
                if code == -a["sig"]:
                    self.land(fid, f"{name}#{inc} reaped, killed by signal {a['sig']}")
                else:
                    self.miss(fid, f"{name}#{inc} exited with code {code} before the signal took effect")
            elif a["phase"] == "stop":
                self.miss(fid, f"{name}#{inc} exited (code {code}) before it was seen stopped")
            else:  # seen stopped; the resume is moot once it is gone
                self.land(fid, f"{name}#{inc} seen stopped, then exited (code {code})")

    def poll(self, now: Optional[float] = None) -> List[int]:
        """Check /proc for pauses and rank kills; returns the pause ids newly seen stopped."""
        now = time.monotonic() if now is None else now
        newly_stopped = []
        for fid, a in list(self.awaiting.items()):
            state = pid_state(a["pid"])
            if a["kind"] == "kill":
                if a.get("by_pid") and state in (None, "Z", "X"):
                    self.land(fid, f"{a['name']} pid {a['pid']} gone after signal {a['sig']}")
                elif now - a["since"] > CONFIRM_S and a.get("by_pid"):
                    self.miss(fid, f"{a['name']} pid {a['pid']} still alive {CONFIRM_S:.0f} s after the signal")
                continue
            if a["phase"] == "stop":
                if state == "T":
                    a["phase"] = "stopped"
                    newly_stopped.append(fid)
                elif state in (None, "Z", "X") and a.get("by_pid"):
                    self.miss(fid, f"{a['name']} pid {a['pid']} exited before it was seen stopped")
                elif now - a["since"] > CONFIRM_S:
                    self.miss(fid, f"{a['name']} never seen stopped within {CONFIRM_S:.0f} s of SIGSTOP")
            elif a["phase"] == "cont":
                if state not in ("T", "t"):
                    self.land(fid, f"{a['name']} seen stopped, then running again after SIGCONT")
                elif now - a["since"] > CONFIRM_S:
                    self.miss(fid, f"{a['name']} still stopped {CONFIRM_S:.0f} s after SIGCONT")
        return newly_stopped

    # -- the end of a run -----------------------------------------------------
    def finish(self, events: List[Dict[str, Any]], end_reason: str) -> None:
        """Settle what is left: failpoints from the histories, the rest missed with a reason."""
        self.poll()
        for fid, f in self.faults.items():
            if self.settled(fid):
                continue
            if isinstance(f, Failpoint):
                if _failpoint_recorded(f, events):
                    self.land(fid, f"{f.target}#{f.incarnation} recorded failpoint {f.point}")
                else:
                    self.miss(fid, f"failpoint {f.point} ({f.action}, hit {f.hit}) not reached in "
                                   f"{f.target}#{f.incarnation}")
                continue
            a = self.awaiting.get(fid)
            if a is None:
                self.miss(fid, f"never delivered: {end_reason}")
            elif a["kind"] == "kill":
                self.miss(fid, f"{a['name']}#{a['inc']} not seen dead after signal {a['sig']}")
            elif a["phase"] == "stop":
                self.miss(fid, f"{a['name']} never seen stopped")
            else:
                self.land(fid, f"{a['name']} seen stopped; the run ended before it was seen resumed")

    def summary(self) -> Dict[str, Any]:
        missed = []
        for fid, reason in sorted(self.missed.items()):
            f = self.faults[fid]
            missed.append({"index": fid, "kind": f.kind, "target": f.target, "at": _where(f),
                           "reason": reason})
        return {"planned": len(self.faults), "landed": len(self.landed), "missed": missed}


def _failpoint_recorded(f: Failpoint, events: List[Dict[str, Any]]) -> bool:
    target, inc, point, rank = f.target, f.incarnation, f.point, f.rank
    for e in events:
        if e.get("ev") != "failpoint" or e.get("point") != point or e.get("inc") != inc:
            continue
        proc = str(e.get("proc", ""))
        if proc == target or proc.startswith(target + "."):
            if rank is None or proc == f"{target}.rank{rank}":
                return True
    return False
