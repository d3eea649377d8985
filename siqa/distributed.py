"""The training process: its device, its numerics, and its place among several processes.

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
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from siqa.engine import select_device

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


def configure_numerics(deterministic, tf32, device) -> dict:
    """Set the process-wide determinism and TF32 switches; returns what was set.

    deterministic: torch.use_deterministic_algorithms(True) (warn_only: an operation without a
    deterministic kernel warns instead of stopping a long run), CUBLAS_WORKSPACE_CONFIG=:4096:8
    (read when cuBLAS starts, i.e. before the first CUDA matmul of this process), cuDNN
    deterministic and benchmark off. Not deterministic: cuDNN picks its fastest kernels
    (benchmark on; the patch shape is static). TF32 (CUDA matmul and cuDNN convolutions) is set
    explicitly either way, since PyTorch's defaults differ between the two."""
    deterministic = device.type != "cuda" if deterministic == "auto" else bool(deterministic)
    tf32 = (not deterministic and device.type == "cuda") if tf32 == "auto" else bool(tf32)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic and device.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    return {"deterministic": deterministic, "tf32": tf32}


def configure_run_numerics(cfg, device):
    """The switches a run trained under (its config's train.deterministic and train.tf32),
    set for evaluating or scoring its model on `device`; None on the CPU.

    On CUDA they change the numbers (TF32 convolutions, cuDNN's choice of kernels), so
    evaluate.py reproduces a run's metrics.json only under them. On the CPU they change no
    result of a forward pass, and the process's switches are left as they are (a library
    call such as siqa.load should not turn on deterministic algorithms for its caller)."""
    if torch.device(device).type != "cuda":
        return None
    t = cfg.get("train", {})
    numerics = configure_numerics(t.get("deterministic", "auto"), t.get("tf32", "auto"), torch.device(device))
    # scoring only: cuDNN's kernels by heuristics, the same in every process (see
    # siqa.engine.cudnn_heuristics, which training's validation and test scoring use)
    torch.backends.cudnn.benchmark = False
    return numerics


@contextmanager
def use_run_threads(cfg):
    """torch's CPU thread count for evaluating a run's checkpoint in a process of ours
    (evaluate.py, --matrix), for the duration of the `with` block: the run's `train.threads`
    where it set one (0 leaves torch's default, or what the command line overrides). A CPU
    convolution splits its float32 sums across threads, so the predictions equal the run's
    bit for bit only with its count. Yields the count in force; the caller's count is put
    back when the block ends (an in-process caller keeps its own threads)."""
    before = torch.get_num_threads()
    threads = cfg.get("train", {}).get("threads") or 0
    if threads:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
