"""Rank 0 of the data-parallel consumer: the reference consumer's phases
(`Rank0Consumer`, a `Consumer`) over the whole group, under the one process
loop (`reference_impl.process_loop`), telling the other ranks what to do.
"""

from __future__ import annotations

import time
from typing import List, Optional

from .. import failpoints
from ..process_loop import IDLE, Exit, ProcessLoop
from .comm import Comm, Heartbeat, write_inbox
from .share import ShareTrainer

# ---------------------------------------------------------------------------
# rank 0: the reference consumer's phases with a distributed train phase
# ---------------------------------------------------------------------------

def rank0_class():
    from ..consumer import Consumer, ConsumerFailClosed

    class Rank0Consumer(Consumer):
        """The reference consumer whose train phase runs on every rank.

        fill, checkpoint, ack, consumed and release are the reference's own
        (so protocol variants patching `Consumer` reach the group too); the
        train phase dispatches one complete window and gathers the ids.
        """

        comm: Optional[Comm] = None
        trainer: Optional[ShareTrainer] = None

        def _step_train(self) -> str:
            cfg = self.cfg
            need = cfg.window
            if len(self.window) < need:
                # Only at the end of input (fill takes complete windows otherwise).
                self._final_window = False
                if self.unacked:
                    # Make the trained samples durable first, then come back here.
                    self.phase = "checkpoint"
                    return "progress"
                raise ConsumerFailClosed(
                    "partial_window",
                    f"input ended with {len(self.window)} refs ({', '.join(r.sample_id for r in self.window[:8])}"
                    f"{', ...' if len(self.window) > 8 else ''}) but an optimizer window is {need} = "
                    f"{cfg.world_size} ranks x {cfg.train_batch} x {cfg.accumulation}; a short data-parallel "
                    f"step is refused")
            refs, self.window = self.window[:need], self.window[need:]
            world = cfg.world_size
            per = need // world
            step = self.global_step + 1
            shares = [[r.sample_id for r in refs[k * per:(k + 1) * per]] for k in range(world)]
            for k in range(world):
                write_inbox(cfg, k, {"inc": self.inc, "step": step, "rank": k, "ids": shares[k]})
            self.comm.command({"op": "train", "step": step})
            mine = self.trainer.train(step)
            gathered = self.comm.gather(mine)
            failpoints.hit("rank0.after_gather_before_ack")
            trained: List[str] = []
            missing: List[str] = []
            for k, g in enumerate(gathered):
                if not g or g.get("rank") != k or g.get("step") != step or \
                        sorted(g["trained"] + g["missing"]) != sorted(shares[k]):
                    raise RuntimeError(f"rank 0: rank {k} reported {g!r} for step {step}, its share was {shares[k]}")
                trained.extend(g["trained"])
                missing.extend(g["missing"])
            if missing:
                self.queue.mark_acked(missing)
            self.global_step = step
            self.unacked.extend(trained)
            failpoints.hit("consumer.after_train_before_checkpoint")
            self.last_progress = self.clock()
            if cfg.consumer_step_delay_s:
                time.sleep(cfg.consumer_step_delay_s)
            due = self.global_step - self.acked_step >= cfg.checkpoint_every
            self.phase = "checkpoint" if (self.unacked and due) else "fill"
            return "progress"

    return Rank0Consumer, ConsumerFailClosed


def run_rank0(cfg, inc, history, comm: Comm, c, init_error, hb: Heartbeat) -> int:
    """Rank 0: the process loop (`process_loop.ProcessLoop`) around the consumer, telling the
    other ranks what to do; how the loop ends is sent to them as the `stop` command."""
    loop = ProcessLoop("consumer.rank0", cfg, history, c)
    if init_error is not None:
        ended = loop.fail_closed(*init_error)
        comm.stop(int(ended.code), ended.outcome)
        return int(ended.code)
    comm.command({"op": "init", "step": c.global_step})
    comm.sync_state(c.model)
    c.comm = comm
    c.trainer = ShareTrainer(cfg, 0, inc, c.device, c.model, c.optim, comm, history)
    while True:
        r = loop.step()
        if isinstance(r, Exit):
            comm.stop(int(r.code), r.outcome)
            return int(r.code)
        hb.beat()
        if r == IDLE:
            time.sleep(cfg.poll_interval_s)
        comm.keepalive()
