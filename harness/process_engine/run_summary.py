"""Figures of a finished run for its result.json: incarnations per process, the witness's counts."""

from __future__ import annotations

from typing import Any, Dict, List, Optional


def incarnations(events: List[Dict[str, Any]]) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for e in events:
        if e.get("ev") == "spawn":
            out[e["target"]] = max(out.get(e["target"], 0), e["target_inc"] + 1)
    return out


def witness_summary(final: Dict[str, Any]) -> Optional[Dict[str, int]]:
    w = final.get("witness")
    if w is None:
        return None
    out: Dict[str, int] = {}
    for v in w:
        k = str(int(round(v)))
        out[k] = out.get(k, 0) + 1
    return out
