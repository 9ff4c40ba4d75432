"""One job (a search, a tier's crash trials) split into shares that any executor runs alike."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, List, Optional, Tuple

from ..exit_codes import HarnessError
from .lost import TrialLost


def split_shares(total: int, jobs: int, seed: int) -> List[Tuple[int, int]]:
    """`total` units of work in at most `jobs` shares, as (count, seed): the counts differ
    by at most one, share i gets seed `seed*1000+i`, so any executor gets the same shares."""
    jobs = max(1, min(int(jobs), int(total) or 1))
    return [(total // jobs + (1 if i < total % jobs else 0), seed * 1000 + i) for i in range(jobs)]


def map_shares(fn: Callable, items: Iterable[Any], executor: str, *, what: str, jobs: int = 2,
               address: Optional[str] = None) -> Iterator[Tuple[Any, Any]]:
    """`map_trials` for the shares of one job: a lost share is a HarnessError naming `what`,
    never a pass and never dropped."""
    from . import map_trials

    for item, res in map_trials(fn, items, executor, jobs=jobs, address=address):
        if isinstance(res, TrialLost):
            raise HarnessError(f"{what}: a share was lost on {executor}: {res}")
        yield item, res
