"""What both engines need around one run, written once.

The process engine (`harness.process_engine.runner`) and the simulation engine
(`harness.simulate.engine`) differ in how they schedule the producer and the
consumer, not in what a run is. Both use, from here:

* the run config of a workload (`scenario_config`, `simulation_config`: one
  mapping of workload keys onto `RunConfig`);
* the run's progress, published and consumed counts read incrementally from
  its files (`Progress`, on `reference_impl.channel.ChannelReader`);
* the outcome of the processes' end statuses (`roll_up`);
* whether the store keeps what it acknowledged (`durable_store`);
* one verdict (`verdict`, through `harness.verdict.judge`);
* what a run that could not finish leaves behind (`abandon_run_dir`): a run
  dir that a full disk cut short is removed (its space is wanted back and
  nothing in it can be finished); any other failure keeps it for diagnosis,
  and the error says so, with its size.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from typing import Any, Callable, Dict, Iterable, Optional, Sequence

from reference_impl.channel import CONSUMED, ChannelReader, ChannelShrank
from reference_impl.config import RunConfig

from .exit_codes import HarnessError, describe_os_error
from .verdict import judge

# -- config -----------------------------------------------------------------------


def _run_config(workdir: str, w: Dict[str, Any], backend: str, *, seed: int, run_id: str, source: str,
                topology: Optional[Dict[str, Any]]) -> RunConfig:
    """The workload `w` as a RunConfig; `topology` None is the simulation (one rank, no
    delays, no polling sleep), else a scenario's topology (ranks, devices)."""
    sim = topology is None
    extra: Dict[str, Any] = {"world_size": 1, "producer_delay_s": 0.0, "consumer_step_delay_s": 0.0,
                             "poll_interval_s": 0.0} if sim else {
        "world_size": topology["consumer_ranks"], "producer_device": topology["producer_device"],
        "consumer_device": topology["consumer_device"], "producer_delay_s": w["producer_delay_s"],
        "consumer_step_delay_s": w["consumer_step_delay_s"]}
    return RunConfig(
        workdir=workdir, run_id=run_id, seed=int(seed), backend=backend,
        num_samples=w["samples"], publish_batch=w["publish_batch"], train_batch=w["train_batch"],
        accumulation=w["accumulation"], checkpoint_every=w["checkpoint_every"],
        high_watermark=w["high_watermark"], low_watermark=w["low_watermark"],
        starve_checkpoint_s=w["starve_checkpoint_s"], io_retries=w["io_retries"], **extra,
    ).validate(source)


def scenario_config(scenario, seed: int, workdir: str) -> RunConfig:
    """The run config of a scenario's run (the process engine)."""
    return _run_config(workdir, scenario.workload, scenario.backend, seed=seed, run_id=f"{scenario.name}-{seed}",
                       source=scenario.path or scenario.name, topology=scenario.topology)


def simulation_config(workdir: str, workload: Dict[str, Any], backend: str, seed: int = 0) -> RunConfig:
    """The run config of a simulated run; `workload` is complete (defaults merged by the caller)."""
    return _run_config(workdir, workload, backend, seed=seed, run_id=f"sim-{seed}", source="simulation workload",
                       topology=None)


# -- progress -----------------------------------------------------------------------


class SidecarUnreadable(ValueError):
    """The consumed sidecar holds no valid count (`text` is what it holds)."""

    def __init__(self, text: str) -> None:
        super().__init__(f"consumed sidecar is not valid: {text[:80]!r}")
        self.text = text


class Progress:
    """Published and consumed counts of a run, read incrementally from its files.

    `published` counts complete channel records (a `ChannelReader` that skips
    over them); `consumed` is the consumer's sidecar, re-read only when its
    inode, mtime or size changed. `on_anomaly(kind, message)` hears of a
    channel cut back below records already counted (never done by a correct
    writer).
    """

    def __init__(self, workdir: str, on_anomaly: Optional[Callable[[str, str], None]] = None) -> None:
        self.reader = ChannelReader(workdir)
        self.consumed_path = os.path.join(workdir, CONSUMED)
        self.published = 0
        self.consumed = 0
        self._consumed_key = None
        self.on_anomaly = on_anomaly

    def update_published(self) -> int:
        try:
            self.published += self.reader.skip()
        except ChannelShrank as e:
            if self.on_anomaly is not None:
                self.on_anomaly("channel_truncated", str(e))
        return self.published

    def read_consumed(self) -> Optional[int]:
        """The sidecar's count, None while there is none; raises SidecarUnreadable on garbage."""
        try:
            st = os.stat(self.consumed_path)
        except FileNotFoundError:
            self._consumed_key = None
            return None
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if key == self._consumed_key:
            return self.consumed
        try:
            with open(self.consumed_path) as f:
                text = f.read()
        except FileNotFoundError:
            return None
        try:
            v = int(json.loads(text)["consumed"])
        except (ValueError, KeyError, TypeError):
            raise SidecarUnreadable(text) from None
        self._consumed_key, self.consumed = key, v
        return v

    def update(self) -> None:
        """Both counts, tolerant: a missing or unreadable sidecar keeps the last count."""
        self.update_published()
        try:
            self.read_consumed()
        except SidecarUnreadable:
            pass


# -- outcome, durability, verdict ---------------------------------------------------

#: End statuses of a process, by precedence in the run's outcome.
_OUTCOME_ORDER = ("error", "fail_closed", "failed")


def roll_up(statuses: Iterable[str]) -> Optional[str]:
    """The run's outcome from its processes' statuses: error, else fail_closed, else failed,
    else completed when every process is done; None while that is not decided."""
    vals = set(statuses)
    for outcome in _OUTCOME_ORDER:
        if outcome in vals:
            return outcome
    return "completed" if vals <= {"done"} else None


def durable_store(backend: str, store_server_restarts: int) -> bool:
    """Does the store keep what it acknowledged? SQLite, Redis and third-party (`module:attr`)
    stores say they do (a Redis server's persistence setting decides whether that holds); the
    in-memory store server only as long as it was never restarted."""
    return backend in ("sqlite", "redis") or ":" in backend or (backend == "inmemory" and store_server_restarts == 0)


def verdict(properties: Dict[str, Dict[str, Any]], outcome: str, violates: Sequence[str] = (),
            outcomes: Sequence[str] = ("completed",)) -> Dict[str, Any]:
    """`harness.verdict.judge` of a run with the expectation given as its two parts."""
    return judge(properties, outcome, {"violates": list(violates), "outcome": list(outcomes)})


# -- a run that could not finish ---------------------------------------------------

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full(e: Optional[BaseException]) -> bool:
    """Whether `e`, or an error it was raised from, is a full disk (ENOSPC, EDQUOT)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _DISK_FULL:
            return True
        e = e.__cause__ or e.__context__
    return False


#: A file system with less than this free is full (a write of a page or a feature blob fails there).
FULL_BELOW_BYTES = 1 << 20


def check_disk_after(workdir: str, outcome: str) -> None:
    """A run whose processes ended in an error while the disk under `workdir` was full failed for its
    environment, not for what it tests: raise ENOSPC naming the path (the caller removes the run)."""
    if outcome != "error":
        return
    try:
        st = os.statvfs(workdir)
    except OSError:
        return
    free = st.f_bavail * st.f_frsize
    if free < FULL_BELOW_BYTES:
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (a process of the run ended in an error "
                                    f"with {free} bytes free there)", workdir)


def tree_bytes(path: str) -> int:
    """Bytes allocated under `path` (what removing it frees)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                pass
    return total


def abandon_run_dir(rdir: str, e: BaseException) -> BaseException:
    """The error to raise for a run that failed with `e` after creating `rdir`, having dealt with `rdir`:

    * a full disk: `rdir` is removed (HarnessError naming it and the bytes freed);
    * an interruption: `rdir` stays as it is (the caller marks it incomplete);
    * anything else: `rdir` stays for diagnosis, and the error names it, its size and why.
    """
    if isinstance(e, (KeyboardInterrupt, SystemExit)) or not os.path.isdir(rdir):
        return e
    what = describe_os_error(e) if isinstance(e, OSError) else str(e)
    size = tree_bytes(rdir)
    if disk_full(e):
        shutil.rmtree(rdir, ignore_errors=True)
        gone = "removed" if not os.path.exists(rdir) else "could not remove all of"
        return HarnessError(f"{what}; the disk is full: {gone} the half-written run dir {rdir} ({size} bytes)")
    note = f"the run dir {rdir} ({size} bytes) is left for diagnosis: the run could not finish ({type(e).__name__})"
    if isinstance(e, (HarnessError, OSError)):
        return HarnessError(f"{what}; {note}")
    e.add_note(note)  # an internal error keeps its type (and traceback); the note says what it left
    return e
