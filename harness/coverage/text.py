"""Coverage as text: the lines of report.md, simulate's output and the campaign summary."""

from __future__ import annotations

from typing import Any, Dict, List

from .phases import PHASES
from .sometimes import CONDITIONS


def failpoint_table(cov: Dict[str, Any]) -> List[str]:
    out = ["| failpoint | reached | fired |", "|---|---|---|"]
    for p, d in sorted((cov.get("failpoints") or {}).items()):
        out.append(f"| `{p}` | {d.get('reached', 0)} | {d.get('fired', 0)} |")
    return out


def fault_table(cov: Dict[str, Any]) -> List[str]:
    faults = cov.get("faults") or {}
    if not faults:
        return ["No fault landed."]
    phases = [ph for ph in PHASES if any(ph in by for by in faults.values())]
    out = ["| fault | " + " | ".join(p.replace("_", " ") for p in phases) + " | total |",
           "|---|" + "---|" * (len(phases) + 1)]
    for kind, by in sorted(faults.items()):
        out.append(f"| {kind} | " + " | ".join(str(by.get(ph, 0)) for ph in phases) + f" | {sum(by.values())} |")
    return out


def sometimes_table(cov: Dict[str, Any]) -> List[str]:
    seen = cov.get("sometimes") or {}
    out = ["| sometimes-condition | seen | meaning |", "|---|---|---|"]
    for name, meaning in CONDITIONS.items():
        out.append(f"| {name} | {seen.get(name, 0)} | {meaning} |")
    return out


def markdown(cov: Dict[str, Any], gaps: List[str] = ()) -> List[str]:
    """The coverage section of a Markdown report."""
    out = [f"Runs: {cov.get('runs', 1)}.", ""]
    for g in gaps:
        out.append(f"- **gap**: {g}")
    if gaps:
        out.append("")
    out += fault_table(cov) + [""] + sometimes_table(cov) + [""] + failpoint_table(cov)
    return out


def one_line(cov: Dict[str, Any]) -> str:
    """A short summary: faults by kind, conditions seen, failpoints reached."""
    fps = cov.get("failpoints") or {}
    reached = sum(1 for d in fps.values() if d.get("reached"))
    fired = sum(1 for d in fps.values() if d.get("fired"))
    faults = ", ".join(f"{sum(by.values())} {k}" for k, by in sorted((cov.get("faults") or {}).items())) or "none"
    seen = ", ".join(f"{k} {v}" for k, v in (cov.get("sometimes") or {}).items() if v) or "none"
    return (f"faults landed: {faults}; failpoints reached {reached}/{len(fps)}, fired at {fired}; "
            f"sometimes seen: {seen}")
