"""Patches against a direct per-patch computation with scipy.ndimage."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import uniform_filter

from siqa.data.patches import PatchSet, extract_patch_set, extract_patches, patch_grid
from siqa.data.records import StereoPair
from siqa.errors import UserError


def direct(grey):
    """Loop over the documented patch positions (docs/method.md#patches); 7x7 box mean/std per
    patch, scipy 'reflect' boundary."""
    x = grey.astype(np.float64) / 255.0
    h, w = x.shape
    out = []
    for y in range(0, h - 32, 24):
        for xx in range(0, w - 32, 24):
            p = x[y : y + 32, xx : xx + 32]
            mean = uniform_filter(p, 7, mode="reflect")
            std = np.sqrt(np.maximum(uniform_filter(p * p, 7, mode="reflect") - mean**2, 0))
            out.append((p - mean) / (std + 1))
    return np.stack(out)


def natural():
    spec = importlib.util.find_spec("stereodemo")
    if spec is not None:
        f = Path(list(spec.submodule_search_locations)[0]) / "datasets/oak-d/selfie_left.png"
        if f.is_file():
            return np.asarray(Image.open(f).convert("L"))
    from skimage import data

    return data.camera()


def test_grid_matches_spec():
    assert patch_grid(360, 640) == (14, 26)  # 364 patches per LIVE Phase I view
    assert patch_grid(56, 56) == (1, 1)  # 56 - 32 = 24: the exclusive bound drops position 24
    assert patch_grid(57, 57) == (2, 2)


@pytest.mark.parametrize("shape", [(57, 81), (56, 80), (100, 77), (360, 640)])
def test_random_images(shape):
    grey = np.random.default_rng(sum(shape)).integers(0, 256, size=shape, dtype=np.uint8)
    got = extract_patches(grey, dtype=torch.float64).numpy()
    want = direct(grey)
    assert got.shape == want.shape == (np.prod(patch_grid(*shape)), 32, 32)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_natural_image_and_float32():
    grey = natural()
    got = extract_patches(grey).numpy()
    assert got.dtype == np.float32
    want = direct(grey)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    flat = np.zeros((40, 40), np.uint8)  # a flat view: zero std must not give NaN
    assert torch.isfinite(extract_patches(flat)).all()


def test_too_small_names_file_and_size():
    with pytest.raises(UserError, match=r"img\.png is 40x32.*33x33"):
        extract_patches(np.zeros((32, 40), np.uint8), source="img.png")


def test_patch_set(tmp_path):
    rng = np.random.default_rng(5)
    views = {}
    pairs = []
    for i, (w, h) in enumerate([(81, 57), (40, 40), (105, 60)]):
        lv = rng.integers(0, 256, size=(h, w), dtype=np.uint8)
        rv = rng.integers(0, 256, size=(h, w), dtype=np.uint8)
        views[i] = (lv, rv)
        if i == 1:  # side-by-side file
            Image.fromarray(np.hstack([lv, rv])).save(tmp_path / f"{i}.png")
            pairs.append(StereoPair(str(i), tmp_path / f"{i}.png", None, 1.0, False, "a", "wn"))
        else:
            Image.fromarray(lv).save(tmp_path / f"{i}_l.bmp")
            Image.fromarray(rv).save(tmp_path / f"{i}_r.bmp")
            pairs.append(StereoPair(str(i), tmp_path / f"{i}_l.bmp", tmp_path / f"{i}_r.bmp", 1.0, False, "a", "wn"))
    ps = extract_patch_set(pairs, progress=False)
    assert isinstance(ps, PatchSet)
    counts = [int(np.prod(patch_grid(v[0].shape[0], v[0].shape[1]))) for v in views.values()]
    assert ps.left.shape == ps.right.shape == (sum(counts), 1, 32, 32)
    assert ps.left.is_contiguous() and ps.right.is_contiguous() and ps.left.dtype == torch.float32
    assert ps.pair_index.tolist() == sum(([i] * c for i, c in enumerate(counts)), [])
    assert ps.counts(3).tolist() == counts
    for i, (lv, rv) in views.items():
        rows = ps.pair_index == i
        np.testing.assert_allclose(ps.left[rows, 0].numpy(), direct(lv), atol=1e-6)
        np.testing.assert_allclose(ps.right[rows, 0].numpy(), direct(rv), atol=1e-6)


def test_patch_set_small_image(tmp_path):
    Image.fromarray(np.zeros((30, 90), np.uint8)).save(tmp_path / "s.png")
    with pytest.raises(UserError, match=r"s\.png.*45x30"):
        extract_patch_set([StereoPair("s", tmp_path / "s.png", None, 1.0, False, "a", "wn")], progress=False)
