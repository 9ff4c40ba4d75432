"""Executors: where a bag of independent trials runs (local worker processes or Ray tasks).

Campaigns, the simulation's search and certify's crash and power-cut tiers all
run their trials through one interface: `map_trials(fn, items, executor)`
yields `(item, result)` pairs as they finish. A trial that could not run (its
worker died more often than the retries allow, a lost node, an exception in
`fn`) yields `(item, TrialLost(reason))`: never a pass, never dropped. `fn`
must be a module-level function (Ray pickles it to its workers).

* `local.LocalExecutor(jobs)`: worker processes forked from the driver.
* `ray.RayExecutor(jobs, address)`: one Ray task per item.
* `shares`: one job split into a few shares that any executor runs alike.

Both executors retry a trial whose worker died (`max_retries` times): a trial
is a pure function of its item, so a retry is the same trial.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Optional, Tuple

from ..exit_codes import UsageError
from .lost import TrialLost
from .shares import map_shares, split_shares

EXECUTORS = ("local", "ray")
DEFAULT_MAX_RETRIES = 2


def make_executor(name: str, jobs: int, address: Optional[str] = None, **kw) -> Any:
    """The executor called `name` (a context manager with `run(fn, items)`, `abort()`, `temp_dirs()`)."""
    if name == "local":
        if address:
            raise UsageError(f"--address {address!r} needs --executor ray")
        from .local import LocalExecutor

        return LocalExecutor(jobs, max_retries=kw.get("max_retries", DEFAULT_MAX_RETRIES))
    if name == "ray":
        from .ray import RayExecutor

        return RayExecutor(jobs, address, **kw)
    raise UsageError(f"--executor {name!r}: allowed {', '.join(EXECUTORS)}")


def map_trials(fn: Callable, items: Iterable[Any], executor: str = "local", *, jobs: int = 2,
               address: Optional[str] = None, **kw) -> Iterator[Tuple[Any, Any]]:
    """Run `fn(item)` for every item on `executor`; yield (item, result or TrialLost) as they finish."""
    with make_executor(executor, jobs, address, **kw) as ex:
        for batch in ex.run(fn, list(items)):
            yield from batch


__all__ = ["DEFAULT_MAX_RETRIES", "EXECUTORS", "TrialLost", "make_executor", "map_shares", "map_trials",
           "split_shares"]
