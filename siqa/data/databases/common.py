"""What the database loaders share: the dataset.root check, file tests that never raise,
and names written with either slash."""
from __future__ import annotations

from pathlib import Path, PurePosixPath

from siqa.errors import UserError


def exists(path: Path, kind="exists") -> bool:
    """Path.exists / is_file / is_dir that says False (instead of raising) for a name the
    file system refuses (too long, not encodable)."""
    try:
        return getattr(path, kind)()
    except (OSError, ValueError):
        return False


def require_dir(root, name):
    """`root` as a Path, or UserError: it is missing or not a folder (`name`: the database)."""
    if root is None:
        raise UserError(f"dataset.root is required for database '{name}'")
    root = Path(root)
    if not exists(root, "is_dir"):
        raise UserError(f"database folder not found: {root} (dataset.root for '{name}')")
    return root


def posix_path(name: str) -> PurePosixPath:
    """A relative name from a score file, written with either slash."""
    return PurePosixPath(name.replace("\\", "/"))
