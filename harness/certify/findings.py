"""Findings a maintainer can act on: the guarantee, the likely cause, a reproducer.

For each counterexample of a certificate (`annotate`):
* `guarantee`: the violated guarantee in one plain sentence (`GUARANTEES`);
* `cause`: the likely cause where the pattern is known (`likely_cause`);
* `reproducer`: `repro_<n>.py` in the certificate folder, a standalone script
  that imports only the backend's package (never the harness) and exits 1
  while the bug is there, 0 once it is fixed. Written for every tier 1
  counterexample (the minimal steps replayed next to a small model), P5 torn
  marker reads (an acker against a reader) and liveness (a call that does not
  return); the other tier 2 and 3 properties name the certify command that
  reproduces them.

Store-level findings stop the tiers (`store_level`): a constructor that does
not return (liveness), and a store that retains nothing.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

from .certificate import Certificate, Counterexample
from .templates import LIVENESS_TEMPLATE, P5_TEMPLATE, TIER1_TEMPLATE

GUARANTEES: Dict[str, str] = {
    "P4 dedup": "Exactly one commit of a sample id reports it fresh, however many processes commit it at once.",
    "P5 ack atomicity": "Every durable_marker() read shows each ack whole or not at all, with global_step and "
                        "optimizer_durable of the newest ack it shows.",
    "lost-update": "Every ack and commit that returned is still there at the end.",
    "visibility": "A long-lived instance sees what other processes committed and acked.",
    "all_committed_ids order": "all_committed_ids() lists every committed id once, in first-commit order.",
    "freshness": "commit_sample/commit_samples report True exactly for an id never committed before.",
    "freshness (P4)": "commit_sample/commit_samples report True exactly for an id never committed before.",
    "round-trip": "get_committed(id) returns the first committed ref, equal field by field.",
    "is_committed": "is_committed(id) is True exactly for committed ids.",
    "committed_count": "committed_count() is the number of distinct committed ids.",
    "durable_marker": "durable_marker() holds exactly the acked ids, the last non-None global_step and "
                      "the last optimizer_durable flag.",
    "global_step": "global_step is the last non-None step acknowledged; an ack with global_step=None keeps it.",
    "optimizer_durable": "optimizer_durable is the flag of the last ack.",
    "reopen": "Closing and reopening the store on the same path keeps every commit and ack that returned.",
    "reopen (P6)": "Closing and reopening the store on the same path keeps every commit and ack that returned.",
    "P6 durability": "A commit or ack that returned survives a SIGKILL of the process.",
    "reopenable": "The store reopens after its process was killed.",
    "liveness": "Every construction and store call returns within the call timeout.",
    "exception": "Store calls on valid input return instead of raising.",
}

CAUSES = [
    ("P5 ack atomicity", ("mixes two ack transactions", "of that ack's"),
     "the marker and the acked set are read outside one transaction (durable_marker reads them in two "
     "statements, and an ack commits between them)"),
    ("P5 ack atomicity", ("partly visible", "half", "prefix"),
     "the acked ids and the marker are written in more than one transaction"),
    ("P4 dedup", (), "the check for an existing id and the insert are two steps, not one atomic insert-or-ignore"),
    ("lost-update", (), "the marker or the acked set is read, modified and written back outside one transaction"),
    ("visibility", (), "an instance caches what it read and does not re-read what other processes wrote"),
    ("all_committed_ids order", (), "ids are returned from an unordered structure (a set, or a SELECT without "
                                    "ORDER BY the insertion order)"),
    ("global_step", ("None",), "an ack with global_step=None overwrites the stored step instead of keeping it"),
    ("round-trip", (), "fields are dropped or converted when the ref is serialised and read back"),
    ("reopen", (), "state is kept in memory and never written where a reopened store reads it"),
    ("P6 durability", (), "a call returns before its write is durable (buffered or not synced)"),
    ("liveness", (), "the call waits on something that never happens (a lock, a socket, a loop)"),
]


def likely_cause(c: Counterexample) -> str:
    text = f"{c.message} " + " ".join(map(str, list(c.steps)[:5]))
    for prop, words, cause in CAUSES:
        if c.property.startswith(prop) and (not words or any(w in text for w in words)):
            return cause
    return ""


def _open_code(target) -> Optional[str]:
    if not target.spec:
        return None
    return f"FACTORY = {target.spec!r}\nKIND = {target.kind!r}\n"


def _record_classes(cert: Certificate):
    names = [cert.records.get("SampleRef")] + list(cert.records.get("nested", []))
    return [n for n in names if n]


def write_reproducer(report_dir: str, n: int, body: str) -> str:
    path = os.path.join(report_dir, f"repro_{n}.py")
    with open(path, "w") as f:
        f.write(body)
    return path


def p5_reproducer(target, profile: str) -> Optional[str]:
    head = _open_code(target)
    if head is None:
        return None
    return P5_TEMPLATE.replace("#HEAD#", head + f"PROFILE = {profile!r}\n")


def liveness_reproducer(target, hang: Dict[str, Any], records: list, timeout_s: float) -> Optional[str]:
    head = _open_code(target)
    if head is None:
        return None
    head += (f"CALL = {hang.get('call', 'constructor')!r}\nARGS = {hang.get('args_full', hang.get('args', ''))!r}\n"
             f"RECORDS = {records!r}\nTIMEOUT_S = {max(timeout_s, 1.0)!r}\n")
    return LIVENESS_TEMPLATE.replace("#HEAD#", head)


def tier1_program(calls) -> list:
    """The tier 1 rule calls as reproducer lines (refs by their repr, ack picks resolved to ids)."""
    order, seen, lines = [], set(), []

    def add(refs):
        for r in refs:
            if r.sample_id not in seen:
                seen.add(r.sample_id)
                order.append(r.sample_id)

    for name, kw in calls:
        if name == "commit_sample":
            lines.append(f"commit_sample({kw['ref']!r})")
            add([kw["ref"]])
        elif name == "commit_samples":
            lines.append("commit_samples([" + ", ".join(repr(r) for r in kw["refs"]) + "])")
            add(kw["refs"])
        elif name == "record_train_ack":
            ids = sorted({order[p % len(order)] for p in kw["picks"]}) if order else []
            lines.append(f"record_train_ack({ids!r}, {kw['global_step']!r}, {kw['optimizer_durable']!r})")
        elif name == "lookup":
            lines.append(f"lookup({kw['sid']!r})")
        elif name == "reopen":
            lines.append("reopen()")
    return lines


def tier1_reproducer(target, program: list, records: list) -> Optional[str]:
    head = _open_code(target)
    if head is None:
        return None
    head += f"RECORDS = {records!r}\nSTEPS = [\n" + "".join(f"    {ln!r},\n" for ln in program) + "]\n"
    return TIER1_TEMPLATE.replace("#HEAD#", head)


def liveness_counterexample(tier: int, r: Dict[str, Any], ctx) -> Counterexample:
    hang = r.get("hang") or {}
    msg = (f"{hang.get('call')}({hang.get('args', '')}) did not return within {hang.get('timeout_s', 0):g} s "
           f"(stopped after {hang.get('seconds', 0):g} s)")
    return Counterexample(tier, "liveness", msg, steps=[msg], reproduce=ctx.reproduce(tier), detail={"hang": hang})


def child_failure(tier: int, r: Dict[str, Any], ctx) -> Counterexample:
    """A child that brought back no value, as the backend's counterexample (detail["reason"]
    says what happened in a few words); a failure that is the harness's own raises RuntimeError."""
    if r.get("hang"):
        cex = liveness_counterexample(tier, r, ctx)
        cex.detail["reason"] = "a store call did not return"
        return cex
    if r.get("hung"):
        return Counterexample(tier, "liveness", r["error"], reproduce=ctx.reproduce(tier),
                              detail={"reason": "the tier did not finish (a store call hangs?)"})
    if r.get("died") and r["died"]["in_store"]:
        return Counterexample(tier, "exception", r["error"], reproduce=ctx.reproduce(tier),
                              detail={"reason": "the process running the store died", "death": r["died"]})
    raise RuntimeError(r["error"] + "\n" + r.get("traceback", ""))


def store_level(target, ctx, cert: Certificate, report_dir: Optional[str]) -> str:
    """A finding about the whole store, as the reason the tiers do not run; '' if none."""
    probe = target.probe or {}
    if probe.get("hang"):
        hang = probe["hang"]
        what = (target.construct_call() if hang.get("call") == "constructor"
                else f"{hang.get('call')}({hang.get('args')})")
        msg = f"{what} did not return within {hang.get('timeout_s', 0):g} s (the call timeout)"
        cert.finding = {"kind": "liveness", "message": msg, "call": hang.get("call"), "args": hang.get("args"),
                        "seconds": hang.get("seconds"), "guarantee": GUARANTEES["liveness"]}
        if report_dir:
            body = liveness_reproducer(target, hang, _record_classes(cert), hang.get("timeout_s", 10))
            if body:
                cert.finding["reproducer"] = write_reproducer(report_dir, 1, body)
        short = target.construct_call() if hang.get("call") == "constructor" else f"{hang.get('call')}(...)"
        return f"the store is not live: {short} did not return within {hang.get('timeout_s', 0):g} s"
    if probe.get("retains_nothing"):
        cert.finding = {"kind": "retains_nothing", "message": probe["retains_nothing"]}
        return "the store retains nothing, see the verdict"
    return ""


def annotate(cert: Certificate, target, ctx, report_dir: Optional[str]) -> None:
    n = 0
    for t in cert.tiers:
        for c in t.counterexamples:
            base = str(c.property).split(" (")[0]
            c.guarantee = GUARANTEES.get(c.property) or GUARANTEES.get(base, "")
            c.cause = likely_cause(c)
            if report_dir is None:
                continue
            body = None
            if c.property == "P5 ack atomicity":
                body = p5_reproducer(target, cert.profile)
            elif c.tier == 1 and c.detail.get("program"):
                body = tier1_reproducer(target, c.detail["program"], _record_classes(cert))
            elif c.property == "liveness" and c.detail.get("hang"):
                body = liveness_reproducer(target, c.detail["hang"], _record_classes(cert), cert.call_timeout_s)
            if body:
                n += 1
                c.reproducer = write_reproducer(report_dir, n + (1 if cert.finding else 0), body)
