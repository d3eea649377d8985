"""Atomic file writes and content hashes.

Everything a run or the cache writes goes through `atomic_write`: the data lands in a
temporary file in the same folder and is renamed over the target, so a reader never sees
a half-written file, whatever kills the writer.
"""
import hashlib
import io
import os
import tempfile
from pathlib import Path

# mkstemp creates 0600 files; what we write gets the mode open() would give (0666 less the
# umask), so a run folder on a shared machine reads like any other. The umask can only be
# read by setting it: done once, at import, before any writer thread exists.
_UMASK = os.umask(0o022)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK


def atomic_write(path, data: bytes):
    """Write `data` to `path` atomically (temporary file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path, text: str):
    atomic_write(path, text.encode("utf-8"))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path, chunk=1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def serialize_torch(obj) -> bytes:
    """torch.save into bytes (so that it can be written atomically)."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()
