"""LIVE 3D IQA Phases I and II, in the layout of their official releases.

LIVE 3D IQA Phase I (`live3d_phase1`, root = the unpacked folder)
    `data.mat` holds `img_names` (cell, e.g. ``jp2k\\im2_1.bmp``), `ref_names`
    (``refimgs\\im2.bmp``) and `dmos`; the two views of ``jp2k\\im2_1.bmp`` are
    ``jp2k/im2_1_l.bmp`` and ``jp2k/im2_1_r.bmp``. The distortion is the folder name
    (`jp2k`, `jpeg`, `wn`, `blur`, `ff`; the renamed folders `gblur` and `fastfading`
    of the authors' lists are accepted too), the scene is the reference name (``im2``),
    every pair is symmetric. Scores are DMOS (higher = worse).

LIVE 3D IQA Phase II (`live3d_phase2`)
    `3DDmosRelease.mat` holds `Dmos`, `RefFilename`, `StiFilename`; each stimulus is one
    side-by-side file in `Stimuli/` (left half = left view). The file name ends in
    ``_{type}_{profile}`` (type 1 wn, 2 jp2k, 3 jpeg, 4 blur, 5 ff; profile 0 reference,
    4/7/9 symmetric, 1/2/3/5/6/8 asymmetric). The scene is the stem of `RefFilename`.
    Scores are DMOS (higher = worse).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from siqa.data.databases.common import exists, posix_path, require_dir
from siqa.data.records import StereoPair
from siqa.errors import UserError


# --------------------------------------------------------------------------- .mat files
def _load_mat(path: Path):
    import scipy.io

    if not exists(path, "is_file"):
        raise UserError(f"score file not found: {path}")
    try:
        return scipy.io.loadmat(str(path))
    except NotImplementedError:
        raise UserError(
            f"cannot read {path}: MATLAB v7.3 (HDF5) files are not supported; "
            "re-save it in MATLAB with save(..., '-v7')"
        ) from None
    except Exception as err:  # scipy raises several types for a damaged file
        raise UserError(f"cannot read {path}: not a valid .mat file ({err})") from None


def _mat_var(mat, var, path):
    if var not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise UserError(f"variable '{var}' missing in {path} (variables found: "
                        f"{', '.join(found) or 'none'}); use the file of the official release")
    arr = mat[var]
    if not isinstance(arr, np.ndarray):  # e.g. a sparse matrix
        raise UserError(f"variable '{var}' in {path} is a {type(arr).__name__}, not an array")
    return arr


def _to_str(x):
    """One string out of a loadmat cell element (nested object/char arrays)."""
    while isinstance(x, np.ndarray):
        if x.dtype.kind in "US":
            return "".join(str(s) for s in x.ravel()).strip()
        if x.size != 1:
            raise ValueError(f"expected one string, got an array of shape {x.shape}")
        x = x.ravel()[0]
    return str(x).strip()


def _mat_strings(mat, var, path):
    arr = _mat_var(mat, var, path)
    try:
        if arr.dtype.kind in "US":  # a char matrix or a string array: one name per element
            return [str(r).strip() for r in np.atleast_1d(arr).ravel()]
        return [_to_str(x) for x in arr.ravel(order="F")]
    except ValueError as err:
        raise UserError(f"variable '{var}' in {path} is not a list of names: {err}") from None


def _mat_numbers(mat, var, path):
    arr = _mat_var(mat, var, path)
    try:
        if arr.dtype.kind in "biuf":
            values = arr.astype(np.float64).ravel(order="F")
        elif arr.dtype.kind == "O":  # a cell of single numbers
            values = np.array([np.asarray(x, dtype=np.float64).item() for x in arr.ravel(order="F")],
                              dtype=np.float64)
        else:
            raise TypeError(arr.dtype)
    except (TypeError, ValueError):
        raise UserError(f"variable '{var}' in {path} is not numeric (one number per image "
                        f"expected, got {arr.dtype.name} of shape {arr.shape})") from None
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise UserError(f"variable '{var}' in {path}: {bad.size} value(s) not finite "
                        f"(first: entry {bad[0] + 1} = {float(values[bad[0]])!r})")
    return values


def _check_lengths(path, **lists):
    lengths = {k: len(v) for k, v in lists.items()}
    if len(set(lengths.values())) != 1:
        desc = ", ".join(f"{k}: {n}" for k, n in lengths.items())
        raise UserError(f"variables in {path} differ in length ({desc})")
    if not next(iter(lengths.values())):
        raise UserError(f"{path} lists no images ({', '.join(lengths)} are empty)")


# --------------------------------------------------------------------------- LIVE I
LIVE1_FOLDERS = {
    "jp2k": "jp2k",
    "jpeg": "jpeg",
    "wn": "wn",
    "blur": "blur",
    "gblur": "blur",
    "ff": "ff",
    "fastfading": "ff",
}


def load_phase1(root) -> list[StereoPair]:
    """dataset.name=live3d_phase1: the pairs listed in `root`/data.mat."""
    root = require_dir(root, "live3d_phase1")
    mat_path = root / "data.mat"
    mat = _load_mat(mat_path)
    names = _mat_strings(mat, "img_names", mat_path)
    refs = _mat_strings(mat, "ref_names", mat_path)
    dmos = _mat_numbers(mat, "dmos", mat_path)
    _check_lengths(mat_path, img_names=names, ref_names=refs, dmos=dmos)
    pairs = []
    for name, ref, score in zip(names, refs, dmos):
        rel = posix_path(name)
        if len(rel.parts) < 2:
            raise UserError(f"entry {name!r} in {mat_path} has no distortion folder")
        folder = rel.parts[0]
        kind = LIVE1_FOLDERS.get(folder.lower())
        if kind is None:
            raise UserError(
                f"entry {name!r} in {mat_path}: unknown distortion folder {folder!r} "
                f"(expected one of {', '.join(sorted(set(LIVE1_FOLDERS)))})"
            )
        folder_path = root.joinpath(*rel.parts[:-1])
        if not exists(folder_path, "is_dir"):  # the authors' lists rename blur/ff, the release does not
            for alias, k in LIVE1_FOLDERS.items():
                if k == kind and exists(root / alias, "is_dir"):
                    folder_path = root.joinpath(alias, *rel.parts[1:-1])
                    break
        stem, ext = rel.stem, rel.suffix or ".bmp"
        pairs.append(
            StereoPair(
                name=str(rel),
                left=folder_path / f"{stem}_l{ext}",
                right=folder_path / f"{stem}_r{ext}",
                score=float(score),
                higher_is_better=False,
                content=posix_path(ref).stem,
                distortion=kind,
                symmetric=True,
            )
        )
    return pairs


# --------------------------------------------------------------------------- LIVE II
LIVE2_TYPES = {1: "wn", 2: "jp2k", 3: "jpeg", 4: "blur", 5: "ff"}
LIVE2_SYMMETRIC_PROFILES = {4, 7, 9}
LIVE2_ASYMMETRIC_PROFILES = {1, 2, 3, 5, 6, 8}
_LIVE2_NAME = re.compile(r"_(\d+)_(\d+)$")


def live2_codes(filename: str):
    """(distortion, symmetric) from a LIVE Phase II stimulus name ``..._{type}_{profile}.bmp``."""
    m = _LIVE2_NAME.search(posix_path(filename).stem)
    if m is None:
        raise UserError(f"LIVE Phase II stimulus name {filename!r} does not end in _<type>_<profile>")
    try:
        kind, profile = int(m.group(1)), int(m.group(2))
    except ValueError:  # more digits than int() takes
        raise UserError(f"LIVE Phase II stimulus name {filename!r}: type/profile codes too long") from None
    if profile == 0:
        return "pristine", True
    if kind not in LIVE2_TYPES:
        raise UserError(f"LIVE Phase II stimulus {filename!r}: unknown type code {kind} (1..5)")
    if profile in LIVE2_SYMMETRIC_PROFILES:
        return LIVE2_TYPES[kind], True
    if profile in LIVE2_ASYMMETRIC_PROFILES:
        return LIVE2_TYPES[kind], False
    raise UserError(f"LIVE Phase II stimulus {filename!r}: unknown profile code {profile} (0..9)")


def _resolve_in(root: Path, folder: str, name: str) -> Path:
    rel = posix_path(name)
    direct = root.joinpath(*rel.parts)
    if len(rel.parts) > 1 and exists(direct):
        return direct
    return root / folder / rel.name


def load_phase2(root) -> list[StereoPair]:
    """dataset.name=live3d_phase2: the stimuli listed in `root`/3DDmosRelease.mat."""
    root = require_dir(root, "live3d_phase2")
    mat_path = root / "3DDmosRelease.mat"
    mat = _load_mat(mat_path)
    dmos = _mat_numbers(mat, "Dmos", mat_path)
    refs = _mat_strings(mat, "RefFilename", mat_path)
    stims = _mat_strings(mat, "StiFilename", mat_path)
    _check_lengths(mat_path, Dmos=dmos, RefFilename=refs, StiFilename=stims)
    pairs = []
    for number, (stim, ref, score) in enumerate(zip(stims, refs, dmos), 1):
        try:
            kind, symmetric = live2_codes(stim)
        except UserError as err:
            raise UserError(f"variable 'StiFilename' in {mat_path}, entry {number}: {err}") from None
        pairs.append(
            StereoPair(
                name=posix_path(stim).name,
                left=_resolve_in(root, "Stimuli", stim),
                right=None,
                score=float(score),
                higher_is_better=False,
                content=posix_path(ref).stem,
                distortion=kind,
                symmetric=symmetric,
            )
        )
    return pairs
