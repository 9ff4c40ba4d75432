"""What a certification is asked to do: one `CertifyRequest`, checked once.

The CLI, the Python API (`certify(factory, **options)`) and the pytest suite
all build a request; `check()` turns bad options into a LoadError (exit 2)
before any tier runs, and the request then answers the questions the run asks
(the budget, the tiers selected, the command that reproduces it).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

from . import tiers as _tiers
from .certificate import BUDGETS, Budget
from .loader import PROFILES, LoadError

Progress = Callable[[str], None]


@dataclass
class CertifyRequest:
    #: a `module:attr` string, a MetadataStore class, a callable taking a working directory, or a StoreTarget
    factory: Any
    profile: Optional[str] = None  # durable | volatile; None: what the store declares
    budget: Union[str, Budget] = "standard"
    tiers: Iterable[int] = _tiers.NUMBERS
    seed: Optional[int] = None  # None: drawn at random (and written in the certificate)
    reports_dir: Optional[str] = "reports"  # None: no certificate files
    progress: Optional[Progress] = None
    #: per-tier knobs: examples, crashes, powercuts, t2_seconds, stop_at_first_failure, executor, jobs, address
    overrides: Dict[str, Any] = field(default_factory=dict)
    command: Optional[str] = None  # the command line shown in the certificate
    spec: Optional[str] = None  # the factory's `module:attr` when `factory` is an object
    repro_prefix: Optional[str] = None  # command prefix that reproduces a tier; default from the spec
    records: Optional[str] = None  # module of the store's SampleRef (as --records)
    call_timeout: Optional[float] = None  # seconds per construction and store call (as --call-timeout)

    def check(self) -> None:
        """LoadError (bad input, exit 2) for an option no run can use."""
        if self.call_timeout is not None and not (0 < self.call_timeout < 1e6):
            raise LoadError(f"--call-timeout {self.call_timeout!r}: must be a number of seconds above 0")
        if self.profile is not None and self.profile not in PROFILES:
            raise LoadError(f"unknown profile {self.profile!r}; allowed: {', '.join(PROFILES)}")
        if isinstance(self.budget, str) and self.budget not in BUDGETS:
            raise LoadError(f"unknown budget {self.budget!r}; allowed: {', '.join(BUDGETS)}")
        self.selected()

    def selected(self) -> List[int]:
        try:
            chosen = sorted(set(int(t) for t in self.tiers))
        except (TypeError, ValueError) as e:
            raise LoadError(f"tiers {self.tiers!r}: not tier numbers; tiers are {_tiers.listing()}") from e
        bad = [t for t in chosen if _tiers.get(t) is None]
        if bad:
            raise LoadError(f"unknown tier(s) {bad}; tiers are {_tiers.listing()}")
        return chosen

    def the_budget(self) -> Budget:
        return BUDGETS[self.budget] if isinstance(self.budget, str) else self.budget

    def the_seed(self) -> int:
        return self.seed if self.seed is not None else random.SystemRandom().randrange(1, 1 << 31)

    def say(self, msg: str) -> None:
        if self.progress is not None:
            self.progress(msg)

    def profile_for(self, target: Any) -> Tuple[str, str]:
        """(profile, where it came from)."""
        if self.profile is None:
            return target.default_profile()
        source = "chosen with --profile"
        if target.declared_profile and target.declared_profile != self.profile:
            source += f" (the store declares {target.declared_profile!r})"
        return self.profile, source

    def reproduce_prefix(self, target: Any, profile: str) -> Optional[str]:
        """The command prefix that certifies this store again (None: not importable, suite use)."""
        if self.repro_prefix is not None or not target.spec:
            return self.repro_prefix
        out = f"python -m harness certify {target.spec} --profile {profile}"
        if self.records:
            out += f" --records {self.records}"
        if self.call_timeout is not None:
            out += f" --call-timeout {self.call_timeout:g}"
        return out

    def command_line(self, prefix: Optional[str], budget: Budget, seed: int) -> str:
        if self.command:
            return self.command
        if not prefix:
            return ""
        return f"{prefix} --{budget.name} --seed {seed} --tiers {','.join(map(str, self.selected()))}"
