"""Waterloo-IVC 3D Phases I and II, from their score table and side-by-side images.

Waterloo-IVC 3D Phase I / II (`waterloo3d_phase1`, `waterloo3d_phase2`)
    Side-by-side PNGs (``N0001.png`` ...; left half = left view) and a score table: the
    ``MOS.xlsx`` of the release (read with openpyxl), a CSV export of it (``MOS.csv``), or
    the file given as `manifest`. MOS: higher = better.

    Documented (the databases' papers and page, and the public conversion of the table in
    ../shared/reference/database_metadata/): Phase I has 6 references and 330 pairs, Phase
    II 10 references and 460 pairs; three distortion types (white noise, Gaussian blur,
    JPEG) at four levels, applied to either view; the images are numbered ``N0001`` ...,
    restarting per phase, in ``3D/Session3DIQ/``; the only public copy of the table is
    header-less with 5 columns: name, reference, 3D MOS, left-view MOS, right-view MOS.
    The official file's sheet and headers have never been seen in public.

    Reading the table:
    - the first sheet; a header row is the first of its first 20 rows that holds a "name"
      column (header names matched ignoring case, spaces, underscores, hyphens, dots;
      aliases in `_WATERLOO_COLUMNS`: name, reference and MOS 3D are required; session,
      distortion type and per-view type/level columns are optional); without a header row
      the table must be the 5-column layout above;
    - an image name without extension gets ``.png``; the file is looked for in its
      session folder (if the table has that column), else in ``3D/Session3DIQ/`` first,
      then at its relative path, then by base name anywhere under the root (a base name
      found twice is an error that asks for a session column);
    - the scene (`content`) is the stem of the reference column;
    - the left- and right-view MOS columns (the 4th and 5th of the header-less table) are
      the pair's `view_scores`, the per-view targets of `multiscore` (each view's MOS is the
      2D MOS of that single-view image, on the 3D MOS's scale); a row with either cell
      empty has none. They are read as written, also for Phase I scene 5 (N0227-N0263),
      whose per-view MOS look like a spreadsheet autofill (docs/models.md#multiscore).

    Inferred (not documented; from the per-view MOS of the public table, where each view's
    MOS is the 2D MOS of that single-view image, so a pristine view carries the
    reference's value): each reference's rows form one consecutive block whose position
    gives the pair's structure (`waterloo_structure`):
    - offset 0: the pristine pair (its name is its reference's);
    - 1-12: symmetric, both views the same image: types in groups of four levels (1-4,
      5-8, 9-12);
    - 13-24: one view distorted, the other pristine (same type/level order as 1-12; which
      view is distorted is not in the position);
    - then both views distorted by one type at two levels (Phase I: 3 x 6 rows, 25-42;
      Phase II: 3 x 3 rows, 25-33, one group per type),
    - then both views distorted by two different types (12 rows: 43-54 / 34-45).
    The per-view MOS agree with this in every block where they are reliable (Phase I
    scene 5, N0227-N0263, looks like a spreadsheet autofill; tests/test_real_metadata.py
    checks the rest). Which of white noise, blur and JPEG is group 1, 2 or 3 is nowhere
    documented, so the distortion is labelled ``type1`` / ``type2`` / ``type3`` (``mixed``
    for two types, ``pristine`` at offset 0); every pair except the pristine ones and
    offsets 1-12 is asymmetric.
    The blocks are checked against the phase's shape (6 x 55 or 10 x 46 consecutive rows,
    each block starting with its pristine pair); a table of another shape is an error
    rather than a mislabelled database, unless it names the distortion itself: a
    distortion type column (mapped to `wn`, `blur`, `jpeg`; other labels are kept as
    written) or per-view type columns (the type that is not pristine, ``mixed`` when the
    views differ); symmetric then comes from the per-view type/level columns, else from
    the position when the blocks fit, else it is None (unknown).
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from siqa.data.databases.common import exists, posix_path, require_dir
from siqa.data.records import StereoPair
from siqa.errors import UserError, counted


def _norm_header(text) -> str:
    return re.sub(r"[\s_\-.]+", "", str(text or "")).lower()


_WATERLOO_COLUMNS = {
    "name": ("name", "image", "imagename", "filename", "file", "stimulus", "stimuli"),
    "reference": ("reference", "ref", "referencename", "refname", "content", "scene"),
    "mos3d": ("mos3d", "3dmos", "mos"),
    "mosleft": ("mosleft", "leftmos", "mosl"),
    "mosright": ("mosright", "rightmos", "mosr"),
    "session": ("session", "folder", "sessionfolder"),
    "type": ("distortion", "type", "distortiontype"),
    "lefttype": ("lefttype", "leftdistortion", "typeleft", "distortionleft"),
    "righttype": ("righttype", "rightdistortion", "typeright", "distortionright"),
    "leftlevel": ("leftlevel", "levelleft"),
    "rightlevel": ("rightlevel", "levelright"),
}
_WATERLOO_REQUIRED = ("name", "reference", "mos3d")
_WATERLOO_HEADERLESS = {"name": 0, "reference": 1, "mos3d": 2, "mosleft": 3, "mosright": 4}
_WATERLOO_3D_FOLDER = ("3D", "Session3DIQ")
_WATERLOO_TYPES = {
    "wn": "wn", "noise": "wn", "whitenoise": "wn", "gaussiannoise": "wn", "awgn": "wn",
    "blur": "blur", "gblur": "blur", "gaussianblur": "blur",
    "jpeg": "jpeg", "jpg": "jpeg",
    "pristine": "pristine", "none": "pristine", "original": "pristine", "reference": "pristine",
    "ref": "pristine", "0": "pristine", "": "pristine",
}


def _read_table(path: Path):
    """Rows (lists of cell values) of the first sheet of an .xlsx, or of a CSV."""
    if not path.is_file():
        raise UserError(f"score file not found: {path}")
    if path.suffix.lower() in (".xlsx", ".xlsm"):
        import openpyxl

        try:
            wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
        except Exception as err:
            raise UserError(f"cannot read {path}: not a valid .xlsx file ({err})") from None
        try:
            return [list(r) for r in wb.worksheets[0].iter_rows(values_only=True)]
        finally:
            wb.close()
    with open(path, newline="", encoding="utf-8-sig") as f:
        return [row for row in csv.reader(f)]


def _find_waterloo_mos(root: Path, manifest):
    if manifest is not None:
        p = Path(manifest)
        return p if p.is_absolute() or p.exists() else root / p
    candidates = sorted(
        p for p in root.rglob("*") if p.is_file() and p.name.lower() in ("mos.xlsx", "mos.csv")
    )
    if not candidates:
        raise UserError(f"score file not found: no MOS.xlsx or MOS.csv under {root}")
    candidates.sort(key=lambda p: (len(p.relative_to(root).parts), p.suffix.lower() != ".xlsx"))
    return candidates[0]


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _wl_type(label: str) -> str:
    key = _norm_header(label)
    return _WATERLOO_TYPES.get(key, label.strip())


@dataclass(frozen=True)
class WaterlooLayout:
    """The block shape of one phase's table: `scenes` references x `block` rows each."""

    phase: str
    scenes: int
    block: int
    per_type_two_levels: int  # rows per distortion type where both views differ in level


WATERLOO_LAYOUTS = {
    "waterloo3d_phase1": WaterlooLayout("Phase I", 6, 55, 6),  # 1 + 12 + 12 + 3 x 6 + 12
    "waterloo3d_phase2": WaterlooLayout("Phase II", 10, 46, 3),  # 1 + 12 + 12 + 3 x 3 + 12
}
_LEVELS = 4  # distortion levels per type
_TYPES = 3  # distortion types (WN, Gaussian blur, JPEG; which block is which: not documented)


def waterloo_structure(layout: WaterlooLayout, offset: int):
    """(structure, distortion, symmetric) of the row at `offset` in its reference's block.

    structure: 'pristine', 'symmetric', 'one_view' (the other view pristine), 'two_levels'
    (both views distorted by one type at different levels) or 'two_types'; distortion:
    'pristine', 'type1'..'type3' (the position of the type's group in the block) or 'mixed'.
    """
    group = _LEVELS * _TYPES
    two_levels = 1 + 2 * group
    two_types = two_levels + _TYPES * layout.per_type_two_levels
    if not 0 <= offset < layout.block:
        raise ValueError(f"offset {offset} outside a {layout.phase} block of {layout.block} rows")
    if offset == 0:
        return "pristine", "pristine", True
    if offset <= group:
        return "symmetric", f"type{(offset - 1) // _LEVELS + 1}", True
    if offset <= 2 * group:
        return "one_view", f"type{(offset - 1 - group) // _LEVELS + 1}", False
    if offset < two_types:
        return "two_levels", f"type{(offset - two_levels) // layout.per_type_two_levels + 1}", False
    return "two_types", "mixed", False


def _block_offsets(images, references, layout: WaterlooLayout):
    """Each row's offset in its reference's block, or (None, what does not fit the layout)."""
    blocks, order = {}, []
    for i, ref in enumerate(references):
        if ref not in blocks:
            blocks[ref] = []
            order.append(ref)
        elif blocks[ref][-1] != i - 1:
            return None, f"the rows of reference {ref} are not consecutive (table rows " \
                         f"{blocks[ref][-1] + 1} and {i + 1})"
        blocks[ref].append(i)
    sizes = [len(blocks[ref]) for ref in order]
    if len(order) != layout.scenes or set(sizes) != {layout.block}:
        found = ", ".join(f"{ref}: {n}" for ref, n in zip(order[:4], sizes[:4]))
        found += ", ..." if len(order) > 4 else ""
        other = [name for name, lay in WATERLOO_LAYOUTS.items()
                 if lay != layout and len(order) == lay.scenes and set(sizes) == {lay.block}]
        hint = f" (that is the shape of {WATERLOO_LAYOUTS[other[0]].phase}: dataset.name=" \
               f"{other[0]})" if other else ""
        return None, f"it has {counted(len(order), 'reference')} with {found} rows{hint}"
    for ref in order:
        first = blocks[ref][0]
        if images[first].lower() != ref.lower():
            return None, f"the block of reference {ref} starts with {images[first]}, not with " \
                         "its pristine pair"
    offsets = [0] * len(references)
    for ref in order:
        for k, i in enumerate(blocks[ref]):
            offsets[i] = k
    return offsets, None


def _headerless(row) -> bool:
    """The public conversion's row: name, reference, 3D MOS, left MOS, right MOS."""
    cells = [_cell(c) for c in row]
    while cells and not cells[-1]:
        cells.pop()
    if len(cells) != 5 or not cells[0] or not cells[1]:
        return False
    try:
        [float(c) for c in cells[2:]]
    except ValueError:
        return False
    return True


def _waterloo_columns(rows, mos_path):
    """(index of the first data row, {key: column}) of a headed or header-less table."""
    for i, row in enumerate(rows[:20]):
        normed = [_norm_header(c) for c in row]
        if any(n in _WATERLOO_COLUMNS["name"] for n in normed):
            columns = {}
            for key, aliases in _WATERLOO_COLUMNS.items():
                for alias in aliases:  # aliases are in priority order
                    if alias in normed:
                        columns[key] = normed.index(alias)
                        break
            missing = [k for k in _WATERLOO_REQUIRED if k not in columns]
            if missing:
                wanted = {"name": "name", "reference": "reference", "mos3d": "MOS 3D"}
                found = [_cell(c) for c in row]
                raise UserError(
                    f"{mos_path}: required column(s) {', '.join(wanted[k] for k in missing)} "
                    f"not found (columns found: {', '.join(repr(c) for c in found if c) or 'none'})"
                )
            return i + 1, columns
    if rows and _headerless(rows[0]):
        return 0, dict(_WATERLOO_HEADERLESS)
    found = [_cell(c) for c in rows[0]] if rows else []
    raise UserError(
        f"{mos_path}: required column(s) name, reference, MOS 3D not found (columns found: "
        f"{', '.join(repr(c) for c in found if c) or 'none'}); give a header row, or the "
        "header-less 5 columns name, reference, 3D MOS, left MOS, right MOS"
    )


class _NameIndex:
    """Files under a root by lower-case base name; the tree is walked once, when first asked."""

    def __init__(self, root: Path):
        self.root, self.paths = root, None

    def __call__(self, name: str) -> list:
        if self.paths is None:
            self.paths = {}
            for p in sorted(self.root.rglob("*")):
                if p.is_file():
                    self.paths.setdefault(p.name.lower(), []).append(p)
        return self.paths.get(name.lower(), [])


def _find_image(root: Path, rel: PurePosixPath, session: str, by_name: _NameIndex, where, image):
    """The file of a table row: in its session folder if the table names one, else first in
    3D/Session3DIQ/ (the release's 3D folder), then by its relative path, then by its base
    name anywhere under the root."""
    if session:
        candidates = [root.joinpath(session, *rel.parts)]
    else:
        candidates = [root.joinpath(*_WATERLOO_3D_FOLDER, *rel.parts), root.joinpath(*rel.parts)]
    for candidate in candidates:
        if exists(candidate, "is_file"):
            return candidate
    hits = by_name(rel.name)
    if len(hits) > 1:
        raise UserError(
            f"{where}: '{image}' matches {len(hits)} files under {root} "
            f"({hits[0]}, {hits[1]}); add a session column to tell them apart"
        )
    return hits[0] if hits else candidates[0]  # a missing file is reported by validation


def _waterloo_kind(cells, columns, position, is_reference):
    """(distortion, symmetric) of one row: from its type columns where the table has them,
    else from the row's place in its reference's block (`position`, waterloo_structure)."""
    has_view_types = "lefttype" in columns and "righttype" in columns
    has_view_levels = "leftlevel" in columns and "rightlevel" in columns
    ltype, rtype = _wl_type(cells.get("lefttype", "")), _wl_type(cells.get("righttype", ""))
    if cells.get("type"):
        kind = _wl_type(cells["type"])
    elif has_view_types:
        kinds = {t for t in (ltype, rtype) if t != "pristine"}
        kind = "pristine" if not kinds else (kinds.pop() if len(kinds) == 1 else "mixed")
    elif position is not None:
        kind = position[1]
    elif is_reference:
        kind = "pristine"
    else:
        kind = "unknown"
    if kind == "pristine":
        symmetric = True
    elif has_view_types:
        same_level = not has_view_levels or cells["leftlevel"] == cells["rightlevel"]
        symmetric = ltype == rtype and same_level
    elif has_view_levels:
        symmetric = cells["leftlevel"] == cells["rightlevel"]
    elif position is not None:
        symmetric = position[2]
    else:
        symmetric = None
    return kind, symmetric


def load_waterloo3d(root, manifest=None, name="waterloo3d_phase1") -> list[StereoPair]:
    root = require_dir(root, name)
    layout = WATERLOO_LAYOUTS.get(name, WATERLOO_LAYOUTS["waterloo3d_phase1"])
    mos_path = _find_waterloo_mos(root, manifest)
    rows = _read_table(mos_path)
    start, columns = _waterloo_columns(rows, mos_path)

    entries = []  # (line, {key: cell})
    for line, row in enumerate(rows[start:], start=start + 1):
        cells = {key: _cell(row[c]) if c < len(row) else "" for key, c in columns.items()}
        if cells["name"]:  # blank rows are skipped
            entries.append((line, cells))
    if not entries:
        raise UserError(f"{mos_path}: no rows below the header")
    for line, cells in entries:
        if not cells["reference"]:
            raise UserError(f"{mos_path} row {line}: no reference for {cells['name']}")

    has_view_types = "lefttype" in columns and "righttype" in columns
    images = [posix_path(c["name"]).stem for _, c in entries]
    references = [posix_path(c["reference"]).stem for _, c in entries]
    offsets, problem = _block_offsets(images, references, layout)
    if offsets is None and "type" not in columns and not has_view_types:
        raise UserError(
            f"{mos_path}: the pair structure of Waterloo-IVC 3D {layout.phase} cannot be inferred: "
            f"{problem}; the official table has {layout.scenes} references x {layout.block} rows, "
            "each block starting with its pristine pair (or add distortion type columns)"
        )

    by_name = _NameIndex(root)
    pairs = []
    for i, (line, cells) in enumerate(entries):
        try:
            score = float(cells["mos3d"])
        except ValueError:
            raise UserError(f"{mos_path} row {line}: MOS 3D '{cells['mos3d']}' is not a number") from None
        rel = posix_path(cells["name"])
        if not rel.suffix:
            rel = rel.with_suffix(".png")
        views = None  # (left-view MOS, right-view MOS): Multi-score SIQA's per-view targets
        if cells.get("mosleft") and cells.get("mosright"):
            try:
                views = (float(cells["mosleft"]), float(cells["mosright"]))
            except ValueError:
                raise UserError(f"{mos_path} row {line}: left/right-view MOS '{cells['mosleft']}', "
                                f"'{cells['mosright']}' are not numbers") from None
        session = cells.get("session", "")
        position = waterloo_structure(layout, offsets[i]) if offsets is not None else None
        kind, symmetric = _waterloo_kind(cells, columns, position,
                                         images[i].lower() == references[i].lower())
        pairs.append(
            StereoPair(
                name=str(PurePosixPath(session, *rel.parts)) if session else str(rel),
                left=_find_image(root, rel, session, by_name, f"{mos_path} row {line}", cells["name"]),
                right=None,
                score=score,
                higher_is_better=True,
                content=references[i],
                distortion=kind,
                symmetric=symmetric,
                view_scores=views,
            )
        )
    return pairs



def load_phase1(root, manifest=None) -> list[StereoPair]:
    """dataset.name=waterloo3d_phase1 (`manifest`: the score table, else the MOS.xlsx or
    MOS.csv found under `root`)."""
    return load_waterloo3d(root, manifest, name="waterloo3d_phase1")


def load_phase2(root, manifest=None) -> list[StereoPair]:
    """dataset.name=waterloo3d_phase2 (`manifest` as for Phase I)."""
    return load_waterloo3d(root, manifest, name="waterloo3d_phase2")
