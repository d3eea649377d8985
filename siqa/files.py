"""Atomic file writes and content hashes.

Everything a run or the cache writes goes through `atomic_write`: the data lands in a
temporary file in the same folder and is renamed over the target, so a reader never sees
a half-written file, whatever kills the writer. The temporary name carries the writer
(`.best.pt.w<pid>@<host>.<random>.tmp`), so that the leftovers of a killed writer are
recognised and removed at the next start (`remove_dead_temporaries`) while a live
writer's file is left alone. A write that fails (a full disk, a read-only folder) removes
its temporary file, leaves the previous file intact and raises `WriteFailed`, one line
naming the path.

`RunLock` gives a run folder one owner at a time (see its docstring).
"""
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path

from siqa.errors import UserError

# mkstemp creates 0600 files; what we write gets the mode open() would give (0666 less the
# umask), so a run folder on a shared machine reads like any other. The umask can only be
# read by setting it: done once, at import, before any writer thread exists.
_UMASK = os.umask(0o022)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK
DIR_MODE = 0o777 & ~_UMASK  # what mkdir gives; mkdtemp gives 0700
HOST = socket.gethostname()


class WriteFailed(UserError, OSError):
    """A file could not be written (disk full, read-only folder, ...): one line naming the
    path; the previous file, if any, is intact. An OSError too, for callers that catch those."""

    def __str__(self):
        return self.strerror


def writer_tag(pid=None):
    """`w<pid>@<host>`: who writes a temporary file or folder (see remove_dead_temporaries)."""
    return f"w{os.getpid() if pid is None else pid}@{HOST}"


def atomic_write(path, data: bytes):
    """Write `data` to `path` atomically (temporary file + fsync + rename); WriteFailed if
    it cannot be written (the previous file stays as it was)."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{writer_tag()}.",
                                   suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError) and not isinstance(err, WriteFailed):
            reason = err.strerror or errno.errorcode.get(err.errno, str(err))
            where = err.filename and str(err.filename)
            where = f" ({where})" if where and where != str(path) and not where.endswith(".tmp") else ""
            raise WriteFailed(err.errno, f"cannot write {path}: {reason}{where}; "
                              f"any previous {path.name} is unchanged") from err
        raise


def atomic_write_text(path, text: str):
    atomic_write(path, text.encode("utf-8"))


def read_json(path):
    """The JSON document in `path`; UserError (one line, naming it) where it cannot be read."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path}: {err}") from None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path, chunk=1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- leftovers
_TAGGED = re.compile(r"[.-]w(?P<pid>\d+)@(?P<host>[^/]+?)\.[a-z0-9_]{8}(\.tmp)?$")


def pid_alive(pid) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def writer_dead(name) -> bool:
    """Whether the temporary `name` (tagged by writer_tag) was left by a process of this
    machine that no longer runs (a writer on another machine is never presumed dead)."""
    match = _TAGGED.search(name)
    return bool(match) and match["host"] == HOST and not pid_alive(int(match["pid"]))


def remove_dead_temporaries(folder, pattern=".*.tmp", recursive=False, all_dead=False):
    """Remove the temporary files and folders matching `pattern` in `folder` left by
    writers that were killed (see writer_dead); `all_dead`: untagged matches (written before
    temporary names carried their writer) are leftovers too, which the caller knows when it
    holds the folder's RunLock. Returns the paths removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in (folder.rglob(pattern) if recursive else folder.glob(pattern)):
        if not (writer_dead(path.name) if _TAGGED.search(path.name) else all_dead):
            continue
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
        except FileNotFoundError:  # another process removed it first
            pass
    return removed


# --------------------------------------------------------------------------- one owner
class RunLock:
    """One owner per run folder: an exclusive flock on `.<name>.lock` beside the folder
    (beside it, so that a run stopped by a user error still leaves no run folder).

    Taken before the first write and held until the process ends. A second job on the
    same folder gets a UserError naming the holder (pid, host, since when, written into
    the lock file). The kernel releases the lock of a process that dies, however it dies,
    so a lock file left by a dead process is taken over (stale locks need no clean-up).
    The holder removes the file when it is done; an acquirer checks that the file it
    locked is still the one at the path (else it retries), so the removal is race-free."""

    def __init__(self, folder, part=None):
        """`part`: a share of the run folder (e.g. "split_3" of an array task), locked by
        `.<name>.<part>.lock` beside the folder, which then need not exist yet."""
        self.folder = Path(folder) / part if part else Path(folder)
        name = Path(folder).name + (f".{part}" if part else "")
        self.path = Path(folder).parent / f".{name}.lock"
        self.fd = None

    def holder(self):
        try:
            return self.path.read_text().strip() or "another process"
        except OSError:
            return "another process"

    def acquire(self, what="train.py"):
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise WriteFailed(err.errno, f"cannot create {self.path.parent}: {err.strerror}") from err
        fd = try_lock(self.path)
        if fd is None:
            raise UserError(f"{self.folder} is in use by {self.holder()} (lock {self.path}): "
                            "wait for it to finish, or choose another out_dir=...")
        os.ftruncate(fd, 0)
        os.write(fd, f"{what} pid {os.getpid()} on {HOST} since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        self.fd = fd
        return self

    def release(self):
        if self.fd is not None:
            unlock(self.path, self.fd)
            self.fd = None


def try_lock(path, wait=False):
    """A descriptor holding an exclusive flock of the file `path` (created if needed), or
    None when another process holds it (`wait`: block until it is released instead).

    The holder removes the file when done (`unlock`); a lock taken on a file that was
    removed meanwhile is not a lock, so it is checked to be the file at `path` (else again).
    WriteFailed when the file cannot be created (a read-only folder)."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        except OSError as err:
            raise WriteFailed(err.errno, f"cannot write {path}: {err.strerror}") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:  # its holder removed it after we opened it
            pass
        os.close(fd)


def unlock(path, fd):
    """Release a lock of try_lock (removing its file first, see try_lock)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    os.close(fd)  # closing releases the lock
