"""The bug zoo of the pipeline: broken variants of the reference protocol.

Each member is a variant (`reference_impl.variant`): a function returning the
patches that turn the reference into a known-broken protocol, registered in
`ZOO` with the property it violates and the fault that exposes it. The tests
run each through the process engine (and the simulation engine) and assert
the harness reports that property, so the harness proves forever that it
catches these bugs. Several are bugs the reference once had or nearly had.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from reference_impl import consumer as consumer_mod
from reference_impl import controller as controller_mod
from reference_impl import producer as producer_mod
from reference_impl.channel import write_consumed
from reference_impl.controller import Reconciliation


@dataclass(frozen=True)
class ZooMember:
    name: str
    violates: str  # the property the harness must report
    explanation: str
    faults: List[Dict[str, Any]]  # explicit faults (scenario syntax) that expose it
    workload: Optional[Dict[str, Any]] = None

    @property
    def variant(self) -> str:
        return f"tests.pipeline_zoo:{self.name}"


# -- variants ---------------------------------------------------------------

def publish_only_fresh():
    """Publish only the refs whose commit returned fresh (the pre-fix producer).

    A crash after commit and before publish leaves the batch committed but not
    in the channel; the restarted producer's commit says "not fresh", so the
    batch is never published: those samples are lost (P2).
    """
    orig_commit = producer_mod.Producer._step_commit

    def _step_commit(self):
        fresh = self.ctl.commit(self.batch)
        self.h.emit("commit", ids=[r.sample_id for r in self.batch], fresh=list(fresh))
        self.batch = [r for r, f in zip(self.batch, fresh) if f]
        producer_mod.failpoints.hit("producer.after_commit_before_publish")
        self.phase = "publish"
        return "progress"

    del orig_commit
    return [(producer_mod.Producer, "_step_commit", _step_commit)]


def no_roll_forward():
    """Reconcile ignores a checkpoint that is ahead of the ledger.

    Crash between checkpoint and ack: the samples are in the model but not
    acked; without roll-forward they are requeued and trained twice (P1).
    """
    def reconcile(self, checkpoint):
        marker = self.store.durable_marker()
        acked = set(marker.get("acked") or ())
        committed = self.store.all_committed_ids()
        return Reconciliation(released=sorted(acked), requeued=[s for s in committed if s not in acked],
                              marker_step=marker.get("global_step"),
                              checkpoint_step=int(checkpoint["global_step"]) if checkpoint else None)

    return [(controller_mod.DataFlowController, "reconcile", reconcile)]


def ack_before_checkpoint():
    """Ack first, checkpoint second.

    Crash between them: the samples are released but the model on disk does
    not have them; they are never trained again (P2).
    """
    C = consumer_mod.Consumer
    orig = C._step_checkpoint

    def _step_checkpoint(self):
        ids = list(self.unacked)
        self.ctl.ack(ids, global_step=self.global_step, durable=True)
        self.h.emit("ack", step=self.global_step, ids=ids, durable=True)
        consumer_mod.failpoints.hit("consumer.after_ack_before_consumed")
        return orig(self)  # the checkpoint; the reference's ack follows (idempotent)

    return [(C, "_step_checkpoint", _step_checkpoint), _reconcile_trusting_ledger()]


def release_before_ack():
    """Delete feature blobs as soon as a window is trained, before its ack (P7)."""
    C = consumer_mod.Consumer
    orig = C._step_train

    def _step_train(self):
        ids = [r.sample_id for r in self.window]
        status = orig(self)
        self.h.emit("release_features", ids=self.features.delete(ids))
        return status

    return [(C, "_step_train", _step_train)]


def consumed_restarts_at_zero():
    """The consumer re-initialises the consumed sidecar to 0 when it starts.

    After a restart the producer sees in_flight jump up and the consumed count
    goes backwards (P3).
    """
    C = consumer_mod.Consumer
    orig = C._resume

    def _resume(self):
        orig(self)
        write_consumed(self.cfg.workdir, 0)
        self.consumed_written = 0
        self.h.emit("consumed", consumed=0)

    return [(C, "_resume", _resume)]


def _reconcile_trusting_ledger():
    """A reconcile without the "ledger ahead of checkpoint" guard (the bug's
    natural companion: an ack-first design believes the ledger)."""
    def reconcile(self, checkpoint):
        marker = self.store.durable_marker()
        acked = set(marker.get("acked") or ())
        ckpt_step = int(checkpoint["global_step"]) if checkpoint else 0
        rolled = []
        if checkpoint and ckpt_step > (marker.get("global_step") or 0):
            rolled = sorted(set(checkpoint.get("unacked") or ()) - acked)
            self.ack(checkpoint.get("unacked") or (), global_step=ckpt_step, durable=True)
            acked |= set(rolled)
        committed = self.store.all_committed_ids()
        return Reconciliation(released=sorted(acked), requeued=[s for s in committed if s not in acked],
                              rolled_forward=rolled, marker_step=marker.get("global_step"),
                              checkpoint_step=ckpt_step if checkpoint else None)

    return (controller_mod.DataFlowController, "reconcile", reconcile)


def ignore_backpressure():
    """The producer never pauses: in_flight grows past the high watermark (P3)."""
    from reference_impl.flow_control import Backpressure

    return [(Backpressure, "may_publish", lambda self: True)]


def skip_all_committed():
    """Reconcile releases every committed sample, acked or not (P2).

    Samples committed and published but not yet trained at a consumer crash
    are skipped after the restart and never trained.
    """
    orig = controller_mod.DataFlowController.reconcile

    def reconcile(self, checkpoint):
        rec = orig(self, checkpoint)
        return Reconciliation(released=sorted(set(rec.released) | set(rec.requeued)), requeued=[],
                              rolled_forward=rec.rolled_forward, marker_step=rec.marker_step,
                              checkpoint_step=rec.checkpoint_step)

    return [(controller_mod.DataFlowController, "reconcile", reconcile)]


def ack_every_step_checkpoint_every_k():
    """With K > 1, ack at every optimizer step but checkpoint only every K.

    A crash between a checkpoint boundary and the next one loses acked steps
    from the model: released but not in the restored checkpoint (P2).
    """
    C = consumer_mod.Consumer
    orig_train = C._step_train

    def _step_train(self):
        status = orig_train(self)
        if self.phase == "fill" and self.unacked:
            ids = list(self.unacked)
            self.ctl.ack(ids, global_step=self.global_step, durable=True)
            self.h.emit("ack", step=self.global_step, ids=ids, durable=True)
            self.queue.mark_acked(ids)
            self._zoo_early = getattr(self, "_zoo_early", []) + ids
            self.unacked = []
            self._publish_consumed()
        return status

    orig_ckpt = C._step_checkpoint

    def _step_checkpoint(self):
        self.unacked = getattr(self, "_zoo_early", []) + self.unacked
        self._zoo_early = []
        return orig_ckpt(self)

    return [(C, "_step_train", _step_train), (C, "_step_checkpoint", _step_checkpoint),
            _reconcile_trusting_ledger()]


def republish_and_forget_skips():
    """A producer that republishes everything after a restart (at-least-once:
    duplicates in the channel) meets a consumer that forgets a released id
    once it has skipped it: the second copy of a released sample is trained
    again (P1). Hazard (e) of the pipeline issue.
    """
    P = producer_mod.Producer
    orig_init = P.__init__

    def __init__(self, *a, **kw):
        orig_init(self, *a, **kw)
        self.published_ids = set()  # forget what the channel already holds

    from reference_impl.ref_queue import StreamingRefQueue

    orig_next = StreamingRefQueue.next

    def next_(self):
        d = orig_next(self)
        if d is not None and d[0] == "skip-released":
            self.skip_ids.discard(d[2].sample_id)
        return d

    return [(P, "__init__", __init__), (StreamingRefQueue, "next", next_)]


def consumer_without_dedup():
    """The consumer's dedup removed: its queue skips only the samples released at
    reconcile, not a second copy of a sample it took, nor one acked since it started.

    With a polite producer and a reader that never goes back, no run meets a
    sample twice in one incarnation, so nothing notices; a `duplicate` (a record
    written again) or a `replay` (the read position moved back) trains a sample
    twice (P1).
    """
    from reference_impl.contracts import SampleRef
    from reference_impl.ref_queue import StreamingRefQueue

    def next_(self):
        item = self._next_record()
        if item is None:
            return None
        pos, rec = item
        ref = SampleRef.from_dict(rec["ref"])
        self.read_positions = pos + 1
        if ref.sample_id in self.skip_ids:
            self._mark(pos)
            return ("skip-released", pos, ref)
        self._done[pos] = False
        self._waiting.setdefault(ref.sample_id, []).append(pos)
        return ("take", pos, ref)

    def mark_acked(self, sample_ids):
        for sid in sample_ids:
            for pos in self._waiting.pop(sid, ()):
                self._mark(pos)
        return self.consumed

    return [(StreamingRefQueue, "next", next_), (StreamingRefQueue, "mark_acked", mark_acked)]


def fp(point: str, target: str = "consumer", hit: int = 3, inc: int = 0) -> Dict[str, Any]:
    return {"kind": "failpoint", "target": target, "point": point, "action": "crash", "hit": hit,
            "incarnation": inc}


ZOO: Dict[str, ZooMember] = {m.name: m for m in [
    ZooMember("publish_only_fresh", "P2", "a committed-but-unpublished batch is never published after a restart",
              [fp("producer.after_commit_before_publish", "producer", hit=4)]),
    ZooMember("no_roll_forward", "P1", "samples in the checkpoint but not acked are trained twice",
              [fp("consumer.after_checkpoint_before_ack", hit=4)]),
    ZooMember("ack_before_checkpoint", "P2", "samples acked but missing from the checkpoint are lost",
              [fp("consumer.after_ack_before_consumed", hit=5)]),
    ZooMember("release_before_ack", "P7", "feature blobs deleted before the durable ack", []),
    ZooMember("consumed_restarts_at_zero", "P3", "the consumed count goes backwards after a consumer restart",
              [fp("consumer.after_ack_before_release", hit=6)]),
    ZooMember("ignore_backpressure", "P3", "the producer publishes past the high watermark",
              [], {"consumer_step_delay_s": 0.01, "high_watermark": 16, "low_watermark": 8, "samples": 200}),
    ZooMember("skip_all_committed", "P2", "unacked samples are skipped after a restart instead of requeued",
              [fp("consumer.after_read_before_train", hit=5)]),
    ZooMember("republish_and_forget_skips", "P1",
              "a republished copy of a released sample is trained again",
              # The producer's restart must come after the consumer's (which released and forgot the
              # first copies): 96 published needs 32 consumed under the high watermark of 64, where an
              # earlier kill would race the consumer's restart.
              [{"kind": "kill", "target": "consumer", "at_consumed": 16},
               {"kind": "kill", "target": "producer", "at_published": 96}]),
    ZooMember("ack_every_step_checkpoint_every_k", "P2",
              "with K > 1, steps acked between checkpoints are lost by a crash",
              [fp("consumer.after_train_before_checkpoint", hit=6)], {"checkpoint_every": 4}),
]}


# -- the impolite channel: only a duplicate or a replay shows them ---------------------------------

#: Variants that only an impolite channel exposes (scenarios/channel-*.toml), with the property
#: they violate; the reference passes those scenarios.
CHANNEL_ZOO: Dict[str, str] = {"consumer_without_dedup": "P1"}
CHANNEL_SCENARIOS = ("channel-duplicate", "channel-replay")


# -- durability bugs: only a power cut shows them (issue 12) -------------------------
# Each is the reference as it was before its fix; a SIGKILL keeps every page written,
# so only the process engine's power cut (unsynced writes dropped) exposes them.

def features_rename_without_dir_fsync():
    """Feature blobs renamed into place, `features/` never fsynced (the reference before its fix).

    A power cut undoes the renames: committed, published samples have no blob,
    the consumer skips them (`missing_features`) and they are never trained (P2).
    """
    from reference_impl.feature_store import FeatureStore

    return [(FeatureStore, "sync", lambda self: None)]


def channel_created_without_dir_fsync():
    """`channel.jsonl` created (and fsynced) without fsyncing the work dir (the reference before its fix).

    A power cut before anything else fsyncs the work dir removes the channel
    file with every record in it, records the consumer has read already.
    """
    from reference_impl.channel import ChannelWriter

    return [(ChannelWriter, "_make_durable", lambda self: None)]


def roll_forward_to_a_checkpoint_not_durable():
    """Reconcile rolls the ledger forward to the checkpoint it read without making it durable
    (the reference before its fix).

    A consumer killed between the checkpoint's rename and its directory fsync
    leaves a visible, non-durable checkpoint; its successor acks up to it; a
    power cut then reverts the checkpoint below the ledger and the next
    consumer must fail closed (checkpoint_behind_ledger) where the fixed
    reference completes.
    """
    return [(consumer_mod, "sync_checkpoint", lambda cfg: None)]


@dataclass(frozen=True)
class PowerlossMember:
    """A durability bug: `violates` a property, or ends with `outcome` where the reference completes."""
    name: str
    explanation: str
    faults: List[Dict[str, Any]]
    violates: Optional[str] = None
    outcome: Optional[str] = None
    workload: Optional[Dict[str, Any]] = None
    backend: str = "sqlite"

    @property
    def variant(self) -> str:
        return f"tests.pipeline_zoo:{self.name}"


def pc_fp(point: str, target: str = "consumer", hit: int = 1, inc: int = 0) -> Dict[str, Any]:
    return {"kind": "failpoint", "target": target, "point": point, "action": "powercut", "hit": hit,
            "incarnation": inc}


POWERLOSS_ZOO: Dict[str, PowerlossMember] = {m.name: m for m in [
    PowerlossMember("features_rename_without_dir_fsync",
                    "blobs renamed into place without a directory fsync vanish in a power cut: samples lost",
                    [{"kind": "powercut", "at_published": 48}], violates="P2",
                    workload={"consumer_step_delay_s": 0.05}),
    PowerlossMember("roll_forward_to_a_checkpoint_not_durable",
                    "the ledger rolled forward to a checkpoint a power cut then reverts: fail closed",
                    [fp("consumer.mid_checkpoint_replace", hit=3),
                     pc_fp("consumer.after_read_before_train", inc=1)], outcome="fail_closed"),
]}


def scenario_for_powerloss(member: PowerlossMember):
    """The process-engine scenario (power cuts) that exposes `member`."""
    from harness.scenario import scenario_from_dict

    workload = {"samples": 120}
    workload.update(member.workload or {})
    expect: Dict[str, Any] = {"violates": [member.violates] if member.violates else []}
    if member.outcome:
        expect["outcome"] = [member.outcome]
    if member.violates == "P8":
        expect.update(timeout_s=20.0, outcome=["timeout"])
    return scenario_from_dict({
        "name": f"pzoo-{member.name}",
        "description": f"power-loss zoo: {member.explanation}",
        "topology": {"variant": member.variant},
        "store": {"backend": member.backend},
        "workload": workload,
        "faults": {"explicit": member.faults},
        "expect": expect,
    }, source=f"powerloss-zoo:{member.name}")


def scenario_for(member: ZooMember):
    """The process-engine scenario that exposes `member`."""
    from harness.scenario import scenario_from_dict

    workload = {"samples": 120}
    workload.update(member.workload or {})
    return scenario_from_dict({
        "name": f"zoo-{member.name}",
        "description": f"bug zoo: {member.explanation} (expected {member.violates})",
        "topology": {"variant": member.variant},
        "workload": workload,
        "faults": {"explicit": member.faults},
        "expect": {"violates": [member.violates]},
    }, source=f"zoo:{member.name}")


# -- network bugs: only a lost reply shows them -----------------------------------------
# Each is a store client of the reference as it was before its fix, run on the in-memory
# store server behind the harness's node proxies (backend inmemory).

def retry_commit_without_token():
    """The in-memory store's client retries a commit whose reply was lost as a new call.

    Before its fix the client failed closed on any network error (safe, but a lost
    reply stopped training); the first fix retried the call as it was: the retry
    finds the ids committed by its own lost attempt and answers "not fresh", so no
    commit ever answers fresh for them (P4), and a producer that trusted the
    answer would never publish them.
    """
    from reference_impl.stores import server as server_mod

    def commit_samples(self, refs):
        refs = list(refs)
        return self._call("commit_samples", refs, ids=[r.sample_id for r in refs])

    return [(server_mod.RemoteMetadataStore, "commit_samples", commit_samples)]


NETWORK_ZOO: Dict[str, ZooMember] = {m.name: m for m in [
    ZooMember("retry_commit_without_token", "P4", "a commit retried after a lost reply answers not fresh",
              [{"kind": "lost_reply", "target": "producer", "at_published": n} for n in (16, 48, 88)]),
]}


def scenario_for_network(member: ZooMember):
    """The process-engine scenario (in-memory store server behind the proxies) that exposes `member`."""
    from harness.scenario import scenario_from_dict

    return scenario_from_dict({
        "name": f"zoo-{member.name}",
        "description": f"bug zoo: {member.explanation} (expected {member.violates})",
        "topology": {"variant": member.variant},
        "store": {"backend": "inmemory"},
        "workload": {"samples": 120},
        "faults": {"explicit": member.faults},
        "expect": {"violates": [member.violates]},
    }, source=f"zoo:{member.name}")
