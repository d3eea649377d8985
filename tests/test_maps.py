"""Quality maps: overlap averaging, the pair's score as the patch mean, the asymmetry map on
a hand-made model whose answer is known, and predict.py --maps."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from scipy import ndimage

import siqa
from conftest import run_entry
from siqa.inference.api import StereoIQA
from siqa.inference.maps import asymmetry, heatmap, naturalness_figure, write_maps

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_heatmap_averages_overlapping_patches_and_leaves_the_margin_empty():
    rng = np.random.default_rng(0)
    height, width = 24 * 2 + 32 + 5, 24 * 3 + 32 + 9  # margins no patch reaches
    grid = rng.normal(size=(3, 4))
    got = heatmap(grid, height, width)
    want = np.full((height, width), np.nan)
    for y in range(height):  # by definition: the mean over the patches that contain the pixel
        for x in range(width):
            hits = [grid[i, j] for i in range(3) for j in range(4)
                    if 24 * i <= y < 24 * i + 32 and 24 * j <= x < 24 * j + 32]
            if hits:
                want[y, x] = np.mean(hits)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)  # NaN where want is NaN
    assert np.isnan(got[-1, -1]) and not np.isnan(got[24 * 2 + 31, 24 * 3 + 31])


@pytest.mark.parametrize("name", ["stereoqanet", "padnet"])
def test_heatmap_follows_the_patches_of_the_networks_spec(name):
    """StereoQA-Net's every whole 32x32 patch (stride 32) and PAD-Net's covering 256x256
    crops (which overlap): the mean over the patches that contain each pixel, by definition."""
    from siqa.models import MODELS

    spec = MODELS[name].spec
    height, width = (70, 100) if name == "stereoqanet" else (260, 300)
    ys = [y for y in range(height) if y + spec.patch <= height][:: spec.stride] if name == "stereoqanet" else [0, 4]
    xs = [x for x in range(width) if x + spec.patch <= width][:: spec.stride] if name == "stereoqanet" else [0, 44]
    grid = np.random.default_rng(2).normal(size=(len(ys), len(xs)))
    got = heatmap(grid, height, width, spec)
    want = np.full((height, width), np.nan)
    for y in range(height):
        for x in range(width):
            hits = [grid[i, j] for i, y0 in enumerate(ys) for j, x0 in enumerate(xs)
                    if y0 <= y < y0 + spec.patch and x0 <= x < x0 + spec.patch]
            if hits:
                want[y, x] = np.mean(hits)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert np.isnan(got).any() == (name == "stereoqanet")  # the crops cover the whole view


class GradientEnergy(torch.nn.Module):
    """A hand-made 'network' with a known answer: quality = 100 - 1000 * mean squared
    horizontal difference of the two patches (DMOS-like: less detail is worse). A Gaussian
    blur removes high frequencies, so on a noise texture it lowers the energy of every
    patch: the blurred view, fed against itself, scores worse (higher) at every position."""

    def forward(self, left, right):
        energy = lambda p: (p[..., 1:] - p[..., :-1]).pow(2).mean(dim=(1, 2, 3))
        quality = 100 - 1000 * (energy(left) + energy(right)) / 2
        return quality, torch.zeros(left.shape[0], 108)


def hand_made(higher_is_better=False):
    return StereoIQA(GradientEnergy(), {"name": "hand-made", "higher_is_better": higher_is_better,
                                        "score_min": 0.0, "score_max": 100.0})


def reference_grid(view):
    """q(V, V) of GradientEnergy computed with scipy: patches, 7x7 reflect-boundary local
    mean/std, (p - mean) / (std + 1), then the energy."""
    x = view.astype(np.float64) / 255
    rows, cols = len(range(0, x.shape[0] - 32, 24)), len(range(0, x.shape[1] - 32, 24))
    grid = np.zeros((rows, cols))
    for i in range(rows):
        for j in range(cols):
            p = x[24 * i : 24 * i + 32, 24 * j : 24 * j + 32]
            mean = ndimage.uniform_filter(p, 7, mode="reflect")
            std = np.sqrt(np.maximum(ndimage.uniform_filter(p * p, 7, mode="reflect") - mean**2, 0))
            n = (p - mean) / (std + 1)
            grid[i, j] = 100 - 1000 * np.mean(np.diff(n, axis=1) ** 2)
    return grid


@pytest.fixture(scope="module")
def noise_pair():
    rng = np.random.default_rng(1)
    sharp = rng.normal(128, 45, (96, 128)).clip(0, 255).astype(np.uint8)
    right = np.roll(sharp, 2, axis=1)
    blurred = np.asarray(Image.fromarray(right).filter(ImageFilter.GaussianBlur(1.5)))
    return sharp, right, blurred


def test_asymmetry_points_at_the_blurred_view(noise_pair):
    sharp, right, blurred = noise_pair
    model = hand_made()
    result = asymmetry(model, sharp, blurred)
    np.testing.assert_allclose(result.left, reference_grid(sharp), rtol=0, atol=1e-4)
    np.testing.assert_allclose(result.right, reference_grid(blurred), rtol=0, atol=1e-4)
    assert (result.right > result.left).all()  # every patch: the blurred view is worse
    assert result.right.mean() > result.left.mean() and result.worse_view == "right"
    np.testing.assert_allclose(result.difference, np.abs(result.left - result.right))
    assert asymmetry(model, blurred, right).worse_view == "left"
    # with a MOS-like scale the same numbers mean the opposite
    assert asymmetry(hand_made(higher_is_better=True), sharp, blurred).worse_view == "left"
    # side by side gives the same grids
    side = asymmetry(model, sbs=np.concatenate([sharp, blurred], axis=1))
    np.testing.assert_allclose(side.right, result.right, atol=1e-6)


def test_write_maps_files_and_grids(noise_pair, tmp_path):
    sharp, _, blurred = noise_pair
    model = hand_made()
    Image.fromarray(sharp).save(tmp_path / "a_l.png")
    Image.fromarray(blurred).save(tmp_path / "a_r.png")
    written = write_maps(model, [(tmp_path / "a_l.png", tmp_path / "a_r.png")], ["a"], tmp_path / "maps")
    names = sorted(p.name for p in written)
    assert names == sorted(f"a_{s}" for s in ("quality.npy", "self_left.npy", "self_right.npy",
                                             "asymmetry.npy", "quality.png", "asymmetry.png",
                                             "naturalness.png"))
    grid = np.load(tmp_path / "maps" / "a_quality.npy")
    assert grid.shape == (3, 4)
    assert grid.mean() == pytest.approx(model.score(sharp, blurred), abs=1e-9)
    np.testing.assert_allclose(np.load(tmp_path / "maps" / "a_self_right.npy"), reference_grid(blurred),
                               atol=1e-4)
    for png in ("quality", "asymmetry", "naturalness"):
        with Image.open(tmp_path / "maps" / f"a_{png}.png") as im:
            assert im.format == "PNG" and im.size[0] > 300
    assert not list((tmp_path / "maps").glob("*.tmp"))


def test_naturalness_figure_has_one_panel_per_statistic():
    from siqa.inference.api import Naturalness

    nat = Naturalness(predicted=np.arange(108.0), computed=np.arange(108.0)[::-1].copy())
    fig = naturalness_figure(nat, "x")
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == list(Naturalness.PARAMETERS)
    computed_line = axes[1].get_lines()[0]  # scale_R: indices 18..35, reversed
    np.testing.assert_array_equal(computed_line.get_ydata(), np.arange(108.0)[::-1][18:36])


def test_map_names_are_unique_per_pair():
    from siqa.inference.manifest import map_names

    pairs = [("a/ref_l.png", "b/x_r.png"), ("a/ref_l.png", "c/y_r.png"), ("s/p.png", None),
             ("t/p.png", None)]
    assert map_names(pairs) == ["ref_l_x_r", "ref_l_y_r", "p_2", "p_3"]


def test_predict_maps_from_the_command_line(tiny_run, tiny_manifest, tmp_path):
    checkpoint = tiny_run[0] / "run" / "best.pt"
    folder = tiny_manifest.parent
    with open(tmp_path / "two.csv", "w") as f:  # absolute paths: a manifest's paths may be
        f.write(f"left,right\n{folder / 's1_2_l.png'},{folder / 's1_2_r.png'}\n"
                f"{folder / 's2_0_l.png'},{folder / 's2_0_r.png'}\n")
    proc = run_entry("predict.py", "--checkpoint", checkpoint, "--manifest", tmp_path / "two.csv",
                     "--maps", tmp_path / "maps")
    assert proc.returncode == 0, proc.stderr
    model = siqa.load(checkpoint, device="cpu")
    for stem, (left, right) in (("s1_2_l_s1_2_r", ("s1_2_l.png", "s1_2_r.png")),
                                ("s2_0_l_s2_0_r", ("s2_0_l.png", "s2_0_r.png"))):
        grid = np.load(tmp_path / "maps" / f"{stem}_quality.npy")
        np.testing.assert_allclose(grid, model.patch_scores(folder / left, folder / right), atol=1e-6)
        self_left = np.load(tmp_path / "maps" / f"{stem}_self_left.npy")
        np.testing.assert_allclose(self_left, model.patch_scores(folder / left, folder / left), atol=1e-6)
        printed = [line for line in proc.stdout.splitlines() if left in line][0]
        assert float(printed.split("\t")[-1]) == pytest.approx(grid.mean(), abs=1e-6)
        assert (tmp_path / "maps" / f"{stem}_asymmetry.png").stat().st_size > 1000
    bad = run_entry("predict.py", "--checkpoint", checkpoint, folder / "s0_0_l.png",
                    folder / "missing.png", "--maps", tmp_path / "none")
    assert bad.returncode == 2 and "image not found" in bad.stderr and bad.stderr.count("\n") == 1
    assert not (tmp_path / "none").exists()  # nothing written when an input is bad
