"""Where a process computes and with which numerics: the device of a `device` setting, the
process-wide determinism and TF32 switches, and torch's CPU thread count for a run.

Training, evaluation and scoring all go through these, so that evaluate.py and siqa.load
reproduce a run's numbers: on CUDA the switches change the arithmetic (TF32, cuDNN's choice
of kernels), on the CPU the thread count does (a convolution splits its float32 sums across
threads).
"""
import os
from contextlib import contextmanager

import torch

from siqa.errors import UserError
from siqa.settings import Settings


def select_device(name) -> torch.device:
    """The device of a `device` setting, always with its index on CUDA.

    'auto' -> the current CUDA device when a GPU is available, else the CPU; 'cuda' -> the
    current CUDA device (cuda:0 unless the process chose another); 'cuda:N' as it is. A CUDA
    request without a GPU, or an index past the GPUs there are, is a user error. The index
    matters: torch.cuda.set_device, the CUDA RNG calls and DDP's device_ids refuse a CUDA
    device without one."""
    if isinstance(name, torch.device):
        name = str(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"config key device: unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"config key device: {name!r} is not supported here (use auto, cpu, cuda or cuda:N)")
    if device.type == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError(f"device={name} was requested but no CUDA GPU is available; use device=cpu")
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if device.index >= torch.cuda.device_count():
        raise UserError(f"device={name}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device


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
    t = Settings(cfg).train
    numerics = configure_numerics(t.deterministic, t.tf32, torch.device(device))
    # scoring only: cuDNN's kernels by heuristics, the same in every process (see
    # cudnn_heuristics, which training's validation and test scoring use)
    torch.backends.cudnn.benchmark = False
    return numerics


@contextmanager
def cudnn_heuristics():
    """Scoring picks cuDNN's convolution kernels by its heuristics, not by timing them
    (benchmark mode, on for training on CUDA): timing can pick another kernel in another
    process, and with TF32 another precision, so a run's validation and test scores and
    evaluate.py's would differ beyond round-off. The heuristics give every process the same
    kernels for the same shapes."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


@contextmanager
def use_run_threads(cfg):
    """torch's CPU thread count for evaluating a run's checkpoint in a process of ours
    (evaluate.py, --matrix), for the duration of the `with` block: the run's `train.threads`
    where it set one (0 leaves torch's default, or what the command line overrides). A CPU
    convolution splits its float32 sums across threads, so the predictions equal the run's
    bit for bit only with its count. Yields the count in force; the caller's count is put
    back when the block ends (an in-process caller keeps its own threads)."""
    before = torch.get_num_threads()
    threads = Settings(cfg).train.threads
    if threads:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
