"""The data-parallel consumer: one group process, N rank processes.

The supervisor knows the consumer as one process, the *group*:

    python -m reference_impl.dp_consumer --config run/config.json [--resume] [--incarnation N]

The group imports torch once, binds a listening socket on a free TCP port for
the rendezvous (rank 0's TCPStore serves on that very socket, so no other
process can take the port in between) and forks `world_size` rank processes.
Each rank stays in the group's process group (a signal to that group reaches
every rank) and sets a parent-death signal (PR_SET_PDEATHSIG = SIGKILL), so no
rank outlives its group. The group publishes the ranks' pids in
`<workdir>/consumer.ranks.json` (`{"inc": N, "pids": {"0": pid, ...}}`,
replaced atomically) for rank-targeted faults, then watches:

* rank 0 ends by design (0 completed, 3 fail closed, 4 failed, 2 usage): the
  other ranks were told to stop; the group exits with rank 0's code;
* any rank is killed, loses a peer (a collective failed or timed out), or stops
  sending heartbeats for longer than the collective timeout plus a margin: the
  group SIGKILLs every rank, reaps them and exits 137, so the supervisor
  restarts the whole group with `--resume` and the next incarnation, which
  resumes from the checkpoint and the ledger;
* a rank fails with an unexpected error and none was killed: exit 1 (an error
  the harness reports with the log tail, never a silent restart loop).

Ranks (torch.distributed; one device each, see `rank_device`):

* rank 0 is the only reader of the channel and the only writer of the ledger,
  the checkpoint, the consumed count and the sentinels. It runs the reference
  consumer's phases (`Rank0Consumer`, a `Consumer`): fill one complete
  optimizer window (world_size x train_batch x accumulation refs), write each
  rank's share to its inbox file (`inbox/rank<R>.json`, replaced atomically),
  broadcast a `train` command, train its own share, gather every rank's
  trained ids, then checkpoint (before the ack), ack, publish consumed, release;
* every rank reads its inbox (failpoint `rank.mid_inbox_read`), loads its
  share's features from the feature store, runs forward/backward over
  `accumulation` micro-batches, all-reduces the gradients (average), steps the
  optimizer, emits its own `train` event (step, ids of its share) and reaches
  `rank.after_allreduce_before_ack` before the gather; rank 0 then reaches
  `rank0.after_gather_before_ack`;
* while rank 0 waits for input it broadcasts an `idle` command every
  IDLE_EVERY_S, so the ranks blocked in the command broadcast never reach the
  collective timeout merely because the producer is slow;
* a partial window at the end of input fails closed (exit 3, reason
  `partial_window`): never a silently short optimizer step. Trained samples
  still unacked are checkpointed and acked first.

A rank's collective failure (peer killed, collective timeout) exits with
EXIT_PEER_LOST; the group turns it into a group restart.

The package, by role: `comm` (constants, heartbeat, collectives, inbox
files), `share` (a rank's device, training its share), `rank` (one rank
process: rendezvous, then its loop), `rank0` (rank 0's consumer under the
process loop), `group` (the group process), and `main` here.

Devices: `consumer_device` cpu -> gloo on CPU; cuda (or auto with a GPU) ->
NCCL with one GPU per rank when there are at least world_size GPUs, else gloo
with ranks sharing the GPUs round-robin. Each rank's `start` event says which
(`device`, `dist_backend`, `rank`, `world_size`).
"""

from __future__ import annotations

import os
import sys

from ..config import EXIT_USAGE
from ..process_loop import load_process, process_args
from .comm import CHECKPOINT, RANKS_FILE, Comm, Heartbeat, PeerLost
from .group import group_main
from .share import ShareTrainer, rank_device

__all__ = ["CHECKPOINT", "RANKS_FILE", "Comm", "Heartbeat", "PeerLost", "ShareTrainer", "group_main", "main",
           "rank_device"]


def main(argv=None) -> int:
    args = process_args("python -m reference_impl.dp_consumer",
                        "Data-parallel consumer: a group of world_size ranks (torch.distributed).", argv, resume=True)
    loaded = load_process("consumer", args.config)  # no device: the group does not import torch
    if loaded is None:
        return EXIT_USAGE
    cfg, _ = loaded
    ckpt = cfg.path(CHECKPOINT)  # not consumer.checkpoint_path: the group does not import torch
    if not args.resume and os.path.exists(ckpt):
        print(f"consumer: error: {ckpt} exists; pass --resume to continue that run "
              f"or use a fresh workdir", file=sys.stderr)
        return EXIT_USAGE
    return group_main(args, cfg)
