"""Data-parallel training: one job, several processes (DDP, launched by torchrun).

The training loop is written once, for one process; what changes with N processes is a handful of
agreements, each a small method here, so that the loop reads the same either way:

- **The data.** `training.batch_size` stays the *global* batch: each step, the epoch's batch
  `order[i*B:(i+1)*B]` (the order is still a pure function of (seed, epoch)) is dealt out strided,
  rank r taking positions r, r+N, r+2N, ... (`shard`). The gradients DDP averages are then the
  full batch's mean gradient (the last, shorter batch is weighted by `grad_scale`), so a run with
  N processes follows the 1-process run with the same batch and learning rate, up to the order of
  floating-point sums: the learning rate needs no change with N.
- **What is reported.** Per-step losses stay on each rank; a log row or an epoch's mean adds them
  up across ranks (`sum`) at the rows only, never per step.
- **When to stop.** Rank 0 alone reads the job's stop requests (cancel, preemption, a lost lease,
  the time limit); its decision reaches every rank at the same step boundary (`agree`, a host-side
  broadcast on a gloo group that does not wait for the GPU), so every rank checkpoints and stops
  at the same step and no rank waits for a peer that has left.
- **What is saved and evaluated.** Buffers (BatchNorm's running statistics) are made rank 0's
  before an evaluation or a checkpoint (`sync_buffers`); rank 0 evaluates and shares the row
  (`from_main`), and writes the checkpoint with every rank's random-generator state (`gather`), so
  a resume continues each rank's dropout stream exactly.

`Solo` is the one-process case: every agreement is the identity, and the loop costs nothing more.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")

#: The stop reason `agree` uses for the time limit (rank 0's clock decides for every rank).
TIME_LIMIT = "time_limit"


class Solo:
    """A job in one process: each agreement is the identity (no communication at all)."""

    rank = 0
    world = 1
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        return model

    def shard(self, order: torch.Tensor, batch_size: int) -> torch.Tensor:
        return order

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def agree(self, reason: str | None) -> str | None:
        return reason

    def from_main(self, fn: Callable[[], T]) -> T:
        return fn()

    def gather(self, obj: T) -> list[T] | None:
        return [obj]

    def sync_buffers(self, model: nn.Module) -> None:
        return None

    def wait_for_main(self) -> None:
        return None

    def barrier(self) -> None:
        return None

    def main_done(self) -> None:
        return None

    def weights_digests(self, model: nn.Module) -> list[str]:
        return [state_digest(model)]

    def describe(self) -> dict[str, Any] | None:
        return None


SOLO = Solo()


@dataclass(frozen=True)
class GroupEnv:
    """This process's place in the group, as torchrun's environment states it."""

    rank: int
    world: int
    local_rank: int

    @classmethod
    def read(cls, environ: dict[str, str] | None = None) -> GroupEnv | None:
        """None outside a torchrun group (or in a group of one)."""
        env = os.environ if environ is None else environ
        if "RANK" not in env or "WORLD_SIZE" not in env:
            return None
        world = int(env["WORLD_SIZE"])
        if world <= 1:
            return None
        return cls(int(env["RANK"]), world, int(env.get("LOCAL_RANK", env["RANK"])))


class DataParallel(Solo):
    """A job's rank in a torchrun group: DDP for the gradients (NCCL on CUDA, gloo on CPU) and a
    gloo group for the host-side agreements.

    Two timeouts: `timeout_s` bounds every training collective (a hung or vanished peer fails
    the attempt instead of blocking it forever); the control group's `wait_s` bounds what one
    rank legitimately waits for while another works alone (rank 0 preparing the data, writing a
    checkpoint or evaluating)."""

    def __init__(
        self, env: GroupEnv, device: torch.device, *, timeout_s: float, wait_s: float
    ) -> None:
        self.rank, self.world, self.local_rank = env.rank, env.world, env.local_rank
        self.device = device
        self.backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(
            self.backend,
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=device if device.type == "cuda" else None,
        )
        #: Host-side agreements at every step: bounded like the training's collectives.
        self.control = _gloo_group(timeout_s)
        #: The other ranks' waits while rank 0 works alone (the data, an evaluation, a
        #: checkpoint), bounded by `wait_s`: only ever a broadcast from rank 0, which rank 0
        #: sends without waiting, so rank 0 itself never waits on a silent peer for that long.
        self.patient = _gloo_group(max(wait_s, timeout_s))
        self._go = torch.zeros(1, dtype=torch.int64)
        #: Every process's pid, on rank 0 (the job's log names them).
        self.pids = self.gather(os.getpid())
        self._flag = torch.zeros(1, dtype=torch.int64)

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

    def wrap(self, model: nn.Module) -> nn.Module:
        """DDP around the model (every rank's weights are rank 0's from here on)."""
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def shard(self, order: torch.Tensor, batch_size: int) -> torch.Tensor:
        """This rank's share of the epoch's order: from each global batch, the positions
        rank, rank+N, ... (`batch_size` is the global batch, a multiple of N). The last global
        batch may be shorter; `samples_per_epoch` keeps at least one sample per rank in it."""
        n = int(order.shape[0])
        full = n - n % batch_size
        head = order[:full].view(-1, batch_size)[:, self.rank :: self.world].reshape(-1)
        return torch.cat([head, order[full:][self.rank :: self.world]])

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        out = t.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    def agree(self, reason: str | None) -> str | None:
        """Rank 0's stop decision, on every rank (one small broadcast per step boundary)."""
        codes = _STOP_CODES
        if self.rank == 0:
            self._flag[0] = codes.index(reason) if reason in codes else len(codes)
        dist.broadcast(self._flag, src=0, group=self.control)
        code = int(self._flag[0])
        if code == 0:
            return None
        if code < len(codes):
            return codes[code]
        return "cancelled"  # a reason this build does not know: stop safely, with a checkpoint

    def from_main(self, fn: Callable[[], T]) -> T:
        """`fn()` run on rank 0 only; its (picklable, our own) result on every rank."""
        box: list[Any] = [fn() if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0, group=self.patient)
        return box[0]  # type: ignore[no-any-return]

    def gather(self, obj: T) -> list[T] | None:
        """Every rank's `obj`, in rank order, on rank 0 (None elsewhere)."""
        out: list[Any] | None = [None] * self.world if self.rank == 0 else None
        dist.gather_object(obj, out, dst=0, group=self.control)
        return out

    def barrier(self) -> None:
        """The other ranks wait here until rank 0 has done its own work (and called it too)."""
        dist.broadcast(self._go, src=0, group=self.patient)

    def sync_buffers(self, model: nn.Module) -> None:
        """Make every rank's buffers rank 0's (the last step updated each rank's own)."""
        for b in model.buffers():
            dist.broadcast(b.data, src=0)

    def wait_for_main(self) -> None:
        """The other ranks wait here while rank 0 prepares what they then read (the data)."""
        if self.rank != 0:
            self.barrier()

    def main_done(self) -> None:
        if self.rank == 0:
            self.barrier()

    def weights_digests(self, model: nn.Module) -> list[str]:
        """Every rank's digest of its weights and buffers, on rank 0 (a check that DDP kept the
        replicas identical; a mismatch would mean a non-deterministic or unsynchronised model)."""
        found = self.gather(state_digest(model))
        return list(found) if found is not None else []

    def describe(self) -> dict[str, Any]:
        return {"processes": self.world, "backend": self.backend, "pids": self.pids}


#: Stop reasons `agree` carries as a code (index 0: go on).
_STOP_CODES: tuple[str | None, ...] = (None, "cancelled", "preempted", "lease_lost", TIME_LIMIT)


def _gloo_group(timeout_s: float) -> dist.ProcessGroup:
    group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s))
    assert isinstance(group, dist.ProcessGroup)  # every rank is a member
    return group


def state_digest(model: nn.Module) -> str:
    """sha256 over a model's state (names, dtypes, shapes, bytes), independent of the device."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
