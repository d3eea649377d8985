"""Multi-process training with PyTorch's own engine (`torchrun --nproc_per_node=N train.py`).

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; without them this is a single process.
NCCL on CUDA, gloo on CPU. Only rank 0 writes (checkpoints, logs, metrics).
"""
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from siqa.engine import select_device


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self):
        return self.rank == 0

    def barrier(self):
        if self.world > 1:
            dist.barrier()


def setup(device_name: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(0, 1, select_device(device_name))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = select_device(device_name)
    if device.type == "cuda":
        device = select_device(f"cuda:{local_rank}")
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, device)


def teardown():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
