"""Which pairs of a database a checkpoint has seen: train/test identity by content.

A checkpoint records the pairs of each part of its split: their names (state["split"],
the identities of the split file) and, since this module exists, the SHA-256 of each
pair's view files (state["pair_sha256"], aligned with the names). Paths and config strings
are never compared: `root: null` and `data/demo`, a relative and an absolute manifest, a
copy of the images in another folder, are the same pairs.

    database pairs P --identity--> seen = P n (train u val)  never scored
                                   test = P n test           the checkpoint's test split (*)
                                   rest = P - seen           another database's pairs

identity: the content hash of the pair (`pair_sha256`: left file, right file) when the
checkpoint recorded it; the pair name for a checkpoint written before (the name is unique
within a database: the relative path of its distorted file). The scores play no part: the
same images rated on another scale (a MOS copy of a DMOS database) are the same pairs.

`evaluation_pairs(pairs, state, split)` decides what is scored:
  split "test": the checkpoint's own database (P holds its whole test split): the test
      split, in the checkpoint's order; a database that shares no pair: all of P; one that
      shares some: P less its training/validation pairs, with the number dropped.
  split "all": all of P; refused (UserError) when P holds a training or validation pair.
Limitation: the same scenes at another resolution (data/demo_full against data/demo) are
other images and are not recognised; a content-disjoint test there is the user's choice.

Before a run trains, `split_content_notes` looks at its splits the same way, file by file:
a view file (by content) held by a training pair and by a validation or test pair means two
scenes that are one (a manifest without `ref`, where every pair is its own scene, puts a
scene's pristine view in train and its distorted pairs in test). A warning in the run's log;
refused under protocol.design=kfold, whose pooled out-of-fold test claims every pair unseen.
"""
import hashlib
import os
from dataclasses import dataclass, field

from siqa.errors import UserError, counted
from siqa.files import sha256_file

PARTS = ("train", "val", "test")
_FILE_CACHE = {}  # (path, size, mtime_ns) -> sha256: a run hashes each file once


def _file_sha256(path) -> str:
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _FILE_CACHE:
        _FILE_CACHE[key] = sha256_file(path)
    return _FILE_CACHE[key]


def pair_sha256(pair) -> str:
    """SHA-256 of a pair's content: the hashes of its left and right files (or its
    side-by-side file), one per line."""
    parts = [_file_sha256(pair.left), "" if pair.right is None else _file_sha256(pair.right)]
    return hashlib.sha256("\n".join(parts).encode("ascii")).hexdigest()


def split_identities(pairs_by_part) -> dict:
    """{part: [pair_sha256, ...]} for a checkpoint, aligned with its split names."""
    return {part: [pair_sha256(p) for p in pairs] for part, pairs in pairs_by_part.items()}


@dataclass
class Selection:
    """The pairs to score and what was left out."""

    pairs: list
    split: str  # "test" (the checkpoint's test split), "all", or "all less seen"
    dropped: int = 0  # training/validation pairs of the checkpoint left out
    shared: dict = field(default_factory=dict)  # {part: pairs of that part found in P}

    @property
    def mark(self) -> str:
        """The table mark: * the checkpoint's test split, + pairs dropped, '' none."""
        return {"test": "*", "all less seen": "+"}.get(self.split, "")

    def describe(self) -> str:
        if self.split == "test":
            return "the checkpoint's test split"
        if self.split == "all less seen":
            return (f"all pairs less {self.dropped} training/validation pair(s) of the "
                    "checkpoint")
        return "all pairs"


def _keys(state):
    """(how pairs are identified, {part: [key, ...]}) for a checkpoint state."""
    hashes = state.get("pair_sha256")
    if hashes and all(len(hashes.get(p, ())) == len(state["split"][p]) for p in PARTS):
        return "content", {p: list(hashes[p]) for p in PARTS}
    return "name", {p: list(state["split"][p]) for p in PARTS}


def evaluation_pairs(pairs, state, split="test") -> Selection:
    """What to score of `pairs` with the checkpoint `state` (see the module docstring)."""
    kind, keys = _keys(state)
    key_of = pair_sha256 if kind == "content" else (lambda p: p.name)
    keyed = [(key_of(p), p) for p in pairs]
    seen = set(keys["train"]) | set(keys["val"])
    test = set(keys["test"])
    shared = {part: sum(k in set(keys[part]) for k, _ in keyed) for part in PARTS}
    rest = [p for k, p in keyed if k not in seen]
    dropped = len(keyed) - len(rest)
    if split == "all":
        if dropped:
            raise UserError(
                f"{dropped} pair(s) of this database are training or validation pairs of the "
                f"checkpoint (same {'images' if kind == 'content' else 'names'}): --split all "
                "would score them; use --split test (the checkpoint's test split)")
        return Selection(rest, "all", 0, shared)
    if split != "test":
        raise ValueError(f"split must be 'test' or 'all', got {split!r}")
    by_key = {}
    for k, p in keyed:
        by_key.setdefault(k, p)
    if test and all(k in by_key for k in keys["test"]):
        return Selection([by_key[k] for k in keys["test"]], "test", dropped, shared)
    if dropped:
        return Selection(rest, "all less seen", dropped, shared)
    return Selection(rest, "all", 0, shared)


def shared_view_files(pairs, split) -> dict:
    """{sha256: (train pair, part, other pair, its file)} of the view files (by content) that a
    training pair and a validation or test pair of `split` (an index dict) both hold."""
    train = {}
    for i in split["train"]:
        for f in pairs[i].files:
            train.setdefault(_file_sha256(f), pairs[i])
    shared = {}
    for part in ("val", "test"):
        for i in split[part]:
            for f in pairs[i].files:
                digest = _file_sha256(f)
                if digest in train and digest not in shared:
                    shared[digest] = (train[digest], part, pairs[i], f)
    return shared


def split_content_notes(pairs, splits, settings) -> list:
    """Lines for the run's log about what its scenes are: a note where every pair is its own
    scene (a manifest without `ref`), a warning where a split's training pairs share view files
    with its validation or test pairs; the latter a UserError under protocol.design=kfold.
    `settings`: the run's siqa.settings.Settings view."""
    lines = []
    if len(pairs) > 1 and all(p.content == p.name for p in pairs):
        lines.append(f"note: {settings.dataset.manifest or 'the manifest'} has no ref "
                     f"column: every pair is its own scene ({counted(len(pairs), 'pair')}, "
                     f"{counted(len(pairs), 'scene')}) and the splits are by pair; a ref column "
                     "(each pair's reference scene) keeps the pairs of a scene in one part")
    found = {r: shared for r, split in enumerate(splits) if (shared := shared_view_files(pairs, split))}
    if not found:
        return lines
    r, shared = next(iter(found.items()))
    train_pair, part, other, path = next(iter(shared.values()))
    who = (f"{len(found)} of {len(splits)} splits share" if len(found) > 1
           else f"split {r} of {len(splits)} shares")
    what = (f"{who} view files between train and val/test (split {r}: "
            f"{counted(len(shared), 'file')}; e.g. {path} of {part} pair {other.name} is "
            f"byte-identical to a view of train pair {train_pair.name})")
    advice = "pairs that share a view are one scene: give them one ref in the manifest"
    if settings.protocol.design == "kfold":
        raise UserError(f"protocol.design=kfold: {what}, so the out-of-fold test would score "
                        f"views the network trained on; {advice}")
    lines.append(f"warning: {what}: the test is not blind to those views; {advice}")
    return lines
