"""Checkpoints that are verified on load.

A checkpoint file is a magic line, the SHA-256 of the payload, then the payload (a plain
`torch.save` of a dict of tensors, numbers, strings and lists, loadable with
`weights_only=True`). It is written atomically, so a run killed while saving leaves the
previous file intact; a truncated or corrupted file fails the checksum and is reported.
"""
import hashlib
import io
from pathlib import Path

import torch

from siqa.errors import UserError
from siqa.files import atomic_write, serialize_torch

MAGIC = b"SIQA-CHECKPOINT-1\n"


def save_checkpoint(path, state: dict):
    payload = serialize_torch(state)
    digest = hashlib.sha256(payload).hexdigest().encode()
    atomic_write(path, MAGIC + digest + b"\n" + payload)


def load_checkpoint(path, map_location="cpu", required=()) -> dict:
    """The verified contents of `path`; `required` keys must be present."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    data = path.read_bytes()
    header_len = len(MAGIC) + 65
    if not data.startswith(MAGIC) or len(data) < header_len:
        raise UserError(f"{path} is not a checkpoint written by this project (or it is truncated)")
    digest, payload = data[len(MAGIC) : header_len - 1], data[header_len:]
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise UserError(f"checkpoint {path} is corrupt or truncated (checksum mismatch)")
    state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    missing = [key for key in required if key not in state]
    if missing:
        raise UserError(f"checkpoint {path} has no {', '.join(missing)}: "
                        "use a best.pt or last.pt written by train.py")
    return state


def rng_state(device=None) -> dict:
    """This process's random number generator states: the CPU generator, and on CUDA the
    generator of `device` only (the GPU this process trains on). Under DDP every rank saves
    its own (see siqa.experiment), so a machine with another number of GPUs can still load it."""
    state = {"torch": torch.get_rng_state()}
    if device is not None and torch.device(device).type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(torch.device(device))
    return state


def _cpu_bytes(tensor, what):
    """`torch.set_rng_state` and `torch.cuda.set_rng_state` take CPU byte tensors only; a
    checkpoint loaded with map_location=<a GPU> holds them on the GPU."""
    if tensor.is_meta:
        raise UserError(f"the saved {what} RNG state has no data (loaded onto the meta device); "
                        "load the checkpoint with map_location='cpu'")
    return tensor.to("cpu", torch.uint8)


def restore_rng(state: dict, device=None):
    """Restore what `rng_state(device)` saved. A CUDA state is restored onto `device`; one
    saved by an older version (a list with one state per visible GPU) gives `device` its
    own entry when there is one."""
    torch.set_rng_state(_cpu_bytes(state["torch"], "CPU"))
    if device is None or torch.device(device).type != "cuda" or state.get("cuda") is None:
        return
    device = torch.device(device)
    cuda = state["cuda"]
    if isinstance(cuda, (list, tuple)):
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= len(cuda):
            return
        cuda = cuda[index]
    torch.cuda.set_rng_state(_cpu_bytes(cuda, "CUDA"), device)
