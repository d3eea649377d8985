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


# ------------------------------------------------------------------------- split files
# A split file (`splits.json`, written by every run; `dataset.split_file=PATH` trains on
# one) names the scenes of every part of every split, so that anyone with the same
# database trains and tests on exactly the same pairs:
#
#   {"format": "siqa-splits/1", "database": "live3d_phase1", "seed": 0,
#    "ratios": [0.6, 0.2, 0.2], "pairs": 365, "pairs_sha256": "<hex>",
#    "scenes": {"im2": {"pairs": 18, "sha256": "<16 hex>"}, ...},
#    "splits": [{"train": ["im11", ...], "val": [...], "test": [...]}, ...]}
#
# pairs_sha256 is the SHA-256 of the sorted pair names (StereoPair.name, one per line,
# UTF-8); scenes[s].sha256 the first 16 hex digits of the same digest over the pairs of
# scene s, so that a mismatch names its scene. The pairs of a part are taken in database
# order, exactly as `content_splits` gives them: a run on a split file and a run with the
# file's seed see the same pairs in the same order.
SPLIT_FORMAT = "siqa-splits/1"


def _digest(names) -> str:
    import hashlib

    return hashlib.sha256("\n".join(sorted(names)).encode("utf-8")).hexdigest()


def scene_table(pairs) -> dict:
    by_scene = {}
    for p in pairs:
        by_scene.setdefault(p.content, []).append(p.name)
    return {s: {"pairs": len(names), "sha256": _digest(names)[:16]}
            for s, names in sorted(by_scene.items())}


def split_document(pairs, splits, database, seed, ratios) -> dict:
    """The split-file dict of `splits` (index dicts of `content_splits`) over `pairs`."""
    return {
        "format": SPLIT_FORMAT,
        "database": database,
        "seed": int(seed),
        "ratios": [float(r) for r in ratios],
        "pairs": len(pairs),
        "pairs_sha256": _digest(p.name for p in pairs),
        "scenes": scene_table(pairs),
        "splits": [{k: sorted(s) for k, s in split_scenes(pairs, split).items()}
                   for split in splits],
    }


def document_sha256(doc) -> str:
    """SHA-256 of a split document's canonical JSON (independent of the file's layout)."""
    import hashlib
    import json

    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def split_file_text(doc) -> str:
    """The JSON text of a split document, one scene and one split per line (diff-friendly)."""
    import json

    def block(key, items):
        rows = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in items]
        return f' {json.dumps(key)}: {{\n' + ",\n".join(rows) + "\n }"

    lines = [f" {json.dumps(k)}: {json.dumps(v)}" for k, v in doc.items()
             if k not in ("scenes", "splits")]
    lines.append(block("scenes", doc["scenes"].items()))
    rows = [f"  {json.dumps(s)}" for s in doc["splits"]]
    lines.append(' "splits": [\n' + ",\n".join(rows) + "\n ]")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def write_split_file(path, doc):
    from siqa.files import atomic_write_text

    atomic_write_text(path, split_file_text(doc))


def read_split_file(path) -> dict:
    """A split file's dict, its structure checked (UserError naming the file)."""
    import json
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise UserError(f"split file not found: {path} (dataset.split_file)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"split file {path} is not valid JSON ({err})") from None
    if not isinstance(doc, dict) or doc.get("format") != SPLIT_FORMAT:
        raise UserError(f"split file {path} is not a {SPLIT_FORMAT} file (written by a run as "
                        "splits.json, or shipped in splits/)")
    for key in ("pairs_sha256", "scenes", "splits", "ratios"):
        if key not in doc:
            raise UserError(f"split file {path} has no '{key}'")
    splits = doc["splits"]
    if not isinstance(splits, list) or not splits or not all(
            isinstance(s, dict) and all(isinstance(s.get(k), list) for k in SPLITS) for s in splits):
        raise UserError(f"split file {path}: 'splits' must be a non-empty list of "
                        "{train, val, test} scene lists")
    return doc


def splits_from_document(pairs, doc, source, repeats=None) -> list[dict]:
    """Index dicts (as `content_splits`) of the first `repeats` splits of a split document,
    after checking that it describes this database: UserError naming `source` and the
    first offending scene otherwise."""
    splits = doc["splits"]
    if repeats is not None and int(repeats) > len(splits):
        raise UserError(f"split file {source} holds {len(splits)} split(s); train.repeats="
                        f"{repeats} asks for more")
    ours = scene_table(pairs)
    theirs = doc["scenes"]
    for scene in sorted(set(ours) | set(theirs)):
        if scene not in ours:
            raise UserError(f"split file {source} does not match the database: scene '{scene}' "
                            "of the file is not in the database")
        if scene not in theirs:
            raise UserError(f"split file {source} does not match the database: scene '{scene}' "
                            "of the database is not in the file")
        if ours[scene] != theirs[scene]:
            raise UserError(f"split file {source} does not match the database: the pairs of "
                            f"scene '{scene}' differ ({ours[scene]['pairs']} here, "
                            f"{theirs[scene].get('pairs')} in the file, or other names)")
    if _digest(p.name for p in pairs) != doc["pairs_sha256"]:
        raise UserError(f"split file {source} does not match the database: the pair-list hash "
                        "differs")
    contents = [p.content for p in pairs]
    out = []
    for r, split in enumerate(splits[: len(splits) if repeats is None else int(repeats)]):
        seen = {}
        for part in SPLITS:
            for scene in split[part]:
                if scene not in ours:
                    raise UserError(f"split file {source}, split {r}: scene '{scene}' ({part}) "
                                    "is not in the database")
                if scene in seen:
                    raise UserError(f"split file {source}, split {r}: scene '{scene}' is in both "
                                    f"{seen[scene]} and {part}")
                seen[scene] = part
        missing = sorted(set(ours) - set(seen))
        if missing:
            raise UserError(f"split file {source}, split {r}: scene '{missing[0]}' is in no part")
        parts = {part: set(split[part]) for part in SPLITS}
        out.append({part: np.flatnonzero([c in parts[part] for c in contents]).astype(np.int64)
                    for part in SPLITS})
    return out


def splits_for_run(pairs, cfg):
    """(splits, document) of a run: from `dataset.split_file` when set (its first
    `train.repeats` splits; its ratios and seed replace `dataset.split` and the split seed),
    else `content_splits` with `dataset.split`, `train.seed`, `train.repeats`."""
    ds, t = cfg["dataset"], cfg["train"]
    path = ds.get("split_file")
    if path:
        doc = read_split_file(path)
        splits = splits_from_document(pairs, doc, path, repeats=t["repeats"])
        doc = {**doc, "splits": doc["splits"][: len(splits)]}
        return splits, doc
    splits = content_splits(pairs, ratios=tuple(ds["split"]), seed=t["seed"], repeats=t["repeats"])
    return splits, split_document(pairs, splits, ds["name"], t["seed"], ds["split"])
