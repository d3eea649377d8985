"""What predict.py does around the Python API (siqa.inference.api): manifests in and out,
and the names of the maps' files."""
import csv
import os
import tempfile
from pathlib import Path

from siqa.errors import UserError
from siqa.files import FILE_MODE, WriteFailed, remove_dead_temporaries, writer_tag

__all__ = ["read_manifest", "manifest_fields", "manifest_rows", "PredictionsWriter",
           "write_predictions", "map_names"]


def manifest_fields(path):
    """The columns of a manifest (a CSV with `left,right` or `sbs` columns), checked, and
    every row's files checked to exist: one pass that holds one row at a time."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"manifest not found: {path}")
    fields = None
    for fields, _, _ in _rows(path):
        pass
    if fields is None:
        fields = _header(path)
    return fields


def manifest_rows(path):
    """(row, (left, right_or_None)) of each row, read as they are needed (paths relative to
    the manifest)."""
    for _, row, pair in _rows(Path(path)):
        yield row, pair


def read_manifest(path):
    """Rows of a CSV with `left,right` or `sbs` columns; paths are relative to the CSV.
    Returns (rows, fields, pairs) with pairs as (left, right_or_None) paths (all in memory:
    predict.py streams with manifest_rows instead)."""
    fields = manifest_fields(path)
    rows, pairs = [], []
    for row, pair in manifest_rows(path):
        rows.append(row)
        pairs.append(pair)
    return rows, fields, pairs


def _header(path):
    with _open(path) as f:
        try:
            header = next(csv.reader(f), [])
        except (csv.Error, UnicodeDecodeError) as err:
            raise UserError(f"manifest {path} is not a readable CSV ({_short(err)})") from None
    _check_fields(path, header)
    return header


def _open(path):
    try:
        return open(path, newline="", encoding="utf-8-sig")
    except OSError as err:
        raise UserError(f"cannot read manifest {path}: {err.strerror}") from None


def _check_fields(path, fields):
    names = [f for f in fields if f is not None]
    if not ({"left", "right"} <= set(names) or "sbs" in names):
        raise UserError(f"manifest {path} needs columns left,right or sbs "
                        f"(found: {', '.join(map(repr, names)) or 'none'})")


def _short(err):
    return " ".join(str(err).split())[:120]


def _rows(path):
    """(fields, row, pair) of each row; UserError naming the manifest and the row."""
    base = path.parent
    with _open(path) as f:
        reader = csv.DictReader(f)
        line = 1
        try:
            fields = reader.fieldnames or []
            _check_fields(path, fields)
            for line, row in enumerate(reader, start=2):
                if None in row:  # more cells than columns
                    raise UserError(f"manifest {path}, row {line}: more cells than the "
                                    f"{len(fields)} columns")
                if "sbs" in fields and row.get("sbs"):
                    pair = (base / row["sbs"], None)
                elif row.get("left") and row.get("right"):
                    pair = (base / row["left"], base / row["right"])
                else:
                    raise UserError(f"manifest {path}, row {line}: no left and right (or sbs) file")
                for file in pair:
                    if file is not None and not file.is_file():
                        raise UserError(f"manifest {path}, row {line}: image not found: {file}")
                yield fields, row, pair
        except (csv.Error, UnicodeDecodeError, ValueError) as err:
            if isinstance(err, UserError):
                raise
            raise UserError(f"manifest {path}, row {line}: not a readable CSV ({_short(err)})") from None


class PredictionsWriter:
    """The manifest's rows plus a `prediction` column, written as they come into a
    temporary file beside `out` that is renamed over it at the end: an interrupted run (an
    error, a signal) leaves no half-file, and the rows are never all in memory."""

    def __init__(self, out, fields):
        self.out, self.fields = Path(out), list(fields)
        remove_dead_temporaries(self.out.parent, f".{self.out.name}.*.tmp")  # of killed runs
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            fd, self.tmp = tempfile.mkstemp(dir=self.out.parent, suffix=".tmp",
                                            prefix=f".{self.out.name}.{writer_tag()}.")
            os.chmod(self.tmp, FILE_MODE)
        except OSError as err:
            raise WriteFailed(err.errno, f"cannot write {self.out}: {err.strerror}") from err
        self.file = os.fdopen(fd, "w", newline="", encoding="utf-8")
        self.writer = csv.DictWriter(self.file, fieldnames=self.fields + ["prediction"],
                                     lineterminator="\n")
        self._guard(self.writer.writeheader)

    def _guard(self, fn, *args):
        try:
            return fn(*args)
        except OSError as err:
            self.abort()
            raise WriteFailed(err.errno, f"cannot write {self.out}: {err.strerror}; "
                              f"any previous {self.out.name} is unchanged") from err

    def write(self, row, score):
        self._guard(self.writer.writerow, {**row, "prediction": repr(float(score))})

    def close(self):
        def finish():
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.tmp, self.out)
        self._guard(finish)

    def abort(self):
        if not self.file.closed:
            self.file.close()
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        if kind is None:
            self.close()
        else:
            self.abort()


def write_predictions(out, rows, fields, scores):
    with PredictionsWriter(out, fields) as writer:
        for row, score in zip(rows, scores):
            writer.write(row, score)


def map_names(pairs):
    """One file-name stem per pair for --maps: LEFTSTEM_RIGHTSTEM (a reference view is often
    shared by many pairs), or the side-by-side file's stem; the pair's position is appended
    where two pairs would still share one."""
    stems = [Path(left).stem if right is None else f"{Path(left).stem}_{Path(right).stem}"
             for left, right in pairs]
    seen = {}
    for stem in stems:
        seen[stem] = seen.get(stem, 0) + 1
    return [stem if seen[stem] == 1 else f"{stem}_{i}" for i, stem in enumerate(stems)]
