"""torchrun support: one process per GPU, DistributedDataParallel, rank 0 writes files."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(device_type: str) -> Distributed:
    """Join the process group that torchrun describes in the environment, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    return Distributed(dist.get_rank(), world_size, local_rank)


def all_reduce_sum(values: torch.Tensor, ctx: Distributed) -> torch.Tensor:
    if ctx.enabled:
        dist.all_reduce(values)
    return values


def barrier(ctx: Distributed) -> None:
    if ctx.enabled:
        dist.barrier()


def shutdown(ctx: Distributed) -> None:
    """Leave the process group together: a rank that tears its gloo group down while another still talks to it
    can bring both down with SIGABRT ("terminate called without an active exception", seen in the DDP test
    under load), so every rank waits at a barrier first."""
    if ctx.enabled:
        dist.barrier()
        dist.destroy_process_group()
