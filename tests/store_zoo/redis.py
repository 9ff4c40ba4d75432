"""Redis stores broken the ways networked stores break.

Each is the reference `RedisMetadataStore` with one piece done wrong, and
declares `store_server = "redis"` so the harness starts a Redis server for it
(in a run, and in certification). `REDIS_ZOO` maps each to the property that
must catch it and the fault that exposes it.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Dict, Iterable, List, Optional, Sequence

from reference_impl import failpoints
from reference_impl.contracts import SampleRef
from reference_impl.stores.base import as_id_set, check_refs
from reference_impl.stores.redis import RedisMetadataStore


class ReferenceRedisStore(RedisMetadataStore):
    """The reference, declared for the harness to start its server (must be certified)."""

    store_server = "redis"


class SeparateCommandsAckStore(ReferenceRedisStore):
    """The ack as three commands (SADD, SET step, SET flag), each its own round trip.

    A crash (or a reader) between them sees the ids without the step: a torn ack (P5).
    """

    def record_train_ack(self, sample_ids: Iterable[str], *, global_step: Optional[int],
                         optimizer_durable: bool) -> None:
        ids = sorted(as_id_set(sample_ids))
        conn = self._connection()
        try:
            if ids:
                conn.sadd(self.keys["acked"], *ids)
            failpoints.hit("store.mid_ack_txn")
            time.sleep(0.002)  # a round trip's worth of window
            if global_step is not None:
                conn.set(self.keys["step"], int(global_step))
            conn.set(self.keys["durable"], "1" if optimizer_durable else "0")
        except Exception:
            self._drop_connection()  # (its one bug is the ack's three commands, not a stale connection)
            raise


class TwoRoundTripMarkerStore(ReferenceRedisStore):
    """The marker read in two round trips (the set, then the step): an ack between them
    gives a snapshot that never existed (P5)."""

    def durable_marker(self) -> Dict[str, Any]:
        conn = self._connection()
        try:
            acked = {x.decode() for x in conn.smembers(self.keys["acked"])}
            time.sleep(0.002)
            step, durable = conn.get(self.keys["step"]), conn.get(self.keys["durable"])
        except Exception:
            self._drop_connection()
            raise
        return {"acked": acked, "global_step": None if step is None else int(step),
                "optimizer_durable": (durable or b"0") == b"1"}


class RetryNotIdempotentCommitStore(ReferenceRedisStore):
    """A commit retried after a lost reply draws a new token per attempt: the retry finds
    the ids committed (by its own first attempt) and answers "not fresh", so no call
    ever returns fresh for them (P4); a producer that publishes only fresh refs loses them."""

    def commit_samples(self, refs: Sequence[SampleRef]) -> List[bool]:
        refs = check_refs(refs)
        if not refs:
            return []
        import json

        from reference_impl.contracts import ref_to_dict

        def attempt_args():
            args: List[Any] = [uuid.uuid4().hex]
            for r in refs:
                args += [r.sample_id, json.dumps(ref_to_dict(r), sort_keys=True)]
            return args

        out = self._run_fresh_token("commit_samples", self._keys("ledger", "refs", "order", "owner"), attempt_args,
                                    [r.sample_id for r in refs])
        return [bool(int(x)) for x in out]

    def _run_fresh_token(self, call, keys, make_args, ids):
        import redis

        deadline = time.monotonic() + self.retry_budget_s
        attempt = 0
        while True:
            attempt += 1
            try:
                self._connection()
                return self._scripts["commit"](keys=keys, args=[self.expected_ledger_id, *make_args()])
            except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
                self._drop_connection()
                self._note(call=call, outcome="indeterminate", attempt=attempt, error=str(e)[:200], ids=list(ids))
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)


class EverysecAsDurableStore(ReferenceRedisStore):
    """Presented as durable on a server with `appendfsync everysec`: answered writes
    are lost by a power cut (P6)."""

    store_persistence = "everysec"


REDIS_ZOO = {
    # name: (property, the fault that exposes it)
    "SeparateCommandsAckStore": ("P5", "a crash inside the ack (failpoint store.mid_ack_txn), or a concurrent reader"),
    "TwoRoundTripMarkerStore": ("P5", "an ack between the two reads (concurrent clients)"),
    "RetryNotIdempotentCommitStore": ("P4", "a lost reply on a commit"),
    "EverysecAsDurableStore": ("P6", "a power cut of the server's files"),
}
