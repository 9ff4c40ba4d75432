"""What one simulated schedule gave (`SimResult`): its outcome, violations, faults and figures."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from ..faults import Fault, Kill
from ..faults.simulated import Op, format_op
from ..run_plumbing import verdict
from .observation import Violation


@dataclass
class SimResult:
    ops: List[Op]
    outcome: str
    violations: List[Violation]
    faults: List[Fault]  # the faults it fired, as process-engine faults
    trace: List[str]  # what each effective fault did
    steps: int
    events: int
    error: Optional[str] = None
    properties: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    powerloss: List[Dict[str, Any]] = field(default_factory=list)  # PowercutStats.as_dict() per power cut
    coverage: Dict[str, Any] = field(default_factory=dict)  # harness.coverage.coverage_of of this schedule
    workload: Dict[str, Any] = field(default_factory=dict)  # the workload it ran (defaults merged)

    @property
    def violated(self) -> List[str]:
        return sorted({v.prop for v in self.violations})

    @property
    def ledger_lost(self) -> bool:
        return any(isinstance(f, Kill) and f.target == "store_server" for f in self.faults)

    @property
    def powercuts(self) -> List[Fault]:
        """The power cuts this schedule made (timed, or at a failpoint)."""
        return [f for f in self.faults if f.kind == "powercut" or getattr(f, "action", None) == "powercut"]

    @property
    def acceptable_outcomes(self) -> List[str]:
        """Completion; after a lost volatile ledger, also the declared fail-closed stop."""
        return ["completed", "fail_closed"] if self.ledger_lost else ["completed"]

    def failed(self, expect: Optional[Sequence[str]] = None, outcomes: Sequence[str] = ("completed",)) -> bool:
        """A failure, judged by `harness.verdict.judge`: with `expect` (properties), one of them
        violated (the bug was found); else any violation, an error, or an outcome this schedule
        does not allow (see `acceptable_outcomes`; `outcomes` is accepted for the callers' sake
        and not used: the schedule decides)."""
        if isinstance(expect, str):
            expect = [expect]
        v = verdict({p: {"valid": False} for p in self.violated}, self.outcome, expect or (),
                    self.acceptable_outcomes)
        return v["as_expected"] if expect else not v["as_expected"]

    def summary(self) -> Dict[str, Any]:
        return {"ops": [list(o) for o in self.ops], "schedule": [format_op(o) for o in self.ops],
                "outcome": self.outcome, "violated": self.violated,
                "violations": [v.to_dict() for v in self.violations[:20]], "faults": [f.to_dict() for f in self.faults],
                "trace": self.trace, "steps": self.steps, "events": self.events, "error": self.error,
                **({"powerloss": self.powerloss} if self.powerloss else {})}
