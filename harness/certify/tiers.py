"""The certification tiers, listed once.

Everything in certify that names a tier reads it from `TIERS`: the run
(`harness.certify.certify` dispatches each selected tier through its entry),
the command line (`--tiers`, its default and its error message), the
certificate (tier names, the heading of a counterexample's steps) and the
pytest suite (`MetadataStoreSuite` gets one `test_tier<n>_<name>` per entry).

A tier is anything with the `Tier` protocol: a number, a name, the heading of
its counterexamples' steps, `not_applicable(ctx)` (why the tier does not apply
to this store and profile, or None) and `run(ctx) -> TierResult`. The shipped
tiers are `TierEntry`s, which import their module `harness.certify.<module>`
only when the tier runs; each such module has `PROPERTIES` and
`run(ctx: Context) -> TierResult`.

Adding a tier, say 7:
1. write `harness/certify/tier7_<name>.py` with `PROPERTIES` and
   `run(ctx) -> TierResult` (a result with `tier=7`);
2. append `TierEntry(7, "<name>", "tier7_<name>", "<steps heading>",
   applicability=<ctx -> reason or None>)` to `TIERS` below (as tier 6,
   network, says "not a networked backend" for a store without a server).
`--tiers 7`, the default selection, the certificate and the suite's
`test_tier7_<name>` follow from the entry; nothing else changes.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Protocol, Tuple

# `Context` (harness.certify.common) and `TierResult` (harness.certify.certificate) are named in
# annotations only: both of those modules read this registry.
Context = Any
TierResult = Any


class Tier(Protocol):
    number: int
    name: str
    steps_heading: str

    def not_applicable(self, ctx: Context) -> Optional[str]:
        """Why this tier does not apply to the store and profile being certified, or None."""

    def run(self, ctx: Context) -> TierResult:
        """Run the tier; a failure of the store is a FAILED result, never an exception."""


def always_applies(ctx: Context) -> Optional[str]:
    return None


def durable_only(why: str) -> Callable[[Context], Optional[str]]:
    """Not applicable to the volatile profile, for the reason given."""

    def check(ctx: Context) -> Optional[str]:
        return f"volatile profile: {why}" if ctx.profile == "volatile" else None

    return check


def networked(ctx: "Context") -> Optional[str]:
    """Not applicable to a backend that declares no server for the harness to start."""
    from ..stores.shared_server import declared_server

    if declared_server(ctx.target.factory) is None:
        return "not a networked backend (the store declares no store_server)"
    return None


@dataclass(frozen=True)
class TierEntry:
    """A shipped tier: its module `harness.certify.<module>` is imported when it runs."""

    number: int
    name: str
    module: str
    steps_heading: str
    applicability: Callable[[Context], Optional[str]] = always_applies

    def not_applicable(self, ctx: Context) -> Optional[str]:
        return self.applicability(ctx)

    def run(self, ctx: Context) -> TierResult:
        return importlib.import_module(f"{__package__}.{self.module}").run(ctx)


TIERS: Tuple[Tier, ...] = (
    TierEntry(1, "contract", "tier1_contract", "Minimal steps (shrunk by Hypothesis, then 1-minimal):"),
    TierEntry(2, "concurrency", "tier2_concurrency", "What the readers and the final check saw:"),
    TierEntry(3, "crash", "tier3_crash", "The trial (the operations that show it):",
              durable_only("nothing is expected to survive a crash")),
    TierEntry(4, "end-to-end", "tier4_end_to_end", "Anomalies:",
              durable_only("the crash scenarios restart processes, which a volatile store does not survive")),
    TierEntry(5, "power loss", "tier5_power_loss", "The trial and the power cut:",
              durable_only("nothing is expected to survive a power cut")),
    TierEntry(6, "network", "tier6_network", "What the clients' calls answered:", networked),
)

NUMBERS: Tuple[int, ...] = tuple(t.number for t in TIERS)
_BY_NUMBER: Dict[int, Tier] = {t.number: t for t in TIERS}


def get(number: int) -> Optional[Tier]:
    return _BY_NUMBER.get(number)


def name_of(number: int) -> str:
    """The tier's name; a number no entry has (an old certificate) reads as `tier <n>`."""
    t = _BY_NUMBER.get(number)
    return t.name if t is not None else f"tier {number}"


def steps_heading(number: int) -> str:
    t = _BY_NUMBER.get(number)
    return t.steps_heading if t is not None else "Steps:"


def suite_test_name(tier: Tier) -> str:
    """The suite's test method for a tier: `test_tier4_end_to_end`."""
    return f"test_tier{tier.number}_" + re.sub(r"[^a-z0-9]+", "_", tier.name.lower()).strip("_")


def listing() -> str:
    """`1, 2, 3, 4, 5` for messages."""
    return ", ".join(str(n) for n in NUMBERS)
