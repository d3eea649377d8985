"""Content-disjoint splits: no scene in two splits, seeded, repeats differ."""
from pathlib import Path

import numpy as np
import pytest

from siqa.data.records import StereoPair
from siqa.data.splits import content_splits, scene_counts, split_scenes
from siqa.errors import UserError

SCENES = [f"im{i}" for i in (2, 3, 5, 7, 11, 12, 13, 17, 19, 21, 22, 23, 25, 27, 28, 30, 31, 33, 34, 36)]


def live_like():
    rng = np.random.default_rng(0)
    pairs = []
    for s in SCENES:
        for k in range(int(rng.integers(10, 25))):
            pairs.append(StereoPair(f"{s}_{k}", Path(f"{s}_{k}_l.bmp"), Path(f"{s}_{k}_r.bmp"), 1.0, False, s, "wn", True))
    return pairs


def test_no_scene_in_two_splits_and_all_pairs_used():
    pairs = live_like()
    splits = content_splits(pairs, seed=3, repeats=5)
    for split in splits:
        scenes = split_scenes(pairs, split)
        assert [len(scenes[k]) for k in ("train", "val", "test")] == [12, 4, 4]
        assert not scenes["train"] & scenes["val"]
        assert not scenes["train"] & scenes["test"]
        assert not scenes["val"] & scenes["test"]
        allidx = np.concatenate([split["train"], split["val"], split["test"]])
        assert sorted(allidx.tolist()) == list(range(len(pairs)))
        assert all(split[k].dtype == np.int64 for k in split)


def test_seeded_and_repeats_differ():
    pairs = live_like()
    a = content_splits(pairs, seed=1, repeats=4)
    b = content_splits(pairs, seed=1, repeats=4)
    c = content_splits(pairs, seed=2, repeats=1)
    for x, y in zip(a, b):
        assert all(np.array_equal(x[k], y[k]) for k in x)
    tests = {tuple(s["test"].tolist()) for s in a}
    assert len(tests) == 4
    assert not np.array_equal(a[0]["test"], c[0]["test"])


def test_rounding_gives_every_split_a_scene():
    assert scene_counts(20) == [12, 4, 4]
    assert scene_counts(3) == [1, 1, 1]
    assert scene_counts(4) == [2, 1, 1]
    assert scene_counts(5, (0.8, 0.1, 0.1)) == [3, 1, 1]
    assert scene_counts(12) == [7, 3, 2]
    with pytest.raises(UserError, match="2 scene"):
        scene_counts(2)
    with pytest.raises(UserError, match="sum to 1"):
        scene_counts(10, (0.5, 0.2, 0.2))
    with pytest.raises(UserError, match="non-negative"):
        scene_counts(10, (1.2, -0.1, -0.1))
