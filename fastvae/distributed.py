"""Multi-process set-up through ``torch.distributed`` (``torchrun``).

Under ``torchrun`` the environment carries RANK, WORLD_SIZE and LOCAL_RANK; each process
joins the group (NCCL on CUDA, gloo on CPU) and trains on a disjoint shard of every epoch's
permutation. Without those variables this is a single process and nothing is initialised.

    torchrun --nproc-per-node 8 -m fastvae train --data fashion-mnist --device cuda
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ProcessGroupInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup_process_group(device: str) -> ProcessGroupInfo:
    """Join the process group when launched by torchrun; pick this process's device."""
    if device not in ("cpu", "cuda", "auto"):
        raise ValueError(f"device must be cpu, cuda or auto, got {device!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but no CUDA device is available")
    if not launched_by_torchrun():
        return ProcessGroupInfo(0, 1, 0, torch.device(device))
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        torch_device = torch.device("cuda", local_rank)
    else:
        torch_device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
    return ProcessGroupInfo(rank, world_size, local_rank, torch_device)


def teardown_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: ProcessGroupInfo) -> None:
    if info.distributed:
        dist.barrier()
