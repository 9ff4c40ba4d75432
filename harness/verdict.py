"""The verdict: does a run's result match what its scenario expects?

Pure function of (property results, outcome, scenario expectation):

1. expected valid (`violates = []`): the outcome is one of `expect.outcome`
   and no property is violated (not-applicable is fine);
2. expected violation (`violates = ["P1", "P2"]`, a known-bad configuration):
   at least one of the listed properties is violated. A known-bad run that
   passes is itself unexpected: the harness failed to catch the bug.
3. inconclusive: some planned faults did not land (`faults.missed`) and the
   scenario does not set `expect.allow_missed_faults = true`. The run tested
   less than it was asked to, so it is neither a pass nor a failure:
   `as_expected` is False and `inconclusive` is True (exit 3, the harness's
   own failure). A run that violates a property it was not expected to is
   still unexpected, missed faults or not: the violation is real.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional


def verdict_word(verdict: Dict[str, Any]) -> str:
    if verdict.get("inconclusive"):
        return "INCONCLUSIVE"
    return "AS EXPECTED" if verdict.get("as_expected") else "UNEXPECTED"


def verdict_line(verdict: Dict[str, Any], outcome: str) -> str:
    """One line: the verdict word, the outcome, what was violated and what was expected."""
    exp = ("violation of " + " or ".join(verdict["expected"]["violates"])) if verdict["expected"]["violates"] else \
        "valid, outcome " + " | ".join(verdict["expected"]["outcome"])
    return (f"{verdict_word(verdict)}: outcome {outcome}, violated {', '.join(verdict['violated']) or 'none'} "
            f"(expected {exp})")


def judge(properties: Dict[str, Dict[str, Any]], outcome: str, expect: Dict[str, Any],
          faults: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
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
    inconclusive = False
    missed = list((faults or {}).get("missed") or [])
    if missed and not expect.get("allow_missed_faults", False) and (ok or wanted):
        # An unexpected violation stays unexpected; otherwise the run proves nothing.
        inconclusive, ok = True, False
        reasons.append(f"{len(missed)} of {faults.get('planned')} planned faults did not land "
                       f"(first: fault {missed[0]['index']} {missed[0]['kind']} {missed[0]['target']}: "
                       f"{missed[0]['reason']})")
    return {"as_expected": ok, "inconclusive": inconclusive, "violated": violated, "reasons": reasons,
            "expected": {"violates": wanted, "outcome": list(expect.get("outcome", []))}}
