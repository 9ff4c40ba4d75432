"""`TrialLost`: the result of a trial that could not run, whatever the executor."""

from __future__ import annotations


class TrialLost:
    """A trial whose worker died or could not be reached: never a pass, never dropped."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"TrialLost({self.reason!r})"
