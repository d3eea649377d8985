"""Quality maps: where, and in which view, the model thinks a stereo pair is damaged.

    patch grid (rows, cols): prediction of the patch pair at corner (y_i, x_j) of the
      network's spec (the paper's: 32x32 patches at (24 i, 24 j))
      -> heatmap(grid, H, W, spec): each pixel = mean of the predictions of the patches
         covering it (the paper's stride 24 < 32: 8-pixel bands are covered by 2 patches,
         their crossings by 4; PAD-Net's covering 256x256 crops overlap likewise);
         pixels no patch covers (the bottom/right margin left by the patch grid) are NaN

    asymmetry: the same network fed one view as both of its inputs
      q(L, L) grid, q(R, R) grid  ->  |q(L, L) - q(R, R)|
      (the view whose self-pair scores worse, in the database's direction, carries the damage)

    naturalness plot: for each of the 6 statistics, the 18 subbands (level 1..3 x 6
    orientations), task 1's prediction next to the value computed from the pair (only for
    a network that predicts them: the others get the quality and asymmetry maps)

Every network gives one score per patch (crop), so the quality and asymmetry maps serve
all of siqa.models; the views are shown in grey whatever the network read.

Colours: the heatmaps use the database's units, on its score range (widened to the
predictions if they fall outside it), with red = worse whatever the direction (DMOS:
high is red; MOS: low is red). Figures use matplotlib's object API on an Agg canvas (no
pyplot, no GUI backend) and are written atomically.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from siqa.data.patches import spec_corners
from siqa.evaluation.plots import figure_png_bytes
from siqa.files import atomic_write
from siqa.inference.api import Naturalness, PairSource, pairs_of
from siqa.models import DEFAULT, MODELS

__all__ = ["heatmap", "Asymmetry", "asymmetry", "write_maps", "quality_figure",
           "asymmetry_figure", "naturalness_figure"]


def heatmap(grid, height, width, spec=None) -> np.ndarray:
    """(height, width) float64 map: the mean of the patch predictions covering each pixel,
    NaN where no patch does. `spec`: the network's (siqa/models/spec.py), the paper's when
    None."""
    if spec is None:
        spec = MODELS[DEFAULT].spec
    grid = np.asarray(grid, dtype=np.float64)
    ys, xs = spec_corners(height, width, spec)
    size = spec.patch
    total = np.zeros((height, width))
    count = np.zeros((height, width))
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            y, x = ys[i], xs[j]
            total[y : y + size, x : x + size] += grid[i, j]
            count[y : y + size, x : x + size] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


@dataclass
class Asymmetry:
    """Patch grids of q(L, L) and q(R, R) and their absolute difference."""

    left: np.ndarray  # (rows, cols): the left view scored against itself
    right: np.ndarray  # (rows, cols): the right view scored against itself
    lower_better: bool

    @property
    def difference(self) -> np.ndarray:
        return np.abs(self.left - self.right)

    @property
    def worse_view(self) -> str:
        """'left' or 'right': the view whose self-pair scores worse on average."""
        diff = self.right.mean() - self.left.mean()
        return "right" if (diff > 0) == self.lower_better else "left"


def asymmetry(model, left=None, right=None, *, sbs=None) -> Asymmetry:
    """q(L, L), q(R, R) and |q(L, L) - q(R, R)| of one pair (see the module docstring)."""
    single, pairs = pairs_of(left, right, sbs)
    if not single:
        return [asymmetry(model, p.left, p.right) if p.right is not None
                else asymmetry(model, sbs=p.left) for p in pairs]
    views = pairs[0].views(channels=model.spec.channels)
    self_left, self_right = model.patch_scores([views.left, views.right], [views.left, views.right])
    return Asymmetry(self_left, self_right, model.lower_better)


# -- figures ------------------------------------------------------------------------------
def _figure(width, height):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _panels_figure(views, panels, extra=1.4):
    """A figure of `panels` views side by side, each at least 3.2 inches wide."""
    height, width = views.left.shape
    panel = min(6.4, max(3.2, width / 100))
    return _figure(panels * panel + extra, panel * height / width + 0.9)


def _scale(model, *grids):
    """(vmin, vmax, cmap, label) for heatmaps in the database's units and direction."""
    low, high = model.score_range
    values = np.concatenate([np.ravel(g) for g in grids])
    low, high = min(low, float(values.min())), max(high, float(values.max()))
    if high <= low:
        high = low + 1.0
    kind, direction = ("DMOS", "higher = worse") if model.lower_better else ("MOS", "higher = better")
    cmap = "RdYlGn_r" if model.lower_better else "RdYlGn"  # red = worse either way
    return low, high, cmap, f"predicted {kind}, {model.database['name']} scale\n({direction})"


def _overlay(ax, view, grid, spec, vmin, vmax, cmap, title):
    ax.imshow(view, cmap="gray", vmin=0, vmax=255)
    image = ax.imshow(heatmap(grid, *view.shape, spec), cmap=cmap, vmin=vmin, vmax=vmax, alpha=0.55)
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    return image


def quality_figure(model, views, grid):
    """The left and right views side by side, each with the pair's patch heatmap over it."""
    vmin, vmax, cmap, label = _scale(model, grid)
    fig = _panels_figure(views, 2)
    axes = fig.subplots(1, 2)
    score = float(np.mean(grid))
    for ax, view, side in zip(axes, (views.left, views.right), ("left", "right")):
        image = _overlay(ax, view, grid, model.spec, vmin, vmax, cmap, f"{side} view")
    fig.suptitle(f"{views.name}: score {score:.4g} (mean of {grid.size} patch pairs)", fontsize=10)
    fig.colorbar(image, ax=list(axes), label=label, shrink=0.9)
    return fig


def asymmetry_figure(model, views, result: Asymmetry):
    """q(L, L) over the left view, q(R, R) over the right view, |difference| over the left."""
    vmin, vmax, cmap, label = _scale(model, result.left, result.right)
    height, width = views.left.shape
    fig = _panels_figure(views, 3, extra=2.8)
    axes = fig.subplots(1, 3)
    _overlay(axes[0], views.left, result.left, model.spec, vmin, vmax, cmap,
             f"q(L,L): left view vs itself\nmean {result.left.mean():.4g}")
    image = _overlay(axes[1], views.right, result.right, model.spec, vmin, vmax, cmap,
                     f"q(R,R): right view vs itself\nmean {result.right.mean():.4g}")
    fig.colorbar(image, ax=list(axes[:2]), label=label, shrink=0.9)
    diff = result.difference
    axes[2].imshow(views.left, cmap="gray", vmin=0, vmax=255)
    shown = axes[2].imshow(heatmap(diff, height, width, model.spec), cmap="magma", vmin=0,
                           vmax=max(float(diff.max()), 1e-12), alpha=0.7)
    axes[2].set_title(f"|q(L,L) - q(R,R)|\nmax {diff.max():.4g}", fontsize=9)
    axes[2].set_axis_off()
    fig.colorbar(shown, ax=axes[2], label="asymmetry (score units)", shrink=0.9)
    fig.suptitle(f"{views.name}: the {result.worse_view} view scores worse on its own "
                 f"(each view fed as both inputs)", fontsize=10)
    return fig


def naturalness_figure(result, name=""):
    """One panel per statistic: predicted (task 1) and computed values over the 18 subbands."""
    fig = _figure(12.0, 6.5)
    axes = fig.subplots(2, 3).ravel()
    subbands = np.arange(18)
    predicted = np.asarray(result.predicted).reshape(6, 18)
    computed = np.asarray(result.computed).reshape(6, 18)
    for p, ax in enumerate(axes):
        ax.plot(subbands, computed[p], "o-", color="black", ms=4, lw=1, label="computed")
        ax.plot(subbands, predicted[p], "x--", color="tab:orange", ms=5, lw=1, label="predicted")
        for boundary in (5.5, 11.5):
            ax.axvline(boundary, color="0.8", lw=0.8)
        ax.set_xticks([2.5, 8.5, 14.5], ["level 1", "level 2", "level 3"], fontsize=8)
        ax.set_title(Naturalness.PARAMETERS[p], fontsize=9)
        ax.tick_params(axis="y", labelsize=8)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{name}: naturalness statistics per subband (6 orientations per level)",
                 fontsize=10)
    return fig


def write_maps(model, pairs, names, folder):
    """For each (left, right_or_None) pair: <name>_quality.png, _asymmetry.png,
    _naturalness.png (a network that predicts the NSS statistics) and the raw grids
    <name>_quality.npy, _self_left.npy, _self_right.npy, _asymmetry.npy in `folder`.
    Returns the paths written."""
    folder = Path(folder)
    written = []
    for (left, right), name in zip(pairs, names):
        source = PairSource(left, right, None)
        scored = source.views(channels=model.spec.channels)  # what the network reads
        views = scored if model.spec.channels == 1 else source.views()  # shown in grey
        grid = model.patch_scores(scored.left, scored.right)
        result = asymmetry(model, scored.left, scored.right)
        nat = None
        if model.spec.predicts_nss:
            nat = model.naturalness(left, right) if right is not None else model.naturalness(sbs=left)
        arrays = {"quality": grid, "self_left": result.left, "self_right": result.right,
                  "asymmetry": result.difference}
        for suffix, array in arrays.items():
            buf = io.BytesIO()
            np.save(buf, array)
            atomic_write(folder / f"{name}_{suffix}.npy", buf.getvalue())
            written.append(folder / f"{name}_{suffix}.npy")
        views.name = name
        figures = [("quality", quality_figure(model, views, grid)),
                   ("asymmetry", asymmetry_figure(model, views, result))]
        if nat is not None:
            figures.append(("naturalness", naturalness_figure(nat, name)))
        for suffix, fig in figures:
            atomic_write(folder / f"{name}_{suffix}.png", figure_png_bytes(fig))
            written.append(folder / f"{name}_{suffix}.png")
    return written
