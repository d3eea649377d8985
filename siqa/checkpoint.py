"""Checkpoints that any PyTorch user can open, verified on load.

A checkpoint file is a plain `torch.save` archive of a dict of tensors, numbers, strings,
lists and dicts, so that what every PyTorch user (and every tool) tries first works:

    state = torch.load("best.pt", weights_only=True)
    model = MultiTaskSIQA(); model.load_state_dict(state["model"])

Integrity lives inside the archive: the key ``sha256`` holds a SHA-256 over the contents
of every other entry (each tensor's dtype, shape and raw bytes; every number, string and
container with its type and key), computed when saving and checked when loading. It
covers what is loaded, not the zip bytes around it, so it does not depend on how a
PyTorch version lays out the archive; a file that cannot be unpacked at all (truncated,
empty, bytes flipped in the zip structure) is reported as corrupt just the same.

Before saving, values that `torch.load(weights_only=True)` would refuse are made plain:
numpy scalars become Python numbers, numpy arrays tensors, paths strings; anything else
is a programming error (TypeError naming the entry). Files are written atomically, so a
run killed while saving leaves the previous file intact.

Files of the first format (a magic line, the SHA-256 of the payload, then the payload)
still load.
"""
import codecs
import hashlib
import io
import os
import pickle
import struct
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from siqa.errors import UserError
from siqa.files import atomic_write
from siqa.runfolder import BEST, LAST, RunFolder

DIGEST_KEY = "sha256"
MAGIC = b"SIQA-CHECKPOINT-1\n"  # the first format: MAGIC, hex digest, newline, payload
FORMAT_KEY, FORMAT = "format", 2  # a later version that changes the contents writes format > 2

_SCALARS = (type(None), bool, int, float, complex, str, bytes)
_ATOMS = (torch.Size, torch.dtype, torch.device)


def save_checkpoint(path, state: dict):
    """Write `state` (a dict) to `path` as a plain torch.save archive with its SHA-256."""
    if not isinstance(state, dict):
        raise TypeError(f"a checkpoint is a dict, not a {type(state).__name__}")
    if DIGEST_KEY in state:
        raise TypeError(f"key '{DIGEST_KEY}' is reserved for the checkpoint's checksum")
    plain = {key: _plain(value, key) for key, value in state.items()}
    plain[DIGEST_KEY] = content_digest(plain)
    atomic_write(path, serialize_torch(plain))


def serialize_torch(obj) -> bytes:
    """torch.save into bytes (so that it can be written atomically)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def load_checkpoint(path, map_location="cpu", required=()) -> dict:
    """The verified contents of `path` (without the checksum entry); `required` keys must
    be present."""
    path = Path(path)
    if path.is_dir():  # a run folder: its checkpoints are inside
        raise UserError(f"checkpoint {path} is a folder, not a checkpoint file: {_give(path)}")
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        head = f.read(512)
    kind = _other_kind(head)
    if kind:  # a run's summary.json, a config, an image: no archive at all
        raise UserError(f"{path} is not a checkpoint but {kind}: {_give(path.parent)}")
    head = head[:len(MAGIC)]
    if head.startswith(MAGIC[:-2]) and head != MAGIC:
        raise UserError(f"checkpoint {path} was written by a newer version of this project "
                        f"({head.strip().decode(errors='replace')}): upgrade siqa to read it")
    state = _load_first_format(path, map_location) if head == MAGIC else _load(path, map_location)
    if isinstance(state.get(FORMAT_KEY), int) and state[FORMAT_KEY] > FORMAT:
        raise UserError(f"checkpoint {path} was written by a newer version of this project "
                        f"(format {state[FORMAT_KEY]}; this version reads up to {FORMAT}): "
                        "upgrade siqa to read it")
    missing = [key for key in required if key not in state]
    if missing:
        raise UserError(f"checkpoint {path} has no {', '.join(missing)}: "
                        f"use a {BEST} or {LAST} written by train.py")
    return state


def _give(folder) -> str:
    """What to give instead: the best.pt of the run folder `folder`, where there is one."""
    run = RunFolder(folder)
    inside = [p for p in (run.single.best, run.split_folder(0).best) if p.is_file()]
    return (f"give {inside[0]}" if inside else f"give the {BEST} (or {LAST}) a run wrote")


def _other_kind(head) -> str:
    """What a file that begins with `head` is, where it is plainly no checkpoint (text, an
    image); "" where it may be one (a zip, a pickle, the first format, unknown bytes: those
    are read, and reported as corrupt if they fail)."""
    if head.startswith((b"PK", b"\x80", MAGIC[:-2])) or not head:
        return ""
    if head.startswith(b"\x89PNG") or head.startswith(b"\xff\xd8\xff"):
        return "an image"
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head)  # a character cut at 512 bytes is fine
    except UnicodeDecodeError:
        return ""
    if b"\x00" in head:
        return ""
    return "a JSON file" if head.lstrip()[:1] in (b"{", b"[") else "a text file"


def _load(path, map_location):
    if os.path.getsize(path) == 0:
        raise UserError(f"checkpoint {path} is corrupt or truncated (the file is empty)")
    try:
        # Loaded on the CPU: the digest is over the bytes, which a GPU or meta copy would hide.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"checkpoint {path} is corrupt, or holds objects that "
                        "torch.load(weights_only=True) refuses") from None
    except Exception as err:  # a damaged zip or pickle raises many types (RuntimeError, EOFError, ...)
        raise UserError(f"checkpoint {path} is corrupt or truncated (not a readable PyTorch "
                        f"archive: {type(err).__name__})") from None
    if not isinstance(state, dict) or not isinstance(state.get(DIGEST_KEY), str):
        raise UserError(f"{path} is not a checkpoint written by this project (no '{DIGEST_KEY}' "
                        "entry), or it is corrupt")
    stored = state.pop(DIGEST_KEY)
    try:
        actual = content_digest(state)
    except TypeError:  # a type save_checkpoint never writes
        raise UserError(f"{path} is not a checkpoint written by this project (it holds values "
                        "save_checkpoint does not write)") from None
    if actual != stored:
        raise UserError(f"checkpoint {path} is corrupt or truncated (checksum mismatch)")
    if map_location is None or str(map_location) == "cpu":
        return state
    return map_tensors(state, lambda tensor: tensor.to(map_location))


def map_tensors(value, fn):
    """`value` (nested dicts, lists and tuples) with `fn` applied to every tensor."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, dict):
        return type(value)((k, map_tensors(v, fn)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(map_tensors(v, fn) for v in value)
    return value


def _load_first_format(path, map_location):
    data = path.read_bytes()
    header_len = len(MAGIC) + 65
    if len(data) < header_len:
        raise UserError(f"{path} is not a checkpoint written by this project (or it is truncated)")
    digest, payload = data[len(MAGIC) : header_len - 1], data[header_len:]
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise UserError(f"checkpoint {path} is corrupt or truncated (checksum mismatch)")
    return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)


# --------------------------------------------------------------------------- contents
def _plain(value, where):
    """`value` with every leaf of a type that `torch.load(weights_only=True)` accepts."""
    kind = type(value)  # exact types: np.float64 and np.str_ subclass float and str
    if isinstance(value, torch.Tensor):
        if value.layout != torch.strided:
            raise TypeError(f"checkpoint entry {where}: {value.layout} tensors are not supported")
        return value
    if kind in _SCALARS or kind in _ATOMS:
        return value
    if isinstance(value, np.generic):  # np.float64(0.5) -> 0.5
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.array(value))
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if kind in (dict, OrderedDict):
        return kind((_plain(k, f"{where} key"), _plain(v, f"{where}.{k}")) for k, v in value.items())
    if kind in (list, tuple, set, frozenset):
        return kind(_plain(v, f"{where}[{i}]") for i, v in enumerate(value))
    raise TypeError(f"checkpoint entry {where} is a {kind.__module__}.{kind.__qualname__}, "
                    "which torch.load(weights_only=True) refuses")


def content_digest(value) -> str:
    """SHA-256 (hex) over `value`: types, keys in order, numbers exactly, tensors as
    dtype, shape and raw bytes. Equal for a state and its torch.save/torch.load copy."""
    h = hashlib.sha256()
    _feed(h, value)
    return h.hexdigest()


def _token(h, tag: bytes, data: bytes = b""):
    h.update(tag + struct.pack("<Q", len(data)) + data)


def _feed(h, value):
    if isinstance(value, torch.Tensor):
        t = value.detach().to("cpu").contiguous().reshape(-1)
        _token(h, b"T", f"{t.dtype}{tuple(value.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().data if t.numel() else b"")
    elif value is None:
        _token(h, b"N")
    elif isinstance(value, bool):
        _token(h, b"B", b"1" if value else b"0")
    elif isinstance(value, int):
        _token(h, b"I", str(value).encode())
    elif isinstance(value, float):
        _token(h, b"F", value.hex().encode())
    elif isinstance(value, complex):
        _token(h, b"C", f"{value.real.hex()},{value.imag.hex()}".encode())
    elif isinstance(value, str):
        _token(h, b"S", value.encode("utf-8", "surrogatepass"))
    elif isinstance(value, bytes):
        _token(h, b"Y", value)
    elif isinstance(value, _ATOMS):
        _token(h, b"A", f"{type(value).__name__}:{value}".encode())
    elif isinstance(value, dict):
        _token(h, b"D", str(len(value)).encode())
        for key, item in value.items():
            _feed(h, key)
            _feed(h, item)
    elif isinstance(value, (list, tuple)):
        _token(h, b"L" if isinstance(value, list) else b"U", str(len(value)).encode())
        for item in value:
            _feed(h, item)
    elif isinstance(value, (set, frozenset)):  # no stable order: hash the sorted item digests
        _token(h, b"E", b"".join(sorted(bytes.fromhex(content_digest(v)) for v in value)))
    else:
        raise TypeError(f"cannot checksum a {type(value).__name__}")


def rng_state(device=None) -> dict:
    """This process's random number generator states: the CPU generator, and on CUDA the
    generator of `device` only (the GPU this process trains on). Under DDP every rank saves
    its own (see siqa.training.checkpoints), so a machine with another number of GPUs can still load it."""
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
