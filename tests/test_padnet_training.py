"""PAD-Net trains as its authors' code does (datasets/data_live1.py, model/model_c1.py): one
random 256x256 crop of each pair an epoch, at a corner shared by both views, flipped
left-right and up-down with probability 1/2 each (both views alike), and the MSE of the
score; validation and test keep the six-crop grid. The crops come from (seed, epoch): a
resumed run trains on the ones an uninterrupted run does."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_tiny_database, run_entry, tiny_overrides
from siqa.data.inputs import SplitData
from siqa.data.patches import crop_generator, random_crops, whole_views
from siqa.models import MODELS
from siqa.models.spec import InputSpec
from siqa.training.step import joint_loss

H, W, SIZE = 7, 9, 4  # corners: rows 0..3, columns 0..5


def encoded_views(pairs=1):
    """uint8 (3, H, W) views whose pixels name their position: channel 0 = 16 y + x; the
    right view's channel 0 = 255 - that, so a crop tells which corner and flips it took."""
    yy, xx = np.mgrid[0:H, 0:W]
    pos = (16 * yy + xx).astype(np.uint8)
    left = np.stack([pos, pos // 2, np.full_like(pos, 7)])
    right = np.stack([255 - pos, pos // 3, np.full_like(pos, 9)])
    return [(torch.from_numpy(left.copy()), torch.from_numpy(right.copy())) for _ in range(pairs)]


def decode(crop):
    """(y, x, flipped left-right, flipped up-down) of a left crop (values / 255)."""
    pos = np.rint(crop[0].numpy() * 255).astype(int)
    y, x = divmod(int(pos.min()), 16)
    return y, x, bool(pos[0, 0] % 16 > pos[0, -1] % 16), bool(pos[0, 0] // 16 > pos[-1, 0] // 16)


def expected(view, y, x, lr, ud):
    crop = view.numpy()[:, y : y + SIZE, x : x + SIZE]
    crop = crop[:, :, ::-1] if lr else crop
    crop = crop[:, ::-1, :] if ud else crop
    return crop.astype(np.float32) / 255.0


def test_each_crop_is_one_slice_of_both_views_at_one_corner_with_the_same_flips():
    views = encoded_views(pairs=50)
    draws = []
    for epoch in range(8):
        left, right = random_crops(views, SIZE, crop_generator(0, epoch))
        assert left.shape == right.shape == (50, 3, SIZE, SIZE) and left.dtype == torch.float32
        for i in range(50):
            y, x, lr, ud = decode(left[i])
            assert 0 <= y <= H - SIZE and 0 <= x <= W - SIZE
            np.testing.assert_array_equal(left[i].numpy(), expected(views[i][0], y, x, lr, ud))
            np.testing.assert_array_equal(right[i].numpy(), expected(views[i][1], y, x, lr, ud))
            draws.append((y, x, lr, ud))
    # 400 seeded draws: every corner that fits is drawn (the last row and column included,
    # as random.randint's inclusive bound), and each flip about half of the time
    assert {(y, x) for y, x, _, _ in draws} == {(y, x) for y in range(H - SIZE + 1)
                                                for x in range(W - SIZE + 1)}
    for k in (2, 3):
        assert 150 < sum(d[k] for d in draws) < 250
    assert len({(d[2], d[3]) for d in draws}) == 4


def test_the_crops_are_fixed_by_seed_and_epoch_alone():
    views = encoded_views(pairs=20)
    a = random_crops(views, SIZE, crop_generator(3, 5))
    b = random_crops(views, SIZE, crop_generator(3, 5))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    for other in (crop_generator(3, 6), crop_generator(4, 5)):
        assert not torch.equal(random_crops(views, SIZE, other)[0], a[0])


def test_whole_views_are_the_rgb_files(tmp_path):
    manifest = make_tiny_database(tmp_path, scenes=2, levels=1, size=(50, 40))
    from siqa.data import load_database

    pairs = load_database("csv", manifest=manifest)
    spec = InputSpec(patch=16, stride=16, grid="cover", channels=3, normalisation="unit")
    views = whole_views(pairs, spec, progress=False)
    for p, (lv, rv) in zip(pairs, views):
        for path, view in ((p.left, lv), (p.right, rv)):
            rgb = np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1)
            assert view.dtype == torch.uint8 and np.array_equal(view.numpy(), rgb)


def test_padnet_learns_the_mse_of_its_score():
    spec = MODELS["padnet"].spec
    assert (spec.train_crop, spec.score_loss) == ("random", "mse")
    out = torch.tensor([1.0, 4.0, -2.0])
    data = SplitData(left=torch.zeros(3, 1, 2, 2), right=torch.zeros(3, 1, 2, 2),
                     pair_index=torch.tensor([0, 1, 2]), score=torch.tensor([2.0, 1.0, 0.0]),
                     nss=torch.zeros(3, 0))
    idx = torch.tensor([0, 1, 2])
    total, quality, _ = joint_loss(lambda left, right: (out,), data, idx, 0.0, spec=spec)
    assert quality.item() == pytest.approx((1 + 9 + 4) / 3) and total.item() == quality.item()
    l1 = InputSpec(outputs=("quality",))
    assert joint_loss(lambda left, right: (out,), data, idx, 0.0, spec=l1)[1].item() == \
        pytest.approx((1 + 3 + 2) / 3)


def test_a_random_crop_spec_needs_unit_intensities():
    with pytest.raises(AssertionError):
        InputSpec(channels=3, normalisation="standardise", train_crop="random")


def test_a_resumed_padnet_run_trains_on_the_crops_of_an_uninterrupted_one(tmp_path):
    """Views of 300x260 (45 x 5 corners): 2 epochs at once, and 1 epoch then --resume to 2,
    give the same predictions bit for bit."""
    manifest = make_tiny_database(tmp_path / "db", scenes=5, levels=1, size=(300, 260))
    common = {"model.name": "padnet", "dataset.split": "[0.6,0.2,0.2]", "train.batch_size": 2}

    def train(out, *extra, **over):
        proc = run_entry("train.py", *tiny_overrides(manifest, tmp_path, out_dir=out,
                                                     **{**common, **over}), *extra)
        assert proc.returncode == 0, proc.stderr
        return proc

    train(tmp_path / "once", **{"train.epochs": 2})
    train(tmp_path / "twice", **{"train.epochs": 1})
    train(tmp_path / "twice", "--resume", **{"train.epochs": 2})
    once, twice = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("once", "twice"))
    assert once["test"] == twice["test"] and once["val"] == twice["val"]
    assert (tmp_path / "once" / "predictions.csv").read_bytes() == \
        (tmp_path / "twice" / "predictions.csv").read_bytes()


def test_every_epoch_trains_on_its_own_crops_of_the_training_views(tmp_path, monkeypatch):
    """In a run: before each epoch the training tensors hold that epoch's crops of the
    training pairs' views (not the grid's six crops, not the previous epoch's)."""
    from siqa import config
    from siqa.training import run as runner
    from siqa.training import split_run

    manifest = make_tiny_database(tmp_path / "db", scenes=5, levels=1, size=(300, 260))
    seen, real_order = [], split_run.epoch_order

    def order(num_patches, seed, epoch, rank=0, world=1):  # called right after the crops
        seen.append((epoch, seed, num_patches))
        return real_order(num_patches, seed, epoch, rank, world)

    real_fill = split_run.fill_random_crops

    def fill(data, views, size, seed, epoch):
        real_fill(data, views, size, seed, epoch)
        expect = random_crops(views, size, crop_generator(seed, epoch))
        assert torch.equal(data.left, expect[0]) and torch.equal(data.right, expect[1])
        seen.append(("crops", epoch, data.left.clone(), [tuple(v[0].shape) for v in views]))

    monkeypatch.setattr(split_run, "epoch_order", order)
    monkeypatch.setattr(split_run, "fill_random_crops", fill)
    cfg = config.load_config(overrides=tiny_overrides(manifest, tmp_path, **{
        "model.name": "padnet", "dataset.split": "[0.6,0.2,0.2]", "train.batch_size": 2}))
    runner.train(cfg, progress=False, log=lambda *a: None)
    crops = [s for s in seen if s[0] == "crops"]
    assert [s[1] for s in crops] == [0, 1]  # each epoch, before its order
    assert [s[0] for s in seen if s[0] != "crops"] == [0, 1] and seen[1][2] == 3  # 3 pairs: 3 crops
    assert crops[0][3] == [(3, 260, 300)] * 3 and crops[0][2].shape == (3, 3, 256, 256)
    assert not torch.equal(crops[0][2], crops[1][2]) and crops[0][2].abs().sum() > 0
