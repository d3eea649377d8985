"""What predict.py does around the Python API (siqa.api): manifests in and out, and the maps."""
import csv
import io
from pathlib import Path

from siqa.errors import UserError
from siqa.files import atomic_write_text

__all__ = ["read_manifest", "write_predictions", "map_names"]


def read_manifest(path):
    """Rows of a CSV with `left,right` or `sbs` columns; paths are relative to the CSV.
    Returns (rows, fields, pairs) with pairs as (left, right_or_None) paths."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"manifest not found: {path}")
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    fields = list(rows[0].keys()) if rows else []
    if not ({"left", "right"} <= set(fields) or "sbs" in fields):
        raise UserError(f"manifest {path} needs columns left,right or sbs (found: {', '.join(fields) or 'none'})")
    base = path.parent
    pairs = []
    for row in rows:
        if "sbs" in fields and row.get("sbs"):
            pairs.append((base / row["sbs"], None))
        else:
            pairs.append((base / row["left"], base / row["right"]))
    return rows, fields, pairs


def write_predictions(out, rows, fields, scores):
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields + ["prediction"], lineterminator="\n")
    writer.writeheader()
    for row, score in zip(rows, scores):
        writer.writerow({**row, "prediction": repr(float(score))})
    atomic_write_text(out, buf.getvalue())


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
