"""Scatter plots of predicted vs subjective scores, for reports and TensorBoard.

Figures are built on matplotlib's object API with the Agg canvas: no pyplot, no GUI
backend, no global figure registry (nothing to close, nothing leaks in long runs), and
the process-wide matplotlib backend is left untouched.
"""
import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from siqa.evaluation.metrics import evaluate_scores, fit_logistic, score_arrays
from siqa.files import atomic_write

_CURVE_POINTS = 200


def _fmt(value):
    return "n/a" if value is None else f"{value:.3f}"


def scatter_figure(pred, target, groups=None, title=""):
    """Predicted (x) vs subjective (y) scores, one colour per group, with the fitted
    pred -> target mapping (the 5-parameter logistic, or the fallback of
    `siqa.evaluation.metrics.fit_logistic`) drawn as a curve and the metrics in the title.
    Returns a `matplotlib.figure.Figure` attached to an Agg canvas.
    """
    x, y = score_arrays(pred, target)
    metrics = evaluate_scores(x, y)
    fit = fit_logistic(x, y)

    fig = Figure(figsize=(6.4, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)

    if groups is None:
        ax.scatter(x, y, s=12, alpha=0.75, color="tab:blue")
    else:
        if hasattr(groups, "detach"):
            groups = groups.detach().cpu().numpy()
        labels = np.asarray([str(g) for g in np.asarray(groups, dtype=object).reshape(-1)])
        if labels.size != x.size:
            raise ValueError(f"groups has {labels.size} labels for {x.size} scores")
        names = sorted(set(labels.tolist()))
        for name, colour in zip(names, _colours(len(names))):
            mask = labels == name
            ax.scatter(x[mask], y[mask], s=12, alpha=0.75, color=colour,
                       label=f"{name} ({int(mask.sum())})")

    if fit.kind != "none":
        grid = np.linspace(float(x.min()), float(x.max()), _CURVE_POINTS)
        label = {"logistic": "logistic fit", "linear": "linear fit (fallback)",
                 "constant": "mean (constant predictions)"}[fit.kind]
        ax.plot(grid, fit(grid), color="black", linewidth=1.5, label=label)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize="small")

    ax.set_xlabel("Predicted score")
    ax.set_ylabel("Subjective score (MOS/DMOS)")
    ax.grid(True, alpha=0.3)
    summary = (f"n={metrics['n']}  SROCC {_fmt(metrics['srocc'])}  "
               f"PLCC {_fmt(metrics['plcc'])} (logistic {_fmt(metrics['plcc_logistic'])})\n"
               f"KROCC {_fmt(metrics['krocc'])}  RMSE {_fmt(metrics['rmse'])} "
               f"(logistic {_fmt(metrics['rmse_logistic'])})")
    ax.set_title(f"{title}\n{summary}" if title else summary, fontsize="small")
    fig.tight_layout()
    return fig


def _colours(count):
    """`count` distinct colours: tab10 up to 10 groups, then evenly spaced on viridis."""
    from matplotlib import colormaps

    if count <= 10:
        cmap = colormaps["tab10"]
        return [cmap(i) for i in range(count)]
    cmap = colormaps["viridis"]
    return [cmap(i / (count - 1)) for i in range(count)]


def figure_png_bytes(fig, dpi=100) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def save_scatter_png(path, pred, target, groups=None, title="", dpi=100):
    """Draw `scatter_figure(pred, target, groups, title)` and write it as a PNG to `path`
    atomically (via `siqa.files.atomic_write`). Returns the path written."""
    fig = scatter_figure(pred, target, groups=groups, title=title)
    atomic_write(path, figure_png_bytes(fig, dpi=dpi))
    return path


def figure_to_array(fig) -> np.ndarray:
    """Render `fig` and return its pixels as an H x W x 3 uint8 array (RGB), e.g. for
    `SummaryWriter.add_image(..., dataformats="HWC")`."""
    canvas = fig.canvas
    if not isinstance(canvas, FigureCanvasAgg):
        canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return np.ascontiguousarray(rgba[..., :3], dtype=np.uint8)
