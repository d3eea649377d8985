"""A database described by a CSV manifest: any folder of stereo pairs and their scores.

CSV manifest (`csv`, manifest = the CSV file)
    Columns ``left,right,score`` or ``sbs,score``; optional ``ref`` (scene id; without it
    each pair is its own scene, so splits are by image), ``distortion``, ``symmetric``
    (true/false/1/0/yes/no, empty = unknown), ``name`` (default: the relative path of the
    side-by-side file, or ``left|right``), ``higher_is_better`` (true for MOS; default
    false = DMOS; must be the same on every row). Paths are relative to the CSV's folder.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

from siqa.data.databases.common import exists
from siqa.data.records import StereoPair
from siqa.errors import UserError

_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f"}


def _parse_bool(value: str, what: str, path, line):
    v = value.strip().lower()
    if v == "":
        return None
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise UserError(f"{path} row {line}: {what} '{value}' is not true/false")


VIEW_SCORE_COLUMNS = ("left_score", "right_score")


def _view_scores(row, columns, path, line):
    """(left, right) scores of a manifest row, in the score column's convention; None where
    the manifest has no such columns or the row leaves both empty."""
    raw = [row.get(c, "") for c in columns]
    if not any(raw):
        return None
    values = []
    for column, value in zip(columns, raw):
        if not value:
            raise UserError(f"{path} row {line}: {column} is empty but the other view's score "
                            "is given; give both or neither")
        values.append(_finite_number(value, column, path, line))
    return tuple(values)


def _finite_number(value, column, path, line) -> float:
    """A manifest cell as a finite float; UserError naming the file, row and column."""
    try:
        number = float(value)
    except ValueError:
        raise UserError(f"{path} row {line}: {column} '{value}' is not a number") from None
    if not math.isfinite(number):
        raise UserError(f"{path} row {line}: {column} '{value}' is not a finite number")
    return number


def load_csv(manifest) -> list[StereoPair]:
    if manifest is None:
        raise UserError("dataset.manifest (a CSV file) is required for database 'csv'")
    path = Path(manifest)
    if not exists(path, "is_file"):
        raise UserError(f"manifest not found: {path} (dataset.manifest)")
    base = path.parent
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = [(c or "").strip().lower() for c in (reader.fieldnames or [])]
            reader.fieldnames = fields
            rows = list(reader)
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not a UTF-8 text file (byte {err.start}: {err.reason}); "
                        "save the manifest as UTF-8 CSV") from None
    except csv.Error as err:
        raise UserError(f"{path}: not a valid CSV file ({err})") from None
    except OSError as err:
        raise UserError(f"cannot read manifest {path}: {err.strerror or err}") from None
    if "score" not in fields or not ({"left", "right"} <= set(fields) or "sbs" in fields):
        raise UserError(
            f"{path}: needs columns left,right,score or sbs,score "
            f"(columns found: {', '.join(fields) or 'none'})"
        )
    sbs_mode = not ({"left", "right"} <= set(fields))
    view_columns = [c for c in VIEW_SCORE_COLUMNS if c in fields]
    if len(view_columns) == 1:
        other = next(c for c in VIEW_SCORE_COLUMNS if c not in fields)
        raise UserError(f"{path}: has a {view_columns[0]} column but no {other} column; the "
                        "per-view scores come as both columns or neither")
    pairs, hib_values = [], set()
    for line, row in enumerate(rows, start=2):
        row = {k: (v or "").strip() for k, v in row.items() if k is not None}
        if sbs_mode:
            left_rel, right_rel = row.get("sbs", ""), ""
        else:
            left_rel, right_rel = row.get("left", ""), row.get("right", "")
            if not left_rel and not right_rel and row.get("sbs"):
                left_rel = row["sbs"]
        if not left_rel:
            raise UserError(f"{path} row {line}: no image path (fill its left and right, or sbs, column)")
        raw = row.get("score", "")
        if not raw:
            raise UserError(f"{path} row {line}: no score (the score column is empty); "
                            "give every row a number")
        score = _finite_number(raw, "score", path, line)
        hib = _parse_bool(row.get("higher_is_better", ""), "higher_is_better", path, line)
        hib_values.add(bool(hib))
        name = row.get("name") or (left_rel if not right_rel else f"{left_rel}|{right_rel}")
        content = row.get("ref") or name
        pairs.append(
            StereoPair(
                name=name,
                left=base / left_rel,
                right=(base / right_rel) if right_rel else None,
                score=score,
                higher_is_better=bool(hib),
                content=content,
                distortion=row.get("distortion") or "unknown",
                symmetric=_parse_bool(row.get("symmetric", ""), "symmetric", path, line),
                view_scores=_view_scores(row, view_columns, path, line),
            )
        )
    if not pairs:
        raise UserError(f"{path}: the manifest has no rows")
    if len(hib_values) > 1:
        raise UserError(f"{path}: higher_is_better differs between rows; use one score convention")
    return pairs
