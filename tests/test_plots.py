import numpy as np
import pytest
from PIL import Image

from siqa.evaluation.plots import figure_to_array, save_scatter_png, scatter_figure


def _data(n=90, seed=0):
    rng = np.random.default_rng(seed)
    pred = rng.uniform(0, 60, n)  # scores an increasing S-curve of the predictions, as the
    target = 30 + 25 * np.tanh((pred - 30) / 15) + rng.normal(0, 3, n)  # logistic assumes
    groups = np.array(["jp2k", "jpeg", "wn"])[rng.integers(0, 3, n)]
    return pred, target, groups


def test_scatter_figure_content():
    pred, target, groups = _data()
    fig = scatter_figure(pred, target, groups, title="LIVE 3D I / test")
    ax = fig.axes[0]
    assert ax.get_xlabel() and ax.get_ylabel()
    title = ax.get_title()
    assert "LIVE 3D I / test" in title and "SROCC" in title and "PLCC" in title
    labels = ax.get_legend_handles_labels()[1]
    assert any(label.startswith("jp2k") for label in labels)
    assert any(label.startswith("wn") for label in labels)
    assert "logistic fit" in labels
    assert len(ax.collections) == 3  # one scatter per distortion type
    curve = ax.lines[0].get_xydata()
    assert curve.shape[0] > 50 and np.all(np.isfinite(curve))


def test_figure_to_array_shape_and_pixels():
    pred, target, groups = _data()
    fig = scatter_figure(pred, target, groups)
    array = figure_to_array(fig)
    width, height = fig.canvas.get_width_height()
    assert array.shape == (height, width, 3)
    assert array.dtype == np.uint8
    assert array.min() < 100 and array.max() == 255  # not a blank image


def test_save_scatter_png(tmp_path):
    pred, target, groups = _data()
    path = tmp_path / "sub" / "scatter.png"
    save_scatter_png(path, pred, target, groups=groups, title="val")
    assert path.stat().st_size > 1000
    with Image.open(path) as image:
        image.load()
        assert image.format == "PNG"
        assert image.size[0] > 100 and image.size[1] > 100
    assert [p.name for p in path.parent.iterdir()] == ["scatter.png"]  # no temp file left


def test_without_groups_and_degenerate_inputs(tmp_path):
    pred, target, _ = _data(20)
    fig = scatter_figure(pred, target)
    assert figure_to_array(fig).ndim == 3
    fig = scatter_figure(np.full(10, 2.0), np.arange(10.0), ["a"] * 10)
    assert "n/a" in fig.axes[0].get_title()
    save_scatter_png(tmp_path / "tiny.png", [1.0, 2.0], [2.0, 1.0])
    assert (tmp_path / "tiny.png").stat().st_size > 0
    with pytest.raises(ValueError):
        scatter_figure(pred, target, ["a"] * 3)
