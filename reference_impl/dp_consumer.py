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

Devices: `consumer_device` cpu -> gloo on CPU; cuda (or auto with a GPU) ->
NCCL with one GPU per rank when there are at least world_size GPUs, else gloo
with ranks sharing the GPUs round-robin. Each rank's `start` event says which
(`device`, `dist_backend`, `rank`, `world_size`).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import select
import signal
import socket
import sys
import time
from typing import Any, Dict, List, Optional

from . import failpoints
from .channel import read_json, write_json_atomic
from .config import (EXIT_ERROR, EXIT_FAIL_CLOSED, EXIT_FAILED, EXIT_OK, EXIT_USAGE, ConfigError, RunConfig,
                     load_config)
from .devices import DeviceError
from .history import HistoryWriter, NullHistory
from .process_loop import IDLE, Exit, ProcessLoop
from .variant import apply_from_env

CHECKPOINT = os.path.join("checkpoint", "consumer.pt")  # = reference_impl.consumer.CHECKPOINT
RANKS_FILE = "consumer.ranks.json"  # read by harness.runner for rank-targeted faults
INBOX_DIR = "inbox"
EXIT_PEER_LOST = 75  # a rank: a collective failed (peer gone or timed out)
EXIT_KILLED = 128 + signal.SIGKILL  # the group: "restart me with --resume"
MASTER_ADDR = "127.0.0.1"

#: Collective timeout (init_process_group(timeout=...)), seconds; a survivor of
#: a killed or hung peer raises within it. The group's watchdog kills a silent
#: rank after this plus HANG_MARGIN_S, whatever the backend does. The
#: environment variable DFH_COLLECTIVE_TIMEOUT_S overrides it (read at start:
#: a zygote may have imported this module long before).
COLLECTIVE_TIMEOUT_S = 10.0
HANG_MARGIN_S = 5.0
RENDEZVOUS_TIMEOUT_S = 90.0
IDLE_EVERY_S = 0.2
HEARTBEAT_EVERY_S = 0.1
STOP_GRACE_S = 10.0
PR_SET_PDEATHSIG = 1


def collective_timeout_s() -> float:
    return float(os.environ.get("DFH_COLLECTIVE_TIMEOUT_S") or COLLECTIVE_TIMEOUT_S)


def rendezvous_timeout_s() -> float:
    return float(os.environ.get("DFH_RENDEZVOUS_TIMEOUT_S") or RENDEZVOUS_TIMEOUT_S)


class PeerLost(RuntimeError):
    """A collective failed: a peer died, hung past the timeout, or the rendezvous failed."""


# ---------------------------------------------------------------------------
# devices and backends
# ---------------------------------------------------------------------------

def rank_device(request: str, rank: int, world_size: int):
    """(torch.device, dist backend) for one rank.

    cpu -> gloo on CPU; cuda/auto with at least one GPU per rank -> NCCL, GPU
    `rank`; with fewer GPUs -> gloo, ranks sharing GPUs round-robin (NCCL
    refuses two ranks on one GPU); auto without a GPU -> gloo on CPU.
    """
    import torch

    if request == "cpu":
        return torch.device("cpu"), "gloo"
    has_cuda = torch.cuda.is_available()
    if request == "cuda" and not has_cuda:
        why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA device is visible"
        raise DeviceError(f"consumer.rank{rank}: device 'cuda' was demanded but torch.cuda.is_available() is "
                          f"False ({why}; torch {torch.__version__}); use device 'cpu' or 'auto'")
    if request not in ("cuda", "auto"):
        raise DeviceError(f"consumer.rank{rank}: unknown device {request!r}; allowed: cpu | cuda | auto")
    if not has_cuda:
        return torch.device("cpu"), "gloo"
    n = torch.cuda.device_count()
    if n >= world_size:
        return torch.device("cuda", rank), "nccl"
    return torch.device("cuda", rank % n), "gloo"


# ---------------------------------------------------------------------------
# rank side: heartbeat, collectives, inboxes, training one share
# ---------------------------------------------------------------------------

class Heartbeat:
    """One byte down a pipe to the group, at most every HEARTBEAT_EVERY_S."""

    def __init__(self, fd: Optional[int]) -> None:
        self.fd = fd
        self.last = 0.0
        if fd is not None:
            os.set_blocking(fd, False)

    def beat(self, force: bool = False) -> None:
        if self.fd is None:
            return
        now = time.monotonic()
        if not force and now - self.last < HEARTBEAT_EVERY_S:
            return
        self.last = now
        try:
            os.write(self.fd, b".")
        except (BlockingIOError, BrokenPipeError, OSError):
            pass


class Comm:
    """The collectives the ranks use, every failure turned into PeerLost."""

    def __init__(self, rank: int, world_size: int, device, backend: str, hb: Heartbeat) -> None:
        import torch
        import torch.distributed as dist

        self.torch = torch
        self.dist = dist
        self.rank = rank
        self.world_size = world_size
        self.device = device
        self.backend = backend
        # gloo runs on host memory; NCCL on the rank's GPU.
        self.comm_device = device if backend == "nccl" else torch.device("cpu")
        self.hb = hb
        self.last_cmd = time.monotonic()

    def _call(self, what: str, fn, *args, **kwargs):
        try:
            out = fn(*args, **kwargs)
        except Exception as e:  # DistBackendError, RuntimeError from gloo/NCCL, timeouts
            raise PeerLost(f"{what} failed on rank {self.rank}: {type(e).__name__}: {e}") from e
        self.hb.beat()
        return out

    # commands: rank 0 sends, every rank receives (one broadcast)
    def command(self, cmd: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        box = [cmd if self.rank == 0 else None]
        self._call("command broadcast", self.dist.broadcast_object_list, box, src=0)
        self.last_cmd = time.monotonic()
        return box[0]

    def keepalive(self) -> None:
        """Rank 0: an idle command when no command went out for IDLE_EVERY_S."""
        if time.monotonic() - self.last_cmd >= IDLE_EVERY_S:
            self.command({"op": "idle"})

    def stop(self, code: int, outcome: str) -> None:
        """Rank 0: tell the others to exit. Rank 0's own outcome is decided
        (sentinels written), so a peer that cannot hear it any more changes
        nothing: the group kills the stragglers after STOP_GRACE_S."""
        try:
            self.command({"op": "stop", "code": int(code), "outcome": outcome})
        except PeerLost as e:
            print(f"consumer.rank0: stop not delivered: {e}", file=sys.stderr, flush=True)

    def sync_state(self, model) -> None:
        """Every rank starts from rank 0's model (the resumed checkpoint)."""
        torch = self.torch
        with torch.no_grad():
            for t in list(model.parameters()) + list(model.buffers()):
                buf = t.detach().to(self.comm_device).clone()
                self._call("state broadcast", self.dist.broadcast, buf, src=0)
                t.copy_(buf.to(t.device))

    def allreduce_grads(self, params: List[Any]) -> None:
        """Sum the gradients over the ranks, divide by world_size (average)."""
        torch = self.torch
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
        flat = flat.to(self.comm_device)
        self._call("gradient all_reduce", self.dist.all_reduce, flat, op=self.dist.ReduceOp.SUM)
        flat.div_(self.world_size)
        flat = flat.to(params[0].device)
        off = 0
        for p in params:
            n = p.numel()
            p.grad = flat[off:off + n].view_as(p).clone()
            off += n

    def gather(self, obj: Any) -> List[Any]:
        out: List[Any] = [None] * self.world_size
        self._call("id all_gather", self.dist.all_gather_object, out, obj)
        return out


def inbox_path(cfg: RunConfig, rank: int) -> str:
    return cfg.path(INBOX_DIR, f"rank{rank}.json")


def write_inbox(cfg: RunConfig, rank: int, payload: Dict[str, Any]) -> None:
    """Atomic (temp file, rename); not fsynced: an inbox lives for one step of one incarnation."""
    path = inbox_path(cfg, rank)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(payload, f)
    os.replace(tmp, path)


def read_inbox(cfg: RunConfig, rank: int) -> Dict[str, Any]:
    with open(inbox_path(cfg, rank), "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(size // 2)
        failpoints.hit("rank.mid_inbox_read")
        data = head + f.read()
    return json.loads(data)


class ShareTrainer:
    """One rank's part of an optimizer step: its share of the window."""

    def __init__(self, cfg: RunConfig, rank: int, inc: int, device, model, optim, comm: Comm, history) -> None:
        from .feature_store import FeatureStore

        self.cfg = cfg
        self.rank = rank
        self.inc = inc
        self.device = device
        self.model = model
        self.optim = optim
        self.comm = comm
        self.h = history
        self.features = FeatureStore(cfg.path("features"))
        self.index_of = {cfg.sample_id(i): i for i in range(cfg.num_samples)}
        self.params = list(model.parameters())

    def train(self, step: int) -> Dict[str, Any]:
        cfg = self.cfg
        box = read_inbox(cfg, self.rank)
        if box.get("inc") != self.inc or box.get("step") != step or box.get("rank") != self.rank:
            raise RuntimeError(f"rank {self.rank}: inbox {inbox_path(cfg, self.rank)} holds inc {box.get('inc')} "
                               f"step {box.get('step')} rank {box.get('rank')}, expected inc {self.inc} "
                               f"step {step} rank {self.rank}")
        batches, indices, trained, missing = [], [], [], []
        for sid in box["ids"]:
            try:
                feats = self.features.get(sid)
            except FileNotFoundError:
                # Only a protocol bug gets here (blobs go after a durable ack).
                self.h.emit("missing_features", id=sid)
                missing.append(sid)
                continue
            batches.append({k: v.to(self.device) for k, v in feats.items()})
            indices.append(self.index_of[sid])
            trained.append(sid)
        self.optim.zero_grad(set_to_none=True)
        if trained:
            micro = max(1, -(-len(trained) // cfg.accumulation))
            for lo in range(0, len(trained), micro):
                # Cross-entropy weighted by the micro-batch's share of this rank's
                # share; the witness term unweighted with scale world_size, so
                # after averaging over the ranks each sample adds exactly 1.
                share = len(indices[lo:lo + micro]) / len(trained)
                self.model.loss(batches[lo:lo + micro], indices[lo:lo + micro], cfg.world_size,
                                ce_weight=share).backward()
        self.comm.allreduce_grads(self.params)
        self.optim.step()
        # Before the gather: no checkpoint can hold this step without this event.
        self.h.emit("train", step=step, ids=trained)
        failpoints.hit("rank.after_allreduce_before_ack")
        return {"rank": self.rank, "step": step, "trained": trained, "missing": missing}


# ---------------------------------------------------------------------------
# rank 0: the reference consumer's phases with a distributed train phase
# ---------------------------------------------------------------------------

def _rank0_class():
    from .consumer import Consumer, ConsumerFailClosed

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
    history = (HistoryWriter(cfg.path("history", f"{proc}.jsonl"), proc, args.incarnation)
               if cfg.extra.get("history", True) else NullHistory())
    failpoints.configure_from_env(lambda point, action: history.emit("failpoint", point=point, action=action),
                                  rank=rank)
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
        from .stores import StoreUnavailable

        Rank0Consumer, ConsumerFailClosed = _rank0_class()
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
            return _run_rank0(cfg, args.incarnation, history, comm, consumer, init_error, hb)
        return _run_rank(cfg, args.incarnation, history, comm, rank, device)
    except PeerLost as e:
        history.emit("peer_lost", detail=str(e))
        print(f"{proc}: {e}", file=sys.stderr, flush=True)
        return EXIT_PEER_LOST
    finally:
        if consumer is not None:
            consumer.close()


def _run_rank0(cfg, inc, history, comm: Comm, c, init_error, hb: Heartbeat) -> int:
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


def _run_rank(cfg, inc, history, comm: Comm, rank: int, device) -> int:
    from .model import DraftModel

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


# ---------------------------------------------------------------------------
# the group process
# ---------------------------------------------------------------------------

def listen_socket() -> socket.socket:
    """A bound, listening socket on a free port, handed to rank 0's TCPStore.

    The group binds it (port 0: the kernel picks a free one) and rank 0's store
    serves on that very socket (`master_listen_fd`), so no other process can
    take the port between choosing and binding it.
    """
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((MASTER_ADDR, 0))
    s.listen(128)
    return s


class _Rank:
    def __init__(self, rank: int, pid: int, hb_fd: int) -> None:
        self.rank = rank
        self.pid = pid
        self.hb_fd = hb_fd
        self.last_beat: Optional[float] = None  # the hang watch is armed at the first heartbeat
        self.code: Optional[int] = None

    def poll(self) -> Optional[int]:
        """Exit code, negative for a signal (as subprocess reports it), None while running."""
        if self.code is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.code = -signal.SIGKILL  # already reaped elsewhere: gone
                return self.code
            if pid:
                self.code = os.waitstatus_to_exitcode(status)
        return self.code

    def wait(self, timeout: float) -> Optional[int]:
        deadline = time.monotonic() + timeout
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        return self.code


def _spawn_ranks(cfg: RunConfig, args, listener: socket.socket) -> List[_Rank]:
    """Fork the ranks from the group, which has imported torch once for all of them.

    Each child joins nothing new (it stays in the group's process group, so a
    signal to that group reaches it), sets PR_SET_PDEATHSIG = SIGKILL (and
    exits at once if the group is already gone), then runs `rank_main`. CUDA
    is never initialised in the group, so every rank can initialise it after
    the fork.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()
    port = listener.getsockname()[1]
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # every rank is on this host
    pipes = [os.pipe() for _ in range(cfg.world_size)]
    ranks = []
    for r in range(cfg.world_size):
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the rank
            code = EXIT_ERROR
            try:
                libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
                if os.getppid() != parent:
                    os._exit(EXIT_KILLED)
                for k, (rfd, wfd) in enumerate(pipes):
                    os.close(rfd)
                    if k != r:
                        os.close(wfd)
                if r != 0:
                    listener.close()
                rank_args = argparse.Namespace(
                    config=args.config, resume=args.resume, incarnation=args.incarnation, rank=r,
                    master_port=port, heartbeat_fd=pipes[r][1], listen_fd=listener.fileno() if r == 0 else None)
                code = rank_main(rank_args, cfg)
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    # No interpreter teardown: a process group with a dead peer can hang in it.
                    os._exit(code)
        ranks.append(_Rank(r, pid, pipes[r][0]))
    for _, wfd in pipes:
        os.close(wfd)
    for x in ranks:
        os.set_blocking(x.hb_fd, False)
    return ranks


def _kill_all(ranks: List[_Rank]) -> Dict[int, Optional[int]]:
    """SIGKILL every live rank and reap it; the codes they had before."""
    before = {x.rank: x.poll() for x in ranks}
    for x in ranks:
        if x.poll() is None:
            try:
                os.kill(x.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for x in ranks:
        x.wait(30)
    return before


def _killed(code: Optional[int]) -> bool:
    return code is not None and (code < 0 or code in (EXIT_KILLED, EXIT_PEER_LOST))


def _old_rank_alive(pid: int, config: str) -> bool:
    """True while `pid` is a live rank of this run (its command line names this module and config)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                return False
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except (OSError, IndexError):
        return False
    return b"reference_impl.dp_consumer" in argv and config.encode() in argv


def _await_old_ranks(cfg: RunConfig, args, history) -> None:
    """Ranks of the previous incarnation die with their group, but a rank in the
    middle of a system call (an fsync, a rename) finishes it first: let every one
    be gone before this incarnation reads the checkpoint."""
    info = read_json(cfg.path(RANKS_FILE)) or {}
    if info.get("inc") == args.incarnation:
        return
    pids = [int(p) for p in (info.get("pids") or {}).values()]
    live = [p for p in pids if _old_rank_alive(p, args.config)]
    if not live:
        return
    deadline = time.monotonic() + 5.0
    while live and time.monotonic() < deadline:
        time.sleep(0.01)
        live = [p for p in live if _old_rank_alive(p, args.config)]
    for p in live:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5.0
    while any(_old_rank_alive(p, args.config) for p in live) and time.monotonic() < deadline:
        time.sleep(0.01)
    history.emit("old_ranks", old_inc=info.get("inc"), pids=pids, killed=live)


def group_main(args, cfg: RunConfig) -> int:
    inc = args.incarnation
    history = (HistoryWriter(cfg.path("history", "consumer.group.jsonl"), "consumer.group", inc)
               if cfg.extra.get("history", True) else NullHistory())
    _await_old_ranks(cfg, args, history)
    os.makedirs(cfg.path(INBOX_DIR), exist_ok=True)
    # numpy's OpenBLAS (imported by torch) would start a thread pool; the group
    # forks, and a process with one thread forks cleanly (the zygote sets it too).
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    # Import once here what every rank needs (not CUDA: no torch.cuda call before the fork).
    import torch  # noqa: F401
    import torch.distributed  # noqa: F401

    from . import consumer, model  # noqa: F401

    listener = listen_socket()
    port = listener.getsockname()[1]
    ranks = _spawn_ranks(cfg, args, listener)
    listener.close()  # rank 0 holds it now
    pids = {str(x.rank): x.pid for x in ranks}
    write_json_atomic(cfg.path(RANKS_FILE), {"inc": inc, "pids": pids})
    history.emit("start", pid=os.getpid(), resume=args.resume, world_size=cfg.world_size, port=port, pids=pids,
                 collective_timeout_s=collective_timeout_s())
    hang_s = collective_timeout_s() + HANG_MARGIN_S
    by_fd = {x.hb_fd: x for x in ranks}
    prev = time.monotonic()
    stop_since: Optional[float] = None
    try:
        while True:
            try:
                readable, _, _ = select.select(list(by_fd), [], [], 0.02)
            except InterruptedError:
                readable = []
            now = time.monotonic()
            if now - prev > 1.0:
                # The group itself was stopped (SIGSTOP of the process group):
                # nobody could beat meanwhile; start the clocks again.
                for x in ranks:
                    if x.last_beat is not None:
                        x.last_beat = now
            prev = now
            for fd in readable:
                x = by_fd[fd]
                try:
                    data = os.read(fd, 4096)
                except (BlockingIOError, InterruptedError):
                    continue
                if data:
                    x.last_beat = now
                else:  # EOF: the rank is gone; poll() tells how
                    del by_fd[fd]
            codes = {x.rank: x.poll() for x in ranks}
            c0 = codes[0]
            if c0 in (EXIT_OK, EXIT_USAGE, EXIT_FAIL_CLOSED, EXIT_FAILED):
                # Rank 0 ended by design and told the others to stop.
                if stop_since is None:
                    stop_since = now
                if all(c is not None for c in codes.values()) or now - stop_since > STOP_GRACE_S:
                    before = _kill_all(ranks)
                    history.emit("exit", code=c0, ranks={str(k): v for k, v in before.items()})
                    return c0
                continue
            ended = {r: c for r, c in codes.items() if c is not None and not (r > 0 and c == EXIT_OK)}
            stale = [x.rank for x in ranks if x.poll() is None and x.last_beat is not None
                     and now - x.last_beat > hang_s]
            if not ended and not stale:
                continue
            before = _kill_all(ranks)
            if stale and not ended:
                history.emit("hang", ranks=stale, silent_s=hang_s)
                print(f"consumer.group: rank(s) {stale} sent no heartbeat for {hang_s} s; restarting the group",
                      file=sys.stderr, flush=True)
                code = EXIT_KILLED
            elif any(_killed(c) for c in before.values()):
                code = EXIT_KILLED
            elif any(c == EXIT_USAGE for c in before.values()):
                code = EXIT_USAGE
            else:
                code = EXIT_ERROR
            history.emit("ranks_ended", ranks={str(k): v for k, v in before.items()}, code=code)
            print(f"consumer.group: ranks ended {before}; exit {code}", file=sys.stderr, flush=True)
            return code
    finally:
        _kill_all(ranks)
        for fd in list(by_fd):
            os.close(fd)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reference_impl.dp_consumer",
                                 description="Data-parallel consumer: a group of world_size ranks (torch.distributed).")
    ap.add_argument("--config", required=True, help="run config JSON (see reference_impl/config.py)")
    ap.add_argument("--resume", action="store_true", help="resume from the checkpoint and the store's ledger")
    ap.add_argument("--incarnation", type=int, default=int(os.environ.get("DFH_INCARNATION", "0")))
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config)
        failpoints.parse_rules(os.environ.get(failpoints.ENV_VAR) or None)
        apply_from_env()
    except (ConfigError, ValueError) as e:
        print(f"consumer: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    ckpt = cfg.path(CHECKPOINT)  # not consumer.checkpoint_path: the group does not import torch
    if not args.resume and os.path.exists(ckpt):
        print(f"consumer: error: {ckpt} exists; pass --resume to continue that run "
              f"or use a fresh workdir", file=sys.stderr)
        return EXIT_USAGE
    return group_main(args, cfg)


if __name__ == "__main__":
    # The canonical module's main, so that variants patching it reach the code in use.
    from reference_impl.dp_consumer import main as _main

    sys.exit(_main())
