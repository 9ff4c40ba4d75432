"""Results of a certification: tiers, counterexamples, the certificate files."""

from __future__ import annotations

import json
import os
import platform
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

from . import tiers as _tiers

PASSED = "passed"
FAILED = "failed"
NOT_APPLICABLE = "not applicable"
NOT_RUN = "not run"  # applicable but could not run: counts as a failure
NOT_SELECTED = "not selected"  # left out with --tiers: neither pass nor fail



@dataclass
class Budget:
    name: str
    t1_examples: int
    t1_steps: int
    t2_scale: float
    t3_crashes: int
    t4_seeds: int
    t1_shrink_s: float = 20.0


BUDGETS = {
    "quick": Budget("quick", t1_examples=100, t1_steps=30, t2_scale=1.0, t3_crashes=200, t4_seeds=1, t1_shrink_s=20),
    "standard": Budget("standard", t1_examples=300, t1_steps=40, t2_scale=2.0, t3_crashes=400, t4_seeds=2,
                       t1_shrink_s=60),
    "thorough": Budget("thorough", t1_examples=1000, t1_steps=60, t2_scale=5.0, t3_crashes=1500, t4_seeds=4,
                       t1_shrink_s=180),
}


@dataclass
class Counterexample:
    tier: int
    property: str
    message: str
    steps: List[str] = field(default_factory=list)  # minimal step list / the events that show it
    reproduce: Optional[str] = None
    detail: Dict[str, Any] = field(default_factory=dict)
    guarantee: str = ""  # the violated guarantee, one plain sentence
    cause: str = ""  # the likely cause, where the pattern is known
    reproducer: Optional[str] = None  # repro_<n>.py in the certificate folder (backend package only)


@dataclass
class TierResult:
    tier: int
    status: str
    reason: str = ""
    properties: List[str] = field(default_factory=list)
    counters: Dict[str, Any] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    counterexamples: List[Counterexample] = field(default_factory=list)
    duration_s: float = 0.0
    #: the tier could not run through the harness's own fault (never counted against the backend)
    harness_error: bool = False

    @property
    def name(self) -> str:
        return _tiers.name_of(self.tier)

    @property
    def failing(self) -> bool:
        """Failing through the backend (a harness error is not the backend's failure)."""
        return self.status in (FAILED, NOT_RUN) and not self.harness_error

    def failed_properties(self) -> List[str]:
        return sorted({c.property for c in self.counterexamples})


@dataclass
class Certificate:
    backend: str
    spec: Optional[str]
    profile: str
    profile_source: str
    adapter: Optional[str]
    factory_call: str
    budget: str
    seed: int
    command: str
    tiers: List[TierResult] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    started_at: str = ""
    duration_s: float = 0.0
    report_dir: Optional[str] = None
    records: Dict[str, Any] = field(default_factory=dict)  # the record types the refs were built from
    call_timeout_s: float = 0.0
    #: a finding about the whole store that stopped the tiers: {"kind": "retains_nothing"|"liveness", "message"}
    finding: Optional[Dict[str, Any]] = None
    #: the server a networked backend was judged on (software, version, persistence settings), or None
    store_server: Optional[Dict[str, Any]] = None

    def tier(self, n: int) -> TierResult:
        for t in self.tiers:
            if t.tier == n:
                return t
        raise KeyError(n)

    @property
    def exit_code(self) -> int:
        """0 certified (or the selected tiers passed), 1 the backend failed, 3 the harness could not finish."""
        if self.finding or any(t.failing for t in self.tiers):
            return 1
        return 3 if any(t.harness_error for t in self.tiers) else 0

    @property
    def verdict_code(self) -> str:
        """certified | rejected | retains_nothing | liveness | partial (tiers left out)."""
        if self.finding:
            return str(self.finding.get("kind", "rejected"))
        if any(t.failing for t in self.tiers):
            return "rejected"
        if any(t.harness_error for t in self.tiers):
            return "harness_error"
        if any(t.status == NOT_SELECTED for t in self.tiers):
            return "partial"
        return "certified"

    @property
    def verdict(self) -> str:
        if self.finding:
            kind, message = self.finding.get("kind", "rejected"), self.finding.get("message", "")
            if kind == "retains_nothing":
                return f"REJECTED: retains nothing ({message})"
            return f"REJECTED: {kind} ({message})"
        if any(t.failing for t in self.tiers):
            bad = ", ".join(f"tier {t.tier} {t.name} {t.status}" for t in self.tiers if t.failing)
            return f"REJECTED ({bad})"
        if any(t.harness_error for t in self.tiers):
            bad = ", ".join(f"tier {t.tier} {t.name}" for t in self.tiers if t.harness_error)
            return f"NOT CERTIFIED: harness error in {bad} (not the backend's failure; see the tier's reason)"
        skipped = [t for t in self.tiers if t.status == NOT_SELECTED]
        if skipped:
            return "PASSED the selected tiers (not a full certificate: tier(s) " + ", ".join(
                str(t.tier) for t in skipped
            ) + " not selected)"
        return f"CERTIFIED ({self.profile} profile)"

    def to_json(self) -> Dict[str, Any]:
        d = asdict(self)
        d["verdict"] = self.verdict
        d["verdict_code"] = self.verdict_code
        d["exit_code"] = self.exit_code
        for t, td in zip(self.tiers, d["tiers"]):
            td["name"] = t.name
        d["environment"] = {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        }
        return d


def _bullets(L: List[str], title: str, items: List[str]) -> None:
    """A `## title` section listing `items`, one bullet each; nothing when there are none."""
    if items:
        L.append(f"## {title}")
        L.append("")
        for x in items:
            L.append(f"- {x}")
        L.append("")


def _one_line(x: Any) -> str:
    """Any value a finding carries, as text for one table cell or heading."""
    return (x if isinstance(x, str) else repr(x)).replace("\n", " ").replace("|", "\\|")


def _lines(items: Any) -> List[str]:
    """A finding's steps (or any value) as text lines."""
    if isinstance(items, str):
        return items.splitlines()
    try:
        return [ln for x in items for ln in (x if isinstance(x, str) else repr(x)).splitlines()]
    except TypeError:
        return [repr(items)]


def render_md(cert: Certificate) -> str:
    L: List[str] = []
    L.append(f"# MetadataStore certificate: `{cert.backend}`")
    L.append("")
    L.append(f"**Verdict: {cert.verdict}**")
    L.append("")
    L.append("| | |")
    L.append("|---|---|")
    L.append(f"| backend | `{cert.spec or cert.backend}` |")
    L.append(f"| factory | {cert.factory_call} |")
    L.append(f"| profile | {cert.profile} ({cert.profile_source}) |")
    L.append(f"| adapter | {cert.adapter or 'none (the store has commit_samples)'} |")
    if cert.records:
        L.append(f"| records | `{cert.records.get('SampleRef')}`"
                 + "".join(f", `{n}`" for n in cert.records.get("nested", []))
                 + f" (found by {cert.records.get('found_by')}) |")
    if cert.store_server:
        s = cert.store_server
        L.append(f"| store server | {s.get('software')} {s.get('version')}, persistence {s.get('persistence')} "
                 f"(appendonly {s.get('appendonly')}, appendfsync {s.get('appendfsync')}, save {s.get('save')}), "
                 f"started by the harness |")
    L.append(f"| call timeout | {cert.call_timeout_s:g} s per construction and store call |")
    L.append(f"| budget | {cert.budget} |")
    L.append(f"| seed | {cert.seed} |")
    L.append(f"| started | {cert.started_at} |")
    L.append(f"| duration | {cert.duration_s:.1f} s |")
    L.append(f"| command | `{cert.command}` |")
    L.append("")
    L.append("## Tiers")
    L.append("")
    L.append("| tier | status | time | tried | properties |")
    L.append("|---|---|---|---|---|")
    for t in cert.tiers:
        tried = ", ".join(f"{k}={_one_line(v)}" for k, v in (t.counters or {}).items()
                          if not isinstance(v, (dict, list)))
        status = _one_line(t.status) + (f": {_one_line(t.reason)}" if t.reason else "")
        L.append(
            f"| {t.tier} {t.name} | {status} | {float(t.duration_s or 0):.1f} s | {tried or '-'} | "
            f"{', '.join(map(_one_line, t.properties)) or '-'} |"
        )
    L.append("")
    all_warn = list(map(_one_line, cert.warnings)) + [f"tier {t.tier}: {_one_line(w)}" for t in cert.tiers
                                                      for w in t.warnings]
    _bullets(L, "Warnings", all_warn)
    _bullets(L, "Notes", [f"tier {t.tier}: {_one_line(n)}" for t in cert.tiers for n in t.notes])
    cex = [c for t in cert.tiers for c in t.counterexamples]
    if cex:
        L.append("## Counterexamples")
        L.append("")
        for i, c in enumerate(cex, 1):
            L.append(f"### {i}. tier {c.tier} ({_tiers.name_of(c.tier)}), property `{_one_line(c.property)}`")
            L.append("")
            if c.guarantee:
                L.append(f"**Guarantee:** {c.guarantee}")
                L.append("")
            L.extend(_lines(c.message))
            L.append("")
            if c.cause:
                L.append(f"**Likely cause:** {c.cause}")
                L.append("")
            if c.reproducer:
                L.append(f"**Reproducer:** `python {c.reproducer}` (needs only the backend's package; "
                         "exits 1 while the bug is there)")
                L.append("")
            if c.steps:
                L.append(_tiers.steps_heading(c.tier))
                L.append("")
                L.append("```")
                L.extend(_lines(c.steps))
                L.append("```")
                L.append("")
            if c.reproduce:
                L.append(f"Reproduce: `{c.reproduce}`")
                L.append("")
    return "\n".join(L) + "\n"


def write(cert: Certificate, report_dir: str) -> None:
    os.makedirs(report_dir, exist_ok=True)
    cert.report_dir = report_dir
    tmp = os.path.join(report_dir, "certificate.json.tmp")
    with open(tmp, "w") as f:
        json.dump(cert.to_json(), f, indent=2, sort_keys=False, default=repr, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, os.path.join(report_dir, "certificate.json"))
    with open(os.path.join(report_dir, "certificate.md"), "w") as f:
        f.write(render_md(cert))


def sanitise(text: str) -> str:
    """A file-name-safe label for a backend spec."""
    out = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    return out[:80] or "backend"


def make_report_dir(reports_dir: str, label: str) -> str:

    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = os.path.join(reports_dir, f"certify-{sanitise(label)}-{stamp}")
    os.makedirs(reports_dir, exist_ok=True)
    path, n = base, 1
    while True:
        try:
            os.mkdir(path, 0o700)
            os.chmod(path, 0o700)  # (private: it may keep a store's working files)
            return path
        except FileExistsError:
            n += 1
            path = f"{base}-{n}"
