"""Process-group set-up and the few collectives the trainer needs. One code path: NCCL on GPU, gloo on CPU."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_rank_zero(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def setup_distributed(timeout_s: float | None = None) -> DistEnv:
    """Join the process group torchrun / the deepspeed launcher / srun set up, or make a one-process group.

    `timeout_s` bounds every collective (train.dist_timeout_s): a rank that died or hangs makes the others raise
    after that long instead of waiting forever. None keeps DeepSpeed's default (30 minutes)."""
    import datetime

    import deepspeed

    if "RANK" not in os.environ:  # plain `cst train`: a single process is a world of one
        # A fresh port every time: a fixed one collides with any other single-process run on the host.
        port = str(_free_port())
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if device.type == "cpu":
        # DeepSpeed JIT-compiles a shared-memory all-reduce for CPU ranks at start-up (a minute of gcc); gloo is
        # enough for CPU runs, so the op is marked unavailable and never built.
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if not dist.is_initialized():
        timeout = {} if timeout_s is None else {"timeout": datetime.timedelta(seconds=timeout_s)}
        deepspeed.init_distributed(dist_backend=backend, **timeout)
    return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, device)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
