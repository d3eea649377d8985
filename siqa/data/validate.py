"""Checks on a database before any work starts, reported as one UserError.

`validate_pairs` decodes every image once (PIL `Image.load()`), so that a truncated or
damaged file is reported here, before anything is computed, cached or written, and not
halfway through the NSS targets or the patches. Decoding costs about 0.6 s for the 384
files of the demo database (2-core machine); a file is also checked to be of a format
OpenCV reads (`cv2.haveImageReader`, a header check), because the NSS targets are read
with OpenCV. All problems of one kind are collected and reported together: how many, and
the first few files or values.
"""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

from siqa.data.splits import scene_counts
from siqa.errors import UserError, examples
from siqa.imageio import check_image

MIN_VIEW = 33  # smallest view side that gives one 32x32 patch (positions range(0, n - 32, 24))


def validate_pairs(pairs, ratios=None, min_view=MIN_VIEW, source=None):
    """Check every record of `pairs`; return each pair's view size (width, height).

    `source` (e.g. "dataset.name=csv, dataset.manifest=m.csv") says in the message where
    the records came from.

    Problems found (all reported together in one UserError): no pairs; missing files;
    files that are empty or not images; views of a pair that differ in size; views smaller
    than one patch; scores that are not finite; duplicate names or duplicate file pairs;
    and, when `ratios` is given, a split ratio that leaves a split with no scene.
    """
    pairs = list(pairs)
    where = f" ({source})" if source else ""
    if not pairs:
        raise UserError(f"the database{where} has no pairs")
    problems = []

    bad_scores = [f"{p.name}={p.score!r}" for p in pairs if not _finite(p.score)]
    if bad_scores:
        problems.append(f"{len(bad_scores)} score(s) not finite: {examples(bad_scores)}")

    dup_names = [n for n, c in Counter(p.name for p in pairs).items() if c > 1]
    if dup_names:
        problems.append(f"{len(dup_names)} duplicate name(s): {examples(dup_names)}")
    dup_files = [
        "+".join(str(f) for f in k)
        for k, c in Counter(tuple(str(Path(f)) for f in p.files) for p in pairs).items()
        if c > 1
    ]
    if dup_files:
        problems.append(f"{len(dup_files)} duplicate entr(y/ies) for the same file(s): {examples(dup_files)}")

    missing, unreadable, mismatched, small = [], [], [], []
    header = {}  # path -> size or problem, each file read once
    sizes = []
    for p in pairs:
        got = []
        for f in p.files:
            key = str(f)
            if key not in header:
                header[key] = check_image(f)
                if header[key] == "missing":
                    missing.append(key)
                elif isinstance(header[key], str):
                    unreadable.append(f"{key} ({header[key]})")
            got.append(header[key])
        if any(isinstance(g, str) for g in got):
            sizes.append(None)
            continue
        if p.right is None:
            w, h = got[0]
            view = (w // 2, h)
        else:
            if got[0] != got[1]:
                mismatched.append(
                    f"{p.left} is {got[0][0]}x{got[0][1]} but {p.right} is {got[1][0]}x{got[1][1]}"
                )
            view = got[0]
        if view[0] < min_view or view[1] < min_view:
            small.append(f"{p.left} (view {view[0]}x{view[1]})")
        sizes.append(view)

    if missing:
        problems.append(f"{len(missing)} missing file(s): {examples(missing)}")
    if unreadable:
        problems.append(f"{len(unreadable)} unreadable file(s): {examples(unreadable)}")
    if mismatched:
        problems.append(f"{len(mismatched)} pair(s) with left/right views of different sizes: {examples(mismatched)}")
    if small:
        problems.append(
            f"{len(small)} view(s) smaller than {min_view}x{min_view} (no 32x32 patch fits): {examples(small)}"
        )
    if ratios is not None and not problems:
        scene_counts(len({p.content for p in pairs}), ratios)  # raises its own UserError
    if problems:
        raise UserError(f"invalid database{where}: " + "; ".join(problems)
                        + "; correct or remove these entries")
    return sizes


def _finite(x):
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False
