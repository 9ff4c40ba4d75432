"""Tier 2's roles and their hosting: workers that run in threads, in this or a child process.

`Shared` coordinates them (a start barrier, ack counters); `role_dedup`,
`role_acker` and `role_reader` are the workloads; `host_roles` runs roles in
threads on one store each or one shared instance; `read_final` reads the
state they leave.
"""

from __future__ import annotations

import random
import sys
import threading
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..common import Retrier, is_transient, mp_context, random_ref, safe_close
from ..model import Violation, canon_ref, normalise_marker, short
from ..records import active
from .plan import MAX_ANOMALIES, AckPlan, MarkerChecker

MAX_ROUNDS = 10_000


# -- coordination --------------------------------------------------------------------------


#: marker reads begun while an ack was in flight, per reader, before the ackers may stop
MIN_OVERLAPS_PER_READER = 25
#: the ackers (and a dedup race) stop at this many times the scenario's seconds even short of
#: their overlaps (rounds)
OVERLAP_PATIENCE = 20
#: rounds of a dedup race before its committers may stop (each round races every id once)
MIN_DEDUP_ROUNDS = 6


class Shared:
    """Cross-process (and cross-thread) coordination: a start barrier, ack counters.

    The ackers run for the scenario's seconds, and then on until the readers have
    begun `min_overlaps` reads while an ack was in flight (`overlaps`); the
    committers of a dedup race likewise go on until they have raced
    `MIN_DEDUP_ROUNDS` rounds. On a loaded machine the threads and processes
    interleave less per second, so the tier runs longer instead of looking at
    fewer interleavings (a CI run under load raced one round and missed a
    check-then-insert race).
    """

    def __init__(self, parties: int, writers: int, seconds: float, readers: int = 0, committers: int = 0) -> None:
        mp = mp_context()
        self.barrier = mp.Barrier(max(1, parties))
        # the committers of a dedup race start every round together (the race is each round's first calls)
        self.round_barrier = mp.Barrier(committers) if committers > 1 else None
        #: the round after which all committers stop (0: none decided yet)
        self.last_round = mp.Value("i", 0)
        self.begun = mp.Array("q", max(1, writers), lock=False)
        self.done = mp.Array("q", max(1, writers), lock=False)
        self.writers_left = mp.Value("i", writers)
        self.overlaps = mp.Value("i", 0)
        self.readers_left = mp.Value("i", readers)
        self.min_overlaps = MIN_OVERLAPS_PER_READER * readers
        self.seconds = seconds

    def start(self) -> float:
        """Wait for every worker; return this worker's deadline."""
        try:
            self.barrier.wait(timeout=120)
        except threading.BrokenBarrierError:
            pass
        return time.monotonic() + self.seconds

    def next_round(self, deadline: float, done: int) -> bool:
        """After a committer's `done`-th round: whether all committers go on to the next one (one
        decision for all of them, taken at the round barrier)."""
        now = time.monotonic()
        go_on = now < deadline or (done < MIN_DEDUP_ROUNDS and now < deadline + self.seconds * OVERLAP_PATIENCE)
        if self.round_barrier is None:
            return go_on
        if not go_on:
            self.last_round.value = done
        try:
            self.round_barrier.wait(timeout=120)
        except threading.BrokenBarrierError:
            return False  # a committer is gone: its own result says why
        # compared with this round, not read as a flag: a committer slow to read it after the
        # barrier must not see a faster one's decision for the next round (it would leave that
        # round's barrier waiting for it)
        return not 0 < self.last_round.value <= done

    def abort(self) -> None:
        """Nobody waits for a worker that is gone."""
        self.barrier.abort()
        if self.round_barrier is not None:
            self.round_barrier.abort()

    def ackers_go_on(self, deadline: float) -> bool:
        now = time.monotonic()
        if now < deadline:
            return True
        return (self.overlaps.value < self.min_overlaps and self.readers_left.value > 0
                and now < deadline + self.seconds * OVERLAP_PATIENCE)

    def in_flight(self, writers: int) -> bool:
        """An ack has begun and not returned (read just before a marker read)."""
        return any(self.begun[w] > self.done[w] for w in range(writers))

    def overlapped(self) -> None:
        with self.overlaps.get_lock():
            self.overlaps.value += 1

    def reader_finished(self) -> None:
        with self.readers_left.get_lock():
            self.readers_left.value -= 1

    def writer_finished(self) -> None:
        with self.writers_left.get_lock():
            self.writers_left.value -= 1


def make_ref(sid: str, writer: int, seed: int):
    return random_ref(random.Random(f"{seed}:{sid}:{writer}"), sid, writer=writer)


def _commit_retrying(store, retr: Retrier, refs, single: bool) -> Tuple[List[bool], bool]:
    """(flags, whether an earlier attempt raised and may have applied)."""
    raised = False
    while True:
        try:
            if single and len(refs) == 1:
                return [bool(store.commit_sample(refs[0]))], raised
            return [bool(x) for x in store.commit_samples(refs)], raised
        except Exception as e:  # noqa: BLE001
            if not is_transient(e):
                raise
            retr.transient += 1
            retr.last_error = f"{type(e).__name__}: {e}"
            raised = True
            time.sleep(0.005)


# -- roles (each runs in a thread, in this or a child process) -------------------------


def role_dedup(store, shared: Shared, retr: Retrier, *, wid: int, plan: Callable[[int], Tuple[List[List[str]], bool]],
               seed: int):
    """Commit round after round of the planned batches until the deadline."""
    attempts: List[Tuple[str, Optional[bool]]] = []
    fresh_order: List[str] = []
    deadline = shared.start()
    rnd = 0
    going = True
    while going and rnd < MAX_ROUNDS:
        batches, single = plan(rnd)
        rnd += 1
        for batch in batches:
            refs = [make_ref(s, wid, seed) for s in batch]
            flags, raised = _commit_retrying(store, retr, refs, single)
            if len(flags) != len(batch):
                raise Violation("P4 dedup", f"commit_samples of {len(batch)} refs returned {len(flags)} flags")
            for sid, fl in zip(batch, flags):
                attempts.append((sid, None if raised else fl))
                if fl:
                    fresh_order.append(sid)
        going = shared.next_round(deadline, rnd)
    return {"wid": wid, "attempts": attempts, "fresh_order": fresh_order, "transient": retr.transient, "rounds": rnd}


def role_acker(store, shared: Shared, retr: Retrier, *, plan: AckPlan, w: int, seed: int, chunk: int = 64):
    """Ack after ack in a tight loop until the deadline; the ids are committed a chunk ahead."""
    anomalies: List[Tuple[str, str]] = []
    j = 0
    plain_ref = active().minimal_ref

    def commit_chunk(first: int) -> None:
        ids = [s for jj in range(first, first + chunk) for s in plan.ids(w, jj)]
        for at in range(0, len(ids), 64):  # batches of realistic size
            part = ids[at:at + 64]
            # plain refs: these commits only make the acks legal (the dedup roles commit the rich
            # refs); rich ones here cost the acker most of its time, and the acks in flight the
            # readers must meet became rare
            flags, raised = _commit_retrying(store, retr, [plain_ref(s) for s in part], False)
            if not raised and not all(flags) and len(anomalies) < MAX_ANOMALIES:
                anomalies.append(
                    ("P4 dedup", f"commit_samples of never-committed ids {short(part)} returned not fresh"))

    try:
        commit_chunk(0)  # before the start, so that the acks begin together
        deadline = shared.start()
        while shared.ackers_go_on(deadline):
            if j % chunk == 0 and j:
                commit_chunk(j)
            shared.begun[w] = j + 1
            retr.call(store.record_train_ack, plan.ids(w, j), global_step=plan.step(w, j),
                      optimizer_durable=plan.flag(w, j))
            j += 1
            shared.done[w] = j
    finally:
        shared.writer_finished()
    return {"w": w, "acks": j, "anomalies": anomalies, "transient": retr.transient}


def role_reader(store, shared: Shared, retr: Retrier, *, plan: AckPlan, rid: str):
    """Poll durable_marker until every writer finished; check each read is whole and fresh."""
    anomalies: List[Tuple[str, str]] = []
    prev = [0] * plan.writers
    reads = overlaps = 0
    checker = MarkerChecker(plan)
    try:
        shared.start()
        while True:
            finished = shared.writers_left.value <= 0
            floor = [shared.done[w] for w in range(plan.writers)]
            during_ack = shared.in_flight(plan.writers)
            m = normalise_marker(retr.call(store.durable_marker))
            reads += 1
            if during_ack:
                overlaps += 1
                shared.overlapped()
            found, k = checker.observe(m)
            for w in range(plan.writers):
                if k[w] < floor[w]:
                    found.append(
                        (
                            "visibility",
                            f"reader {rid}: durable_marker shows {k[w]} acks of writer w{w}, but record_train_ack had "
                            f"returned for {floor[w]} of them before this read began (stale read)",
                        )
                    )
                elif k[w] < prev[w]:
                    found.append(
                        ("visibility", f"reader {rid}: acks of writer w{w} went backwards from {prev[w]} to {k[w]}"))
            seen = [(w, k[w] - 1) for w in range(plan.writers) if k[w] > 0]
            if seen and not found and reads % 4 == 0:
                w, j = seen[reads % len(seen)]
                sid = plan.ids(w, j)[0]
                if not retr.call(store.is_committed, sid):
                    found.append(
                        (
                            "visibility",
                            f"reader {rid}: ack w{w}#{j} is visible but is_committed({sid!r}) is False, though its "
                            "commit returned before the ack",
                        )
                    )
            prev = [max(a, b) for a, b in zip(prev, k)]
            for a in found:
                if len(anomalies) < MAX_ANOMALIES and a not in anomalies:
                    anomalies.append(a)
            if finished or len(anomalies) >= MAX_ANOMALIES:
                break
    finally:
        shared.reader_finished()
    return {"reads": reads, "reads_during_acks": overlaps, "anomalies": anomalies, "transient": retr.transient}


# -- hosting roles in threads -------------------------------------------------------------


def host_roles(target, workdir: str, roles: List[Tuple[Any, Dict[str, Any]]], shared: Shared, *,
               shared_instance: bool = False, switch_interval: Optional[float] = None, keep_store: bool = False):
    """Run each role in its own thread; one store per role, or one for all (shared_instance)."""
    old = sys.getswitchinterval()
    results: List[Optional[Dict[str, Any]]] = [None] * len(roles)
    common = None
    try:
        if shared_instance:
            common = Retrier().call(target.open, workdir)
        if switch_interval:
            sys.setswitchinterval(switch_interval)

        def run_one(i: int, fn, kw) -> None:
            retr = Retrier()
            store = common
            started = False
            try:
                if store is None:
                    store = retr.call(target.open, workdir)
                started = True
                results[i] = {"ok": True, "value": fn(store, shared, retr, **kw)}
            except BaseException as e:  # noqa: BLE001
                shared.abort()
                if not started and fn is role_acker:
                    shared.writer_finished()
                if not started and fn is role_reader:
                    shared.reader_finished()
                results[i] = {
                    "ok": False,
                    "error": f"{type(e).__name__}: {e}",
                    "prop": getattr(e, "prop", None),
                    "traceback": traceback.format_exc(),
                    "role": fn.__name__,
                }
            finally:
                if store is not None and store is not common:
                    safe_close(store)

        threads = [threading.Thread(target=run_one, args=(i, fn, kw), daemon=True) for i, (fn, kw) in enumerate(roles)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    if keep_store:
        return results, common
    if common is not None:
        safe_close(common)
    return results


# -- the final state ---------------------------------------------------------------------


def read_final(target, workdir: str, ids: List[str], store=None) -> Dict[str, Any]:
    retr = Retrier()
    own = store is None
    if own:
        store = retr.call(target.open, workdir)
    try:
        all_ids = [str(i) for i in retr.call(store.all_committed_ids)]
        count = retr.call(store.committed_count)
        marker = normalise_marker(retr.call(store.durable_marker))
        refs = {}
        for sid in ids:
            r = retr.call(store.get_committed, sid)
            refs[sid] = None if r is None else canon_ref(r)
        return {"all_ids": all_ids, "count": count, "marker": marker, "refs": refs}
    finally:
        if own:
            safe_close(store)
