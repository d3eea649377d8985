"""The training process: its place among several processes (torchrun).

Multi-process training uses PyTorch's own engine (`torchrun --nproc_per_node=N train.py`):
torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; without them this is a single process.
NCCL on CUDA, gloo on CPU. Only rank 0 writes (checkpoints, logs, metrics).

Two process groups under torchrun: the default one (NCCL or gloo) for the gradients and the
short waits between epochs, and a gloo group on the host with a long timeout (`HOST_TIMEOUT`)
for the long wait while rank 0 builds the data and fills the NSS cache (NCCL's default
timeout, 10 minutes, is shorter than a cold cache of a large database takes) and for the
small Python objects the ranks exchange (each rank's RNG state for the checkpoint).
"""
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from siqa.device import select_device

HOST_TIMEOUT = timedelta(hours=12)  # a cold NSS cache of a large database with scipy_free_loc


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    host_group: object = None  # the gloo group with HOST_TIMEOUT (None in a single process)

    @property
    def is_main(self):
        return self.rank == 0

    def barrier(self):
        """A short wait on the default group (between epochs)."""
        if self.world > 1:
            dist.barrier()

    def wait_for_main(self):
        """A long wait on the host group: rank 0 may spend an hour preparing data."""
        if self.world > 1:
            dist.barrier(group=self.host_group)

    def gather(self, obj) -> list:
        """Every rank's `obj`, in rank order (a list of one in a single process)."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj, group=self.host_group)
        return out


def setup(device_name: str) -> Dist:
    """This process's device (made current on CUDA) and, under torchrun, its process groups."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = select_device(device_name)
    if world == 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)  # cuda:1 must not run its kernels on cuda:0
        return Dist(0, 1, device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = select_device(f"cuda:{local_rank}")
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # device_id binds NCCL to this rank's GPU (without it every barrier warns that it
        # guesses the current device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
    host_group = dist.new_group(backend="gloo", timeout=HOST_TIMEOUT)
    return Dist(rank, world, device, host_group)


def teardown():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
