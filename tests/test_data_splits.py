"""Content-disjoint splits: no scene in two splits, seeded, repeats differ."""
from pathlib import Path

import numpy as np
import pytest

from siqa.config import load_config
from siqa.data.records import StereoPair
from siqa.data.splits import content_splits, distinct_splits, kfold_splits, scene_counts, split_scenes, splits_for_run
from siqa.errors import UserError
from siqa.settings import Settings

SCENES = [f"im{i}" for i in (2, 3, 5, 7, 11, 12, 13, 17, 19, 21, 22, 23, 25, 27, 28, 30, 31, 33, 34, 36)]


def live_like():
    rng = np.random.default_rng(0)
    pairs = []
    for s in SCENES:
        for k in range(int(rng.integers(10, 25))):
            pairs.append(StereoPair(f"{s}_{k}", Path(f"{s}_{k}_l.bmp"), Path(f"{s}_{k}_r.bmp"), 1.0, False,
                                    s, "wn", True))
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
    assert scene_counts(12) == [7, 2, 3]  # 7.2 / 2.4 / 2.4: the remainder goes to test
    assert scene_counts(8) == [5, 1, 2]  # LIVE 3D Phase II: 4.8 / 1.6 / 1.6 -> 5/1/2, not 5/2/1
    assert scene_counts(9) == [5, 2, 2]  # the demo's 9 content groups
    assert scene_counts(6) == [4, 1, 1] and scene_counts(10) == [6, 2, 2]
    with pytest.raises(UserError, match="2 scene"):
        scene_counts(2)
    with pytest.raises(UserError, match="sum to 1"):
        scene_counts(10, (0.5, 0.2, 0.2))
    with pytest.raises(UserError, match="non-negative"):
        scene_counts(10, (1.2, -0.1, -0.1))


def pairs_of(scenes, per_scene=3):
    return [StereoPair(f"{s}_{k}", Path(f"{s}_{k}.png"), None, 1.0, False, s, "wn")
            for s in scenes for k in range(per_scene)]


@pytest.mark.parametrize("n_scenes,repeats", [(6, 10), (8, 10), (10, 10), (20, 10), (9, 10)])
def test_random_splits_never_repeat_and_test_every_scene(n_scenes, repeats):
    """The field's scene counts: no duplicate split, and every scene tested within the first
    ceil(n / n_test) splits (balanced: test counts differ by at most one at every step)."""
    scenes = [f"s{i:02d}" for i in range(n_scenes)]
    pairs = pairs_of(scenes)
    splits = content_splits(pairs, seed=0, repeats=repeats)
    keys = [(tuple(s["test"]), tuple(s["val"])) for s in splits]
    assert len(set(keys)) == repeats
    n_test = scene_counts(n_scenes)[2]
    counts = {s: 0 for s in scenes}
    for r, split in enumerate(splits):
        for scene in split_scenes(pairs, split)["test"]:
            counts[scene] += 1
        assert max(counts.values()) - min(counts.values()) <= 1, r
        if (r + 1) * n_test >= n_scenes:
            assert min(counts.values()) >= 1
    prefix = content_splits(pairs, seed=0, repeats=4)  # the first 4 of 10 are repeats=4's
    assert all(np.array_equal(a[k], b[k]) for a, b in zip(prefix, splits) for k in a)


def test_a_tiny_database_gets_every_distinct_split_then_an_error():
    pairs = pairs_of(["a", "b", "c"])
    assert distinct_splits(3, scene_counts(3)) == 6
    splits = content_splits(pairs, seed=1, repeats=6)
    assert len({(tuple(s["train"]), tuple(s["val"]), tuple(s["test"])) for s in splits}) == 6
    with pytest.raises(UserError, match="only 6 distinct splits"):
        content_splits(pairs, seed=1, repeats=7)


def test_split_seed_is_its_own_key():
    pairs = pairs_of([f"s{i}" for i in range(10)])
    base, doc = splits_for_run(pairs, Settings(load_config(overrides=["train.repeats=3"])))
    other_train_seed, doc2 = splits_for_run(pairs, Settings(load_config(overrides=["train.repeats=3", "train.seed=7"])))
    assert doc2["splits"] == doc["splits"] and doc["seed"] == 0
    _, doc3 = splits_for_run(pairs, Settings(load_config(overrides=["train.repeats=3", "dataset.split_seed=7"])))
    assert doc3["splits"] != doc["splits"] and doc3["seed"] == 7


@pytest.mark.parametrize("n_scenes,folds,reps", [(8, 4, 3), (9, 5, 2), (20, 5, 2), (6, 6, 2)])
def test_kfold_tests_every_scene_once_per_repetition(n_scenes, folds, reps):
    scenes = [f"s{i:02d}" for i in range(n_scenes)]
    pairs = pairs_of(scenes)
    splits = kfold_splits(pairs, folds, reps, seed=3, val_fraction=0.25)
    assert len(splits) == folds * reps
    for r in range(reps):
        block = splits[r * folds:(r + 1) * folds]
        tested = [p for s in block for p in s["test"].tolist()]
        assert sorted(tested) == list(range(len(pairs)))  # every pair (scene) tested once
        sizes = [len(split_scenes(pairs, s)["test"]) for s in block]
        assert max(sizes) - min(sizes) <= 1
        for s in block:
            parts = split_scenes(pairs, s)
            assert parts["val"] and parts["train"]
            assert not parts["val"] & parts["test"] and not parts["train"] & parts["test"]
            assert not parts["train"] & parts["val"]
    if reps > 1 and folds < n_scenes:  # repetitions are different partitions
        first = {frozenset(split_scenes(pairs, s)["test"]) for s in splits[:folds]}
        second = {frozenset(split_scenes(pairs, s)["test"]) for s in splits[folds:2 * folds]}
        assert first != second
    with pytest.raises(UserError, match="protocol.folds"):
        kfold_splits(pairs, n_scenes + 1)
