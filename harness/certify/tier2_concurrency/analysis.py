"""Tier 2's analysis: what the roles returned and the final state, turned into findings.

`Findings` collects (scenario, property, text) per property, capped;
`analyse_dedup` and `analyse_acks` judge a scenario's results against the
final state; `collect` and `flatten` gather role results and failures.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from harness.exit_codes import HarnessError

from ..model import diff_refs, short
from ..records import active
from .plan import MAX_ANOMALIES, AckPlan
from .roles import make_ref


class Findings:
    def __init__(self) -> None:
        self.items: List[Tuple[str, str, str]] = []  # (scenario, prop, text)
        self.warnings: List[str] = []
        self.counters: Dict[str, int] = {}
        self.died = False  # a process running the store died: the later scenarios would only repeat it

    def child_failed(self, scenario: str, r: Dict[str, Any]) -> None:
        """A child that brought back no value: a finding, unless the harness caused it (raises)."""
        if r.get("stopped"):
            return  # stopped by the certifier because a peer died; the peer's result says why
        died = r.get("died")
        if died and not died["in_store"]:
            raise HarnessError(r["error"])
        self.died = self.died or bool(died)
        self.add(scenario, r.get("prop") or ("liveness" if r.get("hung") else "exception"), r["error"])

    def add(self, scenario: str, prop: str, text: str) -> None:
        if (scenario, prop, text) in self.items:
            return
        if sum(1 for _, p, _ in self.items if p == prop) < MAX_ANOMALIES:
            self.items.append((scenario, prop, text))

    def bump(self, k: str, n: int = 1) -> None:
        self.counters[k] = self.counters.get(k, 0) + int(n or 0)


def _role_failures(scenario: str, results: List[Optional[Dict[str, Any]]], f: Findings) -> bool:
    bad = False
    for r in results:
        if r is None or r["ok"]:
            continue
        bad = True
        err = r["error"]
        prop = r.get("prop") or ("liveness" if "StoreStuck" in err else "exception")
        f.add(scenario, prop, f"{r.get('role', 'worker')} failed: {err}")
    return bad


def contested_ids(roles: List[Dict[str, Any]], limit: int = 400) -> List[str]:
    seen: Dict[str, int] = {}
    for r in roles:
        for sid, _ in r["attempts"]:
            seen[sid] = seen.get(sid, 0) + 1
    multi = [s for s, n in seen.items() if n > 1]
    return multi[:limit]


def analyse_dedup(scenario: str, roles: List[Dict[str, Any]], final: Dict[str, Any], seed: int, f: Findings) -> None:
    fresh: Dict[str, List[int]] = {}
    indet: Dict[str, bool] = {}
    expected: Dict[str, None] = {}
    for r in roles:
        for sid, flag in r["attempts"]:
            expected[sid] = None
            if flag is None:
                indet[sid] = True
            elif flag:
                fresh.setdefault(sid, []).append(r["wid"])
        f.bump("commits", len(r["attempts"]))
    got = set(final["all_ids"])
    for sid in expected:
        winners = fresh.get(sid, [])
        if len(winners) > 1:
            same = ""
            if len(set(winners)) < len(winners):
                same = " (the same worker more than once: a repeated id in one batch)"
            f.add(scenario, "P4 dedup", f"commit of {sid!r} returned fresh {len(winners)} times (workers {winners}) "
                  f"under concurrent commits{same}")
        elif not winners and not indet.get(sid):
            f.add(scenario, "P4 dedup",
                  f"no commit of {sid!r} returned fresh (it is {'' if sid in got else 'not '}committed)")
    all_ids = final["all_ids"]
    if len(got) != len(all_ids):
        seen: set = set()
        dup = [i for i in all_ids if i in seen or seen.add(i)]
        f.add(scenario, "P4 dedup", f"all_committed_ids lists ids more than once: {short(set(dup))}")
    missing = [s for s in expected if s not in got]
    if missing:
        f.add(scenario, "lost-update", f"commits that returned are missing at the end: {short(missing)}")
    if final["count"] != len(got):
        f.add(scenario, "committed_count",
              f"committed_count() is {final['count']} but {len(got)} distinct ids are committed")
    for sid, stored in final["refs"].items():
        winners = fresh.get(sid, [])
        if stored is None:
            if sid in got:
                f.add(scenario, "round-trip", f"get_committed({sid!r}) is None though the id is listed as committed")
            continue
        if len(winners) == 1 and not indet.get(sid):
            d = diff_refs(active().canon(make_ref(sid, winners[0], seed)), stored)
            if d:
                md = stored.get("metadata")
                w = md.get("writer") if isinstance(md, dict) else None
                if w == winners[0]:
                    f.add(scenario, "round-trip", f"get_committed({sid!r}) differs from the ref committed: {d}")
                else:
                    f.add(
                        scenario,
                        "P4 dedup",
                        f"{sid!r}: the stored ref is not the one whose commit returned fresh (worker {winners[0]}) "
                        f"but worker {w!r}'s: {d}",
                    )
    pos = {sid: i for i, sid in enumerate(all_ids)}
    for r in roles:
        seq = [pos[s] for s in r["fresh_order"] if s in pos]
        for i, (a, b) in enumerate(zip(seq, seq[1:])):
            if a > b:
                x, y = all_ids[a], all_ids[b]
                f.add(
                    scenario,
                    "all_committed_ids order",
                    f"worker {r['wid']}'s commit of {x!r} returned fresh before its commit of {y!r}, but "
                    f"all_committed_ids lists {y!r} first",
                )
                break


def analyse_acks(scenario: str, plan: AckPlan, final: Dict[str, Any], done: Dict[int, int], f: Findings) -> None:
    found, k = plan.check(final["marker"])
    for prop, text in found:
        f.add(scenario, prop, "final marker: " + text)
    for w, n in done.items():
        if k[w] < n:
            f.add(
                scenario,
                "lost-update",
                f"after every ack returned, durable_marker has {k[w]} of writer w{w}'s {n} acks (ack w{w}#{k[w]} "
                "is lost: concurrent acks overwrote each other)",
            )
    if done and all(k[w] >= n for w, n in done.items()):
        last = {plan.step(w, n - 1) for w, n in done.items() if n > 0}
        if last and final["marker"]["global_step"] not in last:
            f.add(scenario, "lost-update",
                  f"final global_step {final['marker']['global_step']!r} is no writer's last step {sorted(last)}")


def collect(name: str, results: List[Optional[Dict[str, Any]]], f: Findings) -> Optional[List[Dict[str, Any]]]:
    bad = _role_failures(name, results, f)
    vals = [r["value"] for r in results if r and r["ok"]]
    for v in vals:
        f.bump("transient_errors", v.get("transient", 0))
        f.bump("marker_reads", v.get("reads", 0))
        f.bump("marker_reads_during_acks", v.get("reads_during_acks", 0))
        f.bump("acks", v.get("acks", 0) if "w" in v else 0)
        for prop, text in v.get("anomalies", []):
            f.add(name, prop, text)
    return None if bad else vals


def flatten(name: str, res: List[Dict[str, Any]], f: Findings) -> Optional[List[Dict[str, Any]]]:
    out: List[Optional[Dict[str, Any]]] = []
    bad = False
    for r in res:
        if not r["ok"]:
            f.child_failed(name, r)
            bad = True
            continue
        out.extend(r["value"])
    vals = collect(name, out, f)
    return None if bad or vals is None else vals
