"""Backpressure: high/low watermark hysteresis on in_flight = published - consumed.

The producer pauses when in_flight reaches `high` and resumes only once it has
fallen to `low`, so it does not flap around one threshold. `observe` returns
"pause" or "resume" exactly on a change of state, else None.
"""

from __future__ import annotations

from typing import Optional


class Backpressure:
    def __init__(self, high: int, low: int) -> None:
        if not 0 <= low < high:
            raise ValueError(f"watermarks need 0 <= low < high, got low={low} high={high}")
        self.high = high
        self.low = low
        self.paused = False

    def observe(self, published: int, consumed: int) -> Optional[str]:
        in_flight = published - consumed
        if not self.paused and in_flight >= self.high:
            self.paused = True
            return "pause"
        if self.paused and in_flight <= self.low:
            self.paused = False
            return "resume"
        return None

    def may_publish(self) -> bool:
        return not self.paused
