"""Content-disjoint train/validation/test splits (by scene, or content group), seeded.

Every pair goes to the part of its scene (`StereoPair.content`; near-duplicate scenes share
one content id, see siqa/data/demo.py), so no scene is in two parts. Two designs:

random (the paper's repeated 60/20/20 splits, `content_splits`), drawn one after another
from one generator seeded by `dataset.split_seed`:
- part sizes: the largest-remainder rounding of ratio * number of scenes, ties of the
  remainder going to train, then test, then validation (8 scenes at 60/20/20: 5/1/2, not
  5/2/1, so that a test set is as large as the rounding allows); then every part with a
  positive ratio gets at least one scene (taken from the largest part). A ratio of 0 gives
  an empty part on purpose; fewer scenes than parts with a positive ratio is a UserError;
- test scenes balanced: each split tests the scenes tested least so far (ties in a random
  order), so every scene is tested once within the first ceil(k / n_test) splits and no
  scene is tested twice before every other scene has been tested once;
- validation scenes drawn at random from the others, the rest train;
- no split drawn twice: a split whose (test, validation) scenes equal an earlier one's is
  redrawn (after REDRAWS balanced draws that were all used, without the balance); asking
  for more splits than there are distinct ones is a UserError.
Split r depends on splits 0..r-1 only: the first 5 of 10 splits are those of repeats=5.

kfold (`kfold_splits`, `protocol.design: kfold`): see its docstring.

Splits drawn by versions before this design (one generator per split, remainders to
validation first, seeded by `train.seed`) stay valid as split files
(`dataset.split_file=runs/X/splits.json` trains on exactly their scenes); their seed no
longer regenerates them.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

from siqa.errors import UserError, counted
from siqa.files import atomic_write_text

SPLITS = ("train", "val", "test")
REMAINDER_ORDER = (0, 2, 1)  # equal remainders: a scene goes to train, then test, then val
SPLIT_DESIGN = "balanced-test/2"  # recorded in split files drawn by `content_splits`
KFOLD_DESIGN = "kfold/1"  # recorded in split files drawn by `kfold_splits` (with "folds")
REDRAWS = 200  # attempts per split before the balance of test scenes is given up


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
            f"database has {counted(n_scenes, 'scene')}, {len(positive)} splits need at least one "
            f"each (splits are by scene); use a database with at least {len(positive)} scenes"
        )
    raw = [x * n_scenes for x in r]
    counts = [math.floor(v) for v in raw]
    order = sorted(range(3), key=lambda i: (-(raw[i] - counts[i]), REMAINDER_ORDER[i]))
    for i in order[: n_scenes - sum(counts)]:
        counts[i] += 1
    for i in positive:
        if counts[i] == 0:
            donor = max(range(3), key=lambda j: (counts[j], -j))
            counts[donor] -= 1
            counts[i] += 1
    return counts


def distinct_splits(n_scenes, counts) -> int:
    """Number of distinct (train, val, test) partitions of n_scenes with these part sizes."""
    a, b, c = counts
    return math.comb(n_scenes, c) * math.comb(n_scenes - c, b)


def _index_split(contents, scenes, parts):
    out = {}
    for name in SPLITS:
        chosen = {scenes[i] for i in parts[name]}
        out[name] = np.flatnonzero([c in chosen for c in contents]).astype(np.int64)
    return out


def content_splits(pairs, ratios=(0.6, 0.2, 0.2), seed=0, repeats=1) -> list[dict]:
    """`repeats` distinct splits of `pairs` by scene (the random design of the module
    docstring: balanced test scenes, random validation scenes, no duplicate).

    Each split is dict(train=, val=, test=) of sorted int64 index arrays into `pairs`.
    seed: an int (`dataset.split_seed`); the same seed gives the same splits.
    """
    contents = np.array([p.content for p in pairs], dtype=object)
    scenes = sorted(set(contents.tolist()))
    n = len(scenes)
    counts = scene_counts(n, ratios)
    if int(repeats) < 1:
        raise UserError(f"number of splits must be >= 1, got {repeats}")
    available = distinct_splits(n, counts)
    if int(repeats) > available:
        raise UserError(f"train.repeats={repeats}: {counted(n, 'scene')} split {counts[0]}/"
                        f"{counts[1]}/{counts[2]} allow only {counted(available, 'distinct split')}")
    n_test, n_val = counts[2], counts[1]
    rng = np.random.default_rng(int(seed))
    tested = np.zeros(n, dtype=np.int64)
    seen, out = set(), []
    for _ in range(int(repeats)):
        attempt = 0
        while True:
            order = rng.permutation(n)
            if attempt < REDRAWS:  # the least-tested scenes first, ties in random order
                order = order[np.argsort(tested[order], kind="stable")]
            test, rest = order[:n_test], rng.permutation(order[n_test:])
            val, train = rest[:n_val], rest[n_val:]
            key = (frozenset(test.tolist()), frozenset(val.tolist()))
            if key not in seen:
                break
            attempt += 1
        seen.add(key)
        tested[test] += 1
        out.append(_index_split(contents, scenes, {"train": train, "val": val, "test": test}))
    return out


def kfold_splits(pairs, folds=5, repetitions=1, seed=0, val_fraction=0.25) -> list[dict]:
    """Cross-validation by scene: `repetitions` random partitions of the scenes into `folds`
    folds (sizes differ by at most one); split r * folds + f tests fold f of repetition r,
    so every scene is tested exactly once per repetition. Its validation scenes are drawn at
    random from the other folds (round(val_fraction * their number), at least 1), the rest
    train. Index dicts as `content_splits`; seeded by `seed` (`dataset.split_seed`).
    With folds = number of scenes every repetition has the same test sets (leave one scene
    out); only the validation scenes differ."""
    contents = np.array([p.content for p in pairs], dtype=object)
    scenes = sorted(set(contents.tolist()))
    n, k = len(scenes), int(folds)
    if k < 2 or k > n:
        raise UserError(f"protocol.folds={folds}: needs 2 <= folds <= the number of scenes ({n})")
    if n - math.ceil(n / k) < 2:
        raise UserError(f"protocol.folds={folds}: {counted(n, 'scene')} leave fewer than 2 scenes outside a "
                        "fold (at least one to train, one to validate): use fewer folds")
    if int(repetitions) < 1:
        raise UserError(f"number of repetitions must be >= 1, got {repetitions}")
    rng = np.random.default_rng(int(seed))
    out = []
    for _ in range(int(repetitions)):
        for test in np.array_split(rng.permutation(n), k):
            rest = rng.permutation(np.setdiff1d(np.arange(n), test))
            n_val = min(rest.size - 1, max(1, round(val_fraction * rest.size)))
            out.append(_index_split(contents, scenes,
                                    {"train": rest[n_val:], "val": rest[:n_val], "test": test}))
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
    return hashlib.sha256("\n".join(sorted(names)).encode("utf-8")).hexdigest()


def pair_list_sha256(pairs) -> str:
    """The hash of a database's pair names that a split document records (`pairs_sha256`)."""
    return _digest(p.name for p in pairs)


def scene_table(pairs) -> dict:
    by_scene = {}
    for p in pairs:
        by_scene.setdefault(p.content, []).append(p.name)
    return {s: {"pairs": len(names), "sha256": _digest(names)[:16]}
            for s, names in sorted(by_scene.items())}


def split_document(pairs, splits, database, seed, ratios, design=SPLIT_DESIGN, folds=None) -> dict:
    """The split-file dict of `splits` (index dicts of `content_splits`) over `pairs`.
    design: how they were drawn ("balanced-test/2" for content_splits, "kfold/1" for
    kfold_splits, with `folds`); files without it were drawn by an earlier version."""
    extra = {"design": design} if folds is None else {"design": design, "folds": int(folds)}
    return {
        "format": SPLIT_FORMAT,
        "database": database,
        "seed": int(seed),
        **extra,
        "ratios": [float(r) for r in ratios],
        "pairs": len(pairs),
        "pairs_sha256": pair_list_sha256(pairs),
        "scenes": scene_table(pairs),
        "splits": [{k: sorted(s) for k, s in split_scenes(pairs, split).items()}
                   for split in splits],
    }


def document_sha256(doc) -> str:
    """SHA-256 of a split document's canonical JSON (independent of the file's layout)."""
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def split_file_text(doc) -> str:
    """The JSON text of a split document, one scene and one split per line (diff-friendly)."""
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
    atomic_write_text(path, split_file_text(doc))


def read_split_file(path) -> dict:
    """A split file's dict, its structure checked (UserError naming the file)."""
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
    if pair_list_sha256(pairs) != doc["pairs_sha256"]:
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


def splits_for_run(pairs, settings):
    """(splits, document) of a run: from `dataset.split_file` when set (its first
    `train.repeats` splits; its ratios and seed replace `dataset.split` and the split seed),
    else `content_splits` with `dataset.split`, `dataset.split_seed`, `train.repeats`.
    `settings`: the run's siqa.settings.Settings view."""
    ds, t = settings.dataset, settings.train
    path = ds.split_file
    if path:
        doc = read_split_file(path)
        count = t.repeats * int(doc.get("folds") or 1)  # kfold: whole repetitions
        splits = splits_from_document(pairs, doc, path, repeats=count)
        doc = {**doc, "splits": doc["splits"][: len(splits)]}
        return splits, doc
    seed = ds.split_seed
    design = settings.protocol.design
    if design == "kfold":
        r = ds.split
        folds = settings.protocol.folds
        val_fraction = r[1] / (r[0] + r[1]) if r[0] + r[1] > 0 else 0.25
        splits = kfold_splits(pairs, folds, t.repeats, seed, val_fraction)
        return splits, split_document(pairs, splits, ds.name, seed, ds.split,
                                      design=KFOLD_DESIGN, folds=folds)
    splits = content_splits(pairs, ratios=tuple(ds.split), seed=seed, repeats=t.repeats)
    return splits, split_document(pairs, splits, ds.name, seed, ds.split)

