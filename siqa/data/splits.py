"""Content-disjoint train/validation/test splits (by reference scene), seeded.

The scenes (`StereoPair.content`) are sorted, shuffled with a generator seeded by
(seed, repeat) and cut into three groups whose sizes follow `ratios`; every pair goes to the
group of its scene, so no scene is in two splits. Group sizes: the largest-remainder
rounding of ratio * number of scenes, then every split with a positive ratio gets at least
one scene (taken from the largest group). A ratio of 0 gives an empty split on purpose;
when there are fewer scenes than splits with a positive ratio, it is a UserError.
"""
from __future__ import annotations

import math

import numpy as np

from siqa.errors import UserError

SPLITS = ("train", "val", "test")


def _check_ratios(ratios):
    try:
        r = [float(x) for x in ratios]
    except (TypeError, ValueError):
        raise UserError(f"dataset.split: split ratios {ratios!r} must be three numbers "
                        "(train, val, test)") from None
    if len(r) != 3 or any(not math.isfinite(x) or x < 0 for x in r):
        raise UserError(f"dataset.split: split ratios {ratios!r} must be three non-negative numbers "
                        "(train, val, test)")
    if abs(sum(r) - 1.0) > 1e-6:
        raise UserError(f"dataset.split: split ratios {ratios!r} must sum to 1 (they sum to {sum(r):g})")
    return r


def scene_counts(n_scenes: int, ratios=(0.6, 0.2, 0.2)) -> list[int]:
    """Number of scenes in train/val/test; UserError if a split with a ratio > 0 gets none."""
    r = _check_ratios(ratios)
    positive = [i for i, x in enumerate(r) if x > 0]
    if n_scenes < len(positive):
        raise UserError(
            f"dataset.split: split ratios {list(ratios)} leave a split with no scene: the "
            f"database has {n_scenes} scene(s), {len(positive)} split(s) need at least one each "
            f"(splits are by scene); use a database with at least {len(positive)} scenes"
        )
    raw = [x * n_scenes for x in r]
    counts = [math.floor(v) for v in raw]
    order = sorted(range(3), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order[: n_scenes - sum(counts)]:
        counts[i] += 1
    for i in positive:
        if counts[i] == 0:
            donor = max(range(3), key=lambda j: (counts[j], -j))
            counts[donor] -= 1
            counts[i] += 1
    return counts


def content_splits(pairs, ratios=(0.6, 0.2, 0.2), seed=0, repeats=1) -> list[dict]:
    """`repeats` independent splits of `pairs` by scene.

    Each split is dict(train=, val=, test=) of sorted int64 index arrays into `pairs`.
    Split r is drawn with numpy's default_rng([seed, r]): the same seed gives the same splits.
    """
    contents = np.array([p.content for p in pairs], dtype=object)
    scenes = sorted(set(contents.tolist()))
    counts = scene_counts(len(scenes), ratios)
    if int(repeats) < 1:
        raise UserError(f"number of splits must be >= 1, got {repeats}")
    out = []
    for r in range(int(repeats)):
        rng = np.random.default_rng([int(seed), r])
        order = rng.permutation(len(scenes))
        bounds = np.cumsum([0] + counts)
        split = {}
        for name, a, b in zip(SPLITS, bounds[:-1], bounds[1:]):
            chosen = {scenes[i] for i in order[a:b]}
            split[name] = np.flatnonzero([c in chosen for c in contents]).astype(np.int64)
        out.append(split)
    return out


def split_scenes(pairs, split) -> dict:
    """The set of scenes in each part of one split (for reports and checks)."""
    return {k: {pairs[i].content for i in split[k]} for k in SPLITS}
