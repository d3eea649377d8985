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


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict):
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
