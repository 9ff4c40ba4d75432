"""What the ranks of the data-parallel consumer share: constants, the heartbeat,
the collectives (`Comm`) and the inbox files through which rank 0 hands each
rank its share of a window.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any, Dict, List, Optional

from .. import failpoints
from ..config import RunConfig

CHECKPOINT = os.path.join("checkpoint", "consumer.pt")  # = reference_impl.consumer.CHECKPOINT
RANKS_FILE = "consumer.ranks.json"  # read by harness.process_engine.runner for rank-targeted faults
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
        flat = self.flat_grads(params)
        self._call("gradient all_reduce", self.dist.all_reduce, flat, op=self.dist.ReduceOp.SUM)
        flat.div_(self.world_size)
        self.set_grads(params, flat)

    def flat_grads(self, params: List[Any]) -> Any:
        """The gradients of `params` in one flat tensor on the communication device (zeros where none)."""
        torch = self.torch
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
        return flat.to(self.comm_device)

    def set_grads(self, params: List[Any], flat: Any) -> None:
        """Give each parameter its slice of the flat gradient tensor `flat`."""
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
