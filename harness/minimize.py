"""Shrinking, written once: delta debugging over a list, and Hypothesis's own shrinker bounded in time.

Every failure the harness reports is shrunk by one of two means:

* `ddmin(items, test)`: delta debugging (remove halves, then smaller chunks,
  down to single items) keeping a removal while `test` still fails; the
  result is 1-minimal (removing any one item passes). Used where a failure is
  a list that can be replayed outside Hypothesis: a real-process run's faults
  (`harness.shrink`) and a contract counterexample's steps (certify tier 1).
* `hypothesis_shrink_limit(seconds)`: Hypothesis shrinks the failures it
  finds itself (the simulation engine's schedules, tier 1's values); this
  bounds that shrink to a budget instead of Hypothesis's default five minutes.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple, TypeVar

T = TypeVar("T")


def ddmin(items: Sequence[T], test: Callable[[List[T]], Any], *,
          deadline: Optional[float] = None) -> Tuple[List[T], Any]:
    """The smallest sublist found (in order) for which `test` still fails, and `test`'s answer for it.

    `test(candidate)` returns a falsy value when the candidate passes and
    anything else (kept and returned) when it fails; `items` itself is taken
    to fail with the answer None. Past `deadline` (time.monotonic()) the
    best so far is returned.
    """
    best, answer = list(items), None
    n = 2
    while best and (deadline is None or time.monotonic() < deadline):
        chunk = max(1, len(best) // n)
        reduced = False
        for start in range(0, len(best), chunk):
            if deadline is not None and time.monotonic() >= deadline:
                return best, answer
            cand = best[:start] + best[start + chunk:]
            got = test(cand)
            if got:
                best, answer, reduced = cand, got, True
                n = max(n - 1, 2)
                break
        if not reduced:
            if chunk == 1:
                break
            n = min(len(best), n * 2)
    return best, answer


@contextlib.contextmanager
def hypothesis_shrink_limit(seconds: float) -> Iterator[None]:
    """Hypothesis stops shrinking after at most `seconds` (an internal knob; left alone if it moved)."""
    try:
        from hypothesis.internal.conjecture import engine
    except ImportError:  # pragma: no cover - a Hypothesis without that module
        yield
        return
    old = getattr(engine, "MAX_SHRINKING_SECONDS", None)
    if old is None:
        yield
        return
    engine.MAX_SHRINKING_SECONDS = min(old, seconds)
    try:
        yield
    finally:
        engine.MAX_SHRINKING_SECONDS = old
