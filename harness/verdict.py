"""The verdict: does a run's result match what its scenario expects?

Pure function of (property results, outcome, scenario expectation):

1. expected valid (`violates = []`): the outcome is one of `expect.outcome`
   and no property is violated (not-applicable is fine);
2. expected violation (`violates = ["P1", "P2"]`, a known-bad configuration):
   at least one of the listed properties is violated. A known-bad run that
   passes is itself unexpected: the harness failed to catch the bug.
"""

from __future__ import annotations

from typing import Any, Dict, List


def judge(properties: Dict[str, Dict[str, Any]], outcome: str, expect: Dict[str, Any]) -> Dict[str, Any]:
    violated = sorted(p for p, r in properties.items() if r.get("valid") is False)
    reasons: List[str] = []
    wanted = list(expect.get("violates") or [])
    if wanted:
        hit = [p for p in wanted if p in violated]
        ok = bool(hit)
        if not ok:
            reasons.append(f"expected a violation of {' or '.join(wanted)}, but none was found "
                           f"(violated: {', '.join(violated) or 'none'}; outcome {outcome})")
    else:
        ok = True
        if outcome not in expect.get("outcome", ["completed"]):
            ok = False
            reasons.append(f"outcome {outcome!r} is not an expected outcome ({', '.join(expect['outcome'])})")
        if violated:
            ok = False
            reasons.append(f"violated {', '.join(violated)}")
    return {"as_expected": ok, "violated": violated, "reasons": reasons,
            "expected": {"violates": wanted, "outcome": list(expect.get("outcome", []))}}
