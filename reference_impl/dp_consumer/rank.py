"""One rank process of the data-parallel consumer: the rendezvous, then rank 0's
loop (`rank0`) or, for the other ranks, the commands rank 0 broadcasts.
"""

from __future__ import annotations

import os
import sys
import time

from ..config import EXIT_OK, EXIT_USAGE, RunConfig
from ..devices import DeviceError
from ..process_loop import open_history
from .comm import EXIT_PEER_LOST, MASTER_ADDR, Comm, Heartbeat, PeerLost, collective_timeout_s, rendezvous_timeout_s
from .rank0 import rank0_class, run_rank0
from .share import ShareTrainer, rank_device


def _barrier(store, rank: int, world_size: int, hb: Heartbeat, inc: int) -> None:
    """Wait until every rank reached the rendezvous (a slow start is not a collective timeout)."""
    key = f"arrived.{inc}"
    store.add(key, 1)
    limit = rendezvous_timeout_s()
    deadline = time.monotonic() + limit
    while int(store.add(key, 0)) < world_size:
        hb.beat()
        if time.monotonic() > deadline:
            raise PeerLost(f"rank {rank}: not every rank reached the rendezvous in {limit} s")
        time.sleep(0.02)


def rank_main(args, cfg: RunConfig) -> int:
    rank, world = args.rank, cfg.world_size
    proc = f"consumer.rank{rank}"
    history = open_history(cfg, proc, args.incarnation, rank=rank)
    hb = Heartbeat(args.heartbeat_fd)  # the group's hang watch starts at the first beat
    try:
        device, backend = rank_device(cfg.consumer_device, rank, world)
    except DeviceError as e:
        print(f"{proc}: error: {e}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    import datetime

    import torch
    import torch.distributed as dist

    if device.type == "cuda":
        torch.cuda.set_device(device)
    history.emit("start", pid=os.getpid(), resume=args.resume, device=str(device), backend=cfg.backend,
                 dist_backend=backend, rank=rank, world_size=world, local_rank=rank,
                 cuda_devices=torch.cuda.device_count() if torch.cuda.is_available() else 0)
    hb.beat(force=True)

    consumer = None
    init_error = None
    if rank == 0:
        from ..stores import StoreUnavailable

        Rank0Consumer, ConsumerFailClosed = rank0_class()
        if os.environ.get("DFH_STORE_NODE"):  # a networked store: this rank is its own node
            os.environ["DFH_STORE_NODE"] = f"consumer.rank{rank}"
        try:
            consumer = Rank0Consumer(cfg, incarnation=args.incarnation, history=history)
        except ConsumerFailClosed as e:
            init_error = (e.reason, e.detail)
        except StoreUnavailable as e:
            init_error = ("store_unavailable", str(e))
        hb.beat(force=True)

    try:
        try:
            store = dist.TCPStore(MASTER_ADDR, args.master_port, world, is_master=rank == 0,
                                  timeout=datetime.timedelta(seconds=rendezvous_timeout_s()), wait_for_workers=False,
                                  master_listen_fd=args.listen_fd if rank == 0 else None)
            _barrier(store, rank, world, hb, args.incarnation)
            dist.init_process_group(backend, store=store, rank=rank, world_size=world,
                                    timeout=datetime.timedelta(seconds=collective_timeout_s()))
        except PeerLost:
            raise
        except Exception as e:
            raise PeerLost(f"rank {rank}: rendezvous on port {args.master_port} failed: {type(e).__name__}: {e}")
        comm = Comm(rank, world, device, backend, hb)
        if rank == 0:
            return run_rank0(cfg, args.incarnation, history, comm, consumer, init_error, hb)
        return _run_rank(cfg, args.incarnation, history, comm, rank, device)
    except PeerLost as e:
        history.emit("peer_lost", detail=str(e))
        print(f"{proc}: {e}", file=sys.stderr, flush=True)
        return EXIT_PEER_LOST
    finally:
        if consumer is not None:
            consumer.close()


def _run_rank(cfg, inc, history, comm: Comm, rank: int, device) -> int:
    from ..model import DraftModel

    cmd = comm.command()
    if cmd["op"] == "stop":
        history.emit("exit", code=EXIT_OK, outcome=cmd.get("outcome"), group_code=cmd.get("code"))
        return EXIT_OK
    model = DraftModel(cfg.vocab, cfg.hidden, cfg.num_samples, cfg.seed).to(device)
    optim = model.optimizer(cfg.lr)
    comm.sync_state(model)
    trainer = ShareTrainer(cfg, rank, inc, device, model, optim, comm, history)
    while True:
        cmd = comm.command()
        op = cmd["op"]
        if op == "idle":
            continue
        if op == "train":
            comm.gather(trainer.train(int(cmd["step"])))
        elif op == "stop":
            history.emit("exit", code=EXIT_OK, outcome=cmd.get("outcome"), group_code=cmd.get("code"))
            return EXIT_OK
        else:
            raise RuntimeError(f"rank {rank}: unknown command {cmd!r}")
