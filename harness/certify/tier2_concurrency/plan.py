"""Tier 2's ack plan and the marker checker: every ack recognisable from its ids and its step.

`AckPlan` names ack j of writer w (its ids, its `global_step`, its flag);
`MarkerChecker` judges a sequence of `durable_marker()` reads against it,
incrementally, so readers can read often.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from ..model import short

MAX_ANOMALIES = 5
STEP_BASE = 7_000_000
STEP_STRIDE = 1_000_000


class AckPlan:
    """Ack j of writer w: ids `<tag>.w<w>.a<j>.<i>`, step STEP_BASE + w*STRIDE + j, a flag."""

    def __init__(self, tag: str, writers: int, max_ids: int, seed: int) -> None:
        self.tag = tag
        self.writers = writers
        self.max_ids = max_ids
        self.seed = seed & 0xFFFF

    def size(self, w: int, j: int) -> int:
        x = (self.seed * 2654435761 + w * 40503 + j * 2246822519) & 0xFFFFFFFF
        x ^= x >> 13
        return 1 + (x * 7919 >> 5) % self.max_ids

    def ids(self, w: int, j: int) -> List[str]:
        return [f"{self.tag}.w{w}.a{j}.{i}" for i in range(self.size(w, j))]

    def step(self, w: int, j: int) -> int:
        return STEP_BASE + w * STEP_STRIDE + j

    def flag(self, w: int, j: int) -> bool:
        return (w + j) % 2 == 1

    def parse(self, sid: str) -> Optional[Tuple[int, int, int]]:
        head = self.tag + ".w"
        if not sid.startswith(head):
            return None
        try:
            w, a, i = sid[len(head):].split(".")
            return int(w), int(a[1:]), int(i)
        except ValueError:
            return (-1, -1, -1)

    def decode(self, step: Any) -> Optional[Tuple[int, int]]:
        if not isinstance(step, int) or isinstance(step, bool):
            return None
        w, j = divmod(step - STEP_BASE, STEP_STRIDE)
        if 0 <= w < self.writers and j >= 0:
            return w, j
        return None

    def check(self, m: Dict[str, Any]) -> Tuple[List[Tuple[str, str]], List[int]]:
        """Anomalies (property, text) of one marker read, and acks visible per writer."""
        return MarkerChecker(self).observe(m)


class MarkerChecker:
    """Checks a sequence of marker reads incrementally (cheap per read, so readers read often).

    Each read must be a whole state: every ack all or nothing, each writer's acks
    a prefix, `global_step` the newest visible ack of its writer with that ack's
    flag; and acked ids never disappear from one read to the next.
    """

    def __init__(self, plan: AckPlan) -> None:
        self.plan = plan
        self.prev: frozenset = frozenset()
        self.counts: Dict[Tuple[int, int], int] = {}
        self.partial: set = set()
        self.present: Dict[int, set] = {}

    def observe(self, m: Dict[str, Any]) -> Tuple[List[Tuple[str, str]], List[int]]:
        plan = self.plan
        acked = m["acked"]
        out: List[Tuple[str, str]] = []
        if not self.prev <= acked:
            gone = self.prev - acked
            out.append(("visibility", f"acked ids seen by an earlier read are gone in a later one: {short(gone)}"))
            self.__init__(plan)
        phantom = []
        for sid in acked - self.prev:
            o = plan.parse(sid)
            if o is None:
                continue
            w, j, i = o
            if not (0 <= w < plan.writers and j >= 0 and 0 <= i < plan.size(w, j)):
                phantom.append(sid)
                continue
            n = self.counts.get((w, j), 0) + 1
            self.counts[(w, j)] = n
            self.present.setdefault(w, set()).add(j)
            if n == plan.size(w, j):
                self.partial.discard((w, j))
            else:
                self.partial.add((w, j))
        self.prev = frozenset(acked)
        if phantom:
            out.append(("P5 ack atomicity", f"acked holds ids no ack recorded: {short(phantom)}"))
        for (w, j) in sorted(self.partial)[:1]:
            out.append(
                (
                    "P5 ack atomicity",
                    f"torn ack: {self.counts[(w, j)]} of the {plan.size(w, j)} ids of ack w{w}#{j} (global_step "
                    f"{plan.step(w, j)}) are acked, the others not",
                )
            )
        k = [0] * plan.writers
        for w, js in self.present.items():
            k[w] = len(js)
            top = max(js)
            if top + 1 != len(js):
                missing = sorted(set(range(top + 1)) - js)
                out.append(
                    (
                        "P5 ack atomicity",
                        f"ack w{w}#{top} is visible but earlier ack(s) w{w}#{missing[:5]} of the same writer are not "
                        "(an ack was split, reordered or lost)",
                    )
                )
        step, flag = m["global_step"], m["optimizer_durable"]
        if self.counts:
            who = plan.decode(step)
            if who is None:
                out.append(
                    ("P5 ack atomicity",
                     f"global_step is {step!r}, which no visible ack recorded (acks visible per writer: {k})")
                )
            else:
                w, j = who
                have = self.counts.get((w, j), 0)
                if have != plan.size(w, j):
                    out.append(
                        (
                            "P5 ack atomicity",
                            f"global_step {step} is ack w{w}#{j}'s, but {have} of that ack's {plan.size(w, j)} ids "
                            "are acked: the marker mixes two ack transactions",
                        )
                    )
                elif k[w] - 1 != j:
                    out.append(
                        (
                            "P5 ack atomicity",
                            f"global_step {step} is ack w{w}#{j}'s, but the later ack w{w}#{k[w] - 1} of the same "
                            "writer is already acked: the marker mixes two ack transactions",
                        )
                    )
                elif flag != plan.flag(w, j):
                    out.append(
                        (
                            "P5 ack atomicity",
                            f"global_step {step} is ack w{w}#{j}'s, but optimizer_durable={flag!r} is not that "
                            f"ack's flag ({plan.flag(w, j)!r}): the marker mixes two ack transactions",
                        )
                    )
        return out, k
