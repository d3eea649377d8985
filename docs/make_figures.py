"""The figures of docs/, from the code that computes what they show.

    python docs/make_figures.py                  # writes docs/figures/*.png (under half a minute)
    python docs/make_figures.py --out /tmp/figs  # somewhere else

- network.png: the multi-task network, one box per sub-network (A-D, fusion, the two task
  heads). Every shape in it is recorded by forward hooks during one forward pass of
  `siqa.models.bourbia2021.MultiTaskSIQA`, and every parameter count is counted on that model, so the
  drawing cannot drift from the code.
- dtcwt_subbands.png: a view of a real stereo pair (the `stereodemo` package's `cycles`
  scene, as the demo database crops it), standardised per column as for the NSS targets,
  and the magnitudes of its 18 DT-CWT subbands (`siqa.nss.dtcwt_forward`).
- copula.png: for one subband, the normal scores of the right view against those of the
  left view at the same positions, for the pristine pair and two symmetric distortions of
  it. The Sigma printed in each panel is the one in the pair's 108 targets
  (`siqa.nss.nss_features`); the points are the normal scores under the loc = 0 Gamma
  fit of each view (scipy's `gamma.fit(x, floc=0)`), which is what Sigma summarises.

- paper_recipe.png (only with --recipe-runs RUN_DIR ...): the validation SROCC and the
  training quality loss by epoch of runs of the paper's optimizer, read from each run's own
  files (its config.yaml and the TensorBoard events train.py wrote), one colour per patch
  normalisation, one line style per seed, a thicker line for a run with fewer epochs than
  the longest (the 40-epoch demo run beside 500-epoch ones), each labelled with its
  normalisation, seed and epochs (docs/decisions.md#does-the-papers-recipe-learn). A
  relative tensorboard.dir is read from the folder the run was made from (the run folder
  less its out_dir), so runs made in different places, or copied with their TensorBoard
  folder, go into one figure from any working directory.

The sizes are chosen so that each PNG stays well under 200 KB (they are committed).
"""
import argparse
import os
import re
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

OUT_DIR = ROOT / "docs" / "figures"
SCENE = "cycles"          # the stereodemo scene shown
VIEW_SIZE = (384, 288)    # (width, height) of the views in the DT-CWT and copula figures
COPULA_SUBBAND = (1, 4)   # (level, orientation) of the subband in the copula figure
# Edge orientation of the package's slice k (degrees from horizontal, counter-clockwise
# with the image's y axis pointing up); tests/test_docs.py checks these with gratings.
ORIENTATIONS = (15, 45, 75, -75, -45, -15)
DISTORTIONS = (("JPEG, quality 6", "jpeg", 6), ("white noise, std 30", "wn", 30.0))


def _save(fig, path, dpi):
    """PNG with an adaptive 256-colour palette (a quarter of the size, no visible change)."""
    import io

    import matplotlib.pyplot as plt
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    with Image.open(buf) as im:
        im.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


# --------------------------------------------------------------------------- the network
def network_taps(model=None):
    """Shapes (without the batch axis) at every tap of one forward pass, and parameter
    counts per block, recorded on `model` (default: a fresh MultiTaskSIQA)."""
    import torch

    from siqa.models import count_parameters
    from siqa.models.bourbia2021 import PATCH_SIZE, MultiTaskSIQA

    model = MultiTaskSIQA() if model is None else model
    shapes, hooks = {}, []

    def record(name, what="output"):
        def hook(module, inputs, output):
            value = inputs[0] if what == "input" else output
            if isinstance(value, tuple):
                shapes[name] = [tuple(v.shape[1:]) for v in value]
            else:
                shapes.setdefault(name, []).append(tuple(value.shape[1:]))
        return hook

    def tap(module, name, what="output"):
        hooks.append(module.register_forward_hook(record(name, what)))

    for side, column in (("A", model.column_left), ("B", model.column_right)):
        for i in range(1, 6):
            tap(getattr(column, f"conv{i}"), f"{side}.conv{i}")
        tap(column.pool, f"{side}.pool")
        tap(column.fc, f"{side}.fc_in", "input")
        tap(column, f"{side}.out")
    tap(model.diff_sum_low.conv1, "C.conv1_in", "input")
    tap(model.diff_sum_low.conv1, "C.conv1")
    tap(model.diff_sum_low.conv2, "C.conv2")
    tap(model.diff_sum_low.fc, "C.fc_in", "input")
    tap(model.diff_sum_low, "C.out")
    tap(model.diff_sum_high.fc, "D.fc_in", "input")
    tap(model.diff_sum_high, "D.out")
    tap(model.nss_fc1, "fused", "input")
    tap(model.nss_fc1, "h1")
    tap(model.nss_fc2, "nss")
    tap(model.quality_fc1, "h2")
    tap(model.quality_fc2, "quality_fc2_in", "input")
    tap(model.quality_fc2, "quality_fc2")
    tap(model.quality_out, "quality_out")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            patch = torch.zeros(2, 1, PATCH_SIZE, PATCH_SIZE)
            quality, _ = model(patch, patch)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    shapes["input"] = [(1, PATCH_SIZE, PATCH_SIZE)]
    shapes["quality"] = [tuple(quality.shape[1:])]
    params = {
        "A": count_parameters(model.column_left), "B": count_parameters(model.column_right),
        "C": count_parameters(model.diff_sum_low), "D": count_parameters(model.diff_sum_high),
        "task 1": count_parameters(model.nss_fc1) + count_parameters(model.nss_fc2),
        "task 2": sum(count_parameters(m) for m in (model.quality_fc1, model.quality_fc2,
                                                    model.quality_out)),
        "total": count_parameters(model),
    }
    return shapes, params


def _fmt(shape):
    return "x".join(str(s) for s in shape)


def _column_lines(shapes, side, column):
    pools = shapes[f"{side}.pool"]  # the column's one pooling module runs three times
    c = [getattr(column, f"conv{i}") for i in range(1, 6)]
    x2, x4, out = shapes[f"{side}.out"]
    return [
        f"conv {c[0].in_channels}->{c[0].out_channels}, pool   {_fmt(pools[0])}",
        f"conv {c[1].in_channels}->{c[1].out_channels}, pool   x2 = {_fmt(x2)}",
        f"conv {c[2].in_channels}->{c[2].out_channels}         {_fmt(shapes[f'{side}.conv3'][0])}",
        f"conv {c[3].in_channels}->{c[3].out_channels}         x4 = {_fmt(x4)}",
        f"conv {c[4].in_channels}->{c[4].out_channels}, pool  {_fmt(pools[2])}",
        f"flatten {_fmt(shapes[f'{side}.fc_in'][0])} -> FC 512 (drop .35)",
        f"-> FC 512 (drop .5)       out {_fmt(out)}",
    ]


def draw_network(path, model=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    from siqa.models.bourbia2021 import MultiTaskSIQA

    model = MultiTaskSIQA() if model is None else model
    shapes, params = network_taps(model)
    fig, ax = plt.subplots(figsize=(13, 7.6))
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 80)
    ax.axis("off")

    def box(x, y, w, h, title, lines, color):
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.4", fc=color,
                                    ec="0.25", lw=1.0))
        ax.text(x + 0.8, y + h - 1.0, title, fontsize=9.5, fontweight="bold", va="top")
        for i, line in enumerate(lines):
            ax.text(x + 0.8, y + h - 4.2 - 2.55 * i, line, fontsize=8, va="top",
                    family="monospace")

    def arrow(p, q, label=None, color="0.2"):
        ax.annotate("", xy=q, xytext=p, arrowprops=dict(arrowstyle="-|>", color=color, lw=1.1,
                                                        shrinkA=0, shrinkB=0))
        if label:
            ax.text((p[0] + q[0]) / 2, (p[1] + q[1]) / 2 + 0.8, label, fontsize=7.5,
                    ha="center", color=color)

    inp = _fmt(shapes["input"][0])
    box(0.5, 62, 9, 8, "left patch", [inp], "#eeeeee")
    box(0.5, 10, 9, 8, "right patch", [inp], "#eeeeee")
    box(13, 54, 30, 24, f"A: left column, {params['A']:,} params",
        _column_lines(shapes, "A", model.column_left), "#dbe8f6")
    box(13, 2, 30, 24, f"B: right column, {params['B']:,} params",
        _column_lines(shapes, "B", model.column_right), "#dbe8f6")
    low = model.diff_sum_low
    box(47, 41, 25, 13, "C: sum and difference of x2", [
        f"ReLU(cat(x2L+x2R, x2L-x2R)) {_fmt(shapes['C.conv1_in'][0])}",
        f"conv {low.conv1.in_channels}->{low.conv1.out_channels}; conv "
        f"{low.conv2.in_channels}->{low.conv2.out_channels}, pool",
        f"{_fmt(shapes['C.fc_in'][0])} -> FC 512 -> FC 512  out {_fmt(shapes['C.out'][0])}",
        f"{params['C']:,} params"], "#f6e7d2")
    x4 = shapes["A.out"][1]
    box(47, 25, 25, 11, "D: sum and difference of x4", [
        f"ReLU(cat(x4L+x4R, x4L-x4R)) {_fmt((2 * x4[0],) + x4[1:])}",
        f"{_fmt(shapes['D.fc_in'][0])} -> FC 512 -> FC 512  out {_fmt(shapes['D.out'][0])}",
        f"{params['D']:,} params"], "#f6e7d2")
    box(75.5, 32, 8, 11, "fusion", ["ReLU(cat", "(a,b,c,d))", _fmt(shapes["fused"][0])], "#e3f1dc")
    box(87, 52, 12.5, 17, "task 1: NSS", [
        f"FC -> h1 {_fmt(shapes['h1'][0])}", f"FC -> {_fmt(shapes['nss'][0])}",
        "  (the NSS", "   targets)", f"{params['task 1']:,} params"], "#ecdcf3")
    box(87, 6, 12.5, 20, "task 2: quality", [
        f"FC -> h2 {_fmt(shapes['h2'][0])}", "ReLU(cat(h2,h1))", f"  {_fmt(shapes['quality_fc2_in'][0])}",
        f"FC -> {_fmt(shapes['quality_fc2'][0])}", f"FC -> {_fmt(shapes['quality_out'][0])} (score)",
        f"{params['task 2']:,} params"], "#ecdcf3")
    arrow((10, 66), (13, 66))
    arrow((10, 14), (13, 14))
    # the taps: x2 is the second line of a column box, x4 the fourth
    arrow((43.4, 70.3), (47, 49), "x2L")
    arrow((43.4, 18.3), (47, 45), "x2R")
    arrow((43.4, 65.2), (47, 32), "x4L")
    arrow((43.4, 13.2), (47, 28.5), "x4R")
    # a and b go around C and D
    ax.plot([43.4, 79.5], [57.5, 57.5], color="0.2", lw=1.1)
    arrow((79.5, 57.5), (79.5, 43.4), "a")
    ax.plot([43.4, 79.5], [4, 4], color="0.2", lw=1.1)
    arrow((79.5, 4), (79.5, 31.6), "b")
    arrow((72.4, 46), (75.5, 40), "c")
    arrow((72.4, 30), (75.5, 34), "d")
    arrow((83.9, 40), (87, 58))
    arrow((83.9, 35), (87, 20))
    arrow((93, 52), (93, 26.4), "h1", color="#7a3d99")
    ax.text(50, 80.5, f"MultiTaskSIQA: {params['total']:,} parameters; shapes recorded by "
            "forward hooks (channels x height x width); convs 3x3 + ReLU; pools 2x2 max",
            ha="center", fontsize=9.5)
    _save(fig, path, dpi=90)
    return shapes, params


# --------------------------------------------------------------------------- real views
def scene_views(scene=SCENE, size=VIEW_SIZE):
    """Grey uint8 left and right views of a stereodemo scene, cropped as the demo database
    crops them (valid rectified area, centre crop), at `size` (width, height)."""
    from PIL import Image

    from siqa.data.demo import _valid_rect, prepare_view, source_dir

    folder = source_dir()
    left, right = folder / f"{scene}_left.png", folder / f"{scene}_right.png"
    with Image.open(left) as im:
        rect = _valid_rect(folder, *im.size)
    return prepare_view(left, rect, size), prepare_view(right, rect, size)


def standardise_columns(view):
    """The "reference" preprocessing of the NSS targets: each column to zero mean and unit
    population std (a constant column becomes zeros). The /225 cancels and is left out."""
    x = np.asarray(view, dtype=np.float64)
    x = x - x.mean(axis=0)
    std = x.std(axis=0)
    return np.divide(x, std, out=np.zeros_like(x), where=std > 0)


def draw_subbands(path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from siqa.nss import dtcwt_forward

    left, _ = scene_views()
    _, highpasses = dtcwt_forward(standardise_columns(left), 3)
    fig = plt.figure(figsize=(13, 5.6))
    grid = fig.add_gridspec(3, 8, width_ratios=[2.2, 0.15] + [1] * 6, wspace=0.08, hspace=0.22)
    ax = fig.add_subplot(grid[:, 0])
    ax.imshow(left, cmap="gray", vmin=0, vmax=255)
    ax.set_title(f"left view ({left.shape[1]}x{left.shape[0]})", fontsize=9)
    ax.axis("off")
    for level, band in enumerate(highpasses, start=1):
        mag = np.abs(band)
        top = np.percentile(mag, 99.5)  # one colour scale per level
        for k in range(6):
            ax = fig.add_subplot(grid[level - 1, 2 + k])
            ax.imshow(mag[:, :, k], cmap="magma", vmin=0, vmax=top, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if level == 1:
                ax.set_title(f"k={k}: {ORIENTATIONS[k]:+d} deg", fontsize=8.5)
            if k == 0:
                ax.set_ylabel(f"level {level}\n{mag.shape[1]}x{mag.shape[0]}", fontsize=8.5)
    fig.suptitle("DT-CWT magnitudes |highpasses[level][:, :, k]| of the column-standardised view "
                 "(near_sym_b, qshift_b); subband s = 6 (level - 1) + k", fontsize=10)
    _save(fig, path, dpi=72)


def normal_scores(magnitudes):
    """Normal scores of one subband's magnitudes under the loc = 0 Gamma MLE (scipy)."""
    from scipy import special, stats

    x = np.maximum(np.asarray(magnitudes, dtype=np.float64).ravel(), 1e-12)
    a, _, scale = stats.gamma.fit(x, floc=0)
    eps = float(np.finfo(np.float32).eps)
    u = np.clip(stats.gamma.cdf(x, a, scale=scale), eps, 1 - eps)
    return special.ndtri(u), a, scale


def copula_pairs():
    """[(label, left, right)]: the pristine pair and its symmetric distortions."""
    from siqa.data import demo

    left, right = scene_views()
    pairs = [("pristine", left, right)]
    rng = np.random.default_rng(demo.SEED)
    for label, kind, level in DISTORTIONS:
        if kind == "wn":
            fields = [rng.standard_normal(left.shape) for _ in range(2)]
            pairs.append((label, demo.white_noise(left, level, fields[0]),
                          demo.white_noise(right, level, fields[1])))
        else:
            pairs.append((label, demo.jpeg(left, level), demo.jpeg(right, level)))
    return pairs


def draw_copula(path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from siqa.nss import PARAMETERS, dtcwt_forward, nss_features

    level, k = COPULA_SUBBAND
    s = 6 * (level - 1) + k
    pairs = copula_pairs()
    fig, axes = plt.subplots(2, len(pairs), figsize=(4.2 * len(pairs), 8.2),
                             gridspec_kw={"height_ratios": [1, 1.25]})
    rng = np.random.default_rng(0)
    for col, (label, left, right) in enumerate(pairs):
        targets = nss_features(left, right)
        sigma = {p: targets[18 * i + s] for i, p in enumerate(PARAMETERS)}
        z = {}
        for side, view in (("R", right), ("L", left)):
            _, hp = dtcwt_forward(standardise_columns(view), level)
            z[side], _, _ = normal_scores(np.abs(hp[level - 1][:, :, k]))
        ax = axes[0, col]
        ax.imshow(left, cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{label}: left view", fontsize=10)
        ax.axis("off")
        ax = axes[1, col]
        show = rng.choice(z["R"].size, size=min(4000, z["R"].size), replace=False)
        ax.scatter(z["R"][show], z["L"][show], s=2, alpha=0.35, color="#2a5d9f", lw=0)
        ax.set_xlim(-4.2, 4.2)
        ax.set_ylim(-4.2, 4.2)
        ax.set_aspect("equal")
        ax.set_xlabel("z_R (right view)", fontsize=9)
        if col == 0:
            ax.set_ylabel("z_L (left view, same position)", fontsize=9)
        ax.set_title(f"a_R {sigma['a_R']:.3f}, scale_R {sigma['scale_R']:.3f}\n"
                     f"Sigma_RR {sigma['Sigma_RR']:.3f}, Sigma_RL {sigma['Sigma_RL']:.3f}, "
                     f"Sigma_LL {sigma['Sigma_LL']:.3f}", fontsize=8.5)
    fig.suptitle(f"Copula of subband s={s} (level {level}, k={k}, {ORIENTATIONS[k]:+d} deg): normal "
                 f"scores of right vs left magnitudes ({len(show):,} of {z['R'].size:,} positions "
                 "shown); the numbers are the pair's NSS targets", fontsize=10)
    _save(fig, path, dpi=72)


# --------------------------------------------------------------------------- the recipe's curves
def run_origin(run, cfg):
    """The folder a run was made from (siqa.config.made_in): X for X/runs/recipe/ref_s0
    with out_dir runs/recipe/ref_s0, wherever X now is; None for an absolute out_dir.
    ValueError when the run folder does not end in its out_dir (renamed since)."""
    from siqa.config import made_in, run_dir_of

    out = run_dir_of(cfg)
    origin = made_in(run, cfg)
    if origin is None and not out.is_absolute():
        raise ValueError(f"{run}: its config.yaml's out_dir {out} is not the end of its path, "
                         "so the folder it was made from is unknown (give it under that name)")
    return origin


def tensorboard_folder(run, cfg):
    """The TensorBoard folder of a run: its tensorboard.dir (a relative one from the folder
    the run was made from, `run_origin`; from the current directory if out_dir is absolute)
    / `tensorboard_name`. That name hashes the run folder's path where it was made, so for a
    run folder copied elsewhere (with its TensorBoard folder) the one folder there named
    after the run with any 8-hex-digit hash is taken. ValueError if there is none or several."""
    from siqa.settings import Settings
    from siqa.training.logbook import tensorboard_name

    tb = Path(Settings(cfg).tensorboard.dir)
    if not tb.is_absolute():
        origin = run_origin(run, cfg)
        tb = (Path.cwd() if origin is None else origin) / tb
    elif not tb.is_dir():
        tb = moved_tensorboard_dir(run, cfg, tb)
    exact = tb / tensorboard_name(run)
    if exact.is_dir():
        return exact
    name = Path(os.path.abspath(run)).name
    found = sorted(p for p in tb.glob(f"{name}-*")
                   if p.is_dir() and re.fullmatch(re.escape(name) + r"-[0-9a-f]{8}", p.name))
    if len(found) != 1:
        raise ValueError(f"{run}: {'no' if not found else len(found)} TensorBoard folders "
                         f"{name}-<hash> in {tb}" + (f" ({', '.join(p.name for p in found)})"
                                                     if found else ""))
    return found[0]


def moved_tensorboard_dir(run, cfg, tb):
    """Where an absolute tensorboard.dir that is gone now lies, for a run folder copied with
    it (runs record absolute paths): the two kept their places under the folder they shared
    (/old/runs/demo and /old/visualize/tensorboard: X/runs/demo and X/visualize/tensorboard).
    ValueError where the run's out_dir is not absolute or the run folder does not end in
    the part of it below that folder."""
    from siqa.config import run_dir_of

    out = run_dir_of(cfg)
    if not out.is_absolute():
        raise ValueError(f"{run}: its TensorBoard folder {tb} is gone")
    shared = Path(os.path.commonpath([out, tb]))
    below = out.relative_to(shared).parts
    folder = Path(os.path.abspath(run))
    if not below or folder.parts[-len(below):] != below:
        raise ValueError(f"{run}: its TensorBoard folder {tb} is gone, and the run folder does "
                         f"not end in {Path(*below) if below else out} to find a copy beside it")
    return Path(*folder.parts[:-len(below)]) / tb.relative_to(shared)


def run_curves(run):
    """{"val/srocc": [(epoch, value)], "train/loss_quality": [...]} of a run folder, from the
    TensorBoard events of its own config (`tensorboard_folder`), and (normalisation, seed,
    epochs) of that config."""
    import yaml
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from siqa.runfolder import RunFolder
    from siqa.settings import Settings

    cfg = yaml.safe_load(RunFolder(run).config.read_text())
    events = EventAccumulator(str(tensorboard_folder(run, cfg))).Reload()
    curves = {tag: [(e.step, e.value) for e in events.Scalars(tag)]
              for tag in ("val/srocc", "train/loss_quality") if tag in events.Tags()["scalars"]}
    settings = Settings(cfg)  # the recorded config.yaml as written: a key it lacks raises KeyError
    return curves, (settings.patches.normalisation, settings.train.seed, settings.train.epochs)


def curve_label(normalisation, seed, epochs, last):
    """A curve's legend entry: normalisation, seed and planned epochs, and where the run
    stopped if it ended before them."""
    label = f"{normalisation}, seed {seed}, {epochs} epochs"
    return label + (f" (stopped after {last})" if last is not None and last < epochs else "")


def draw_recipe_curves(path, runs):
    """paper_recipe.png from run folders (any epoch counts); returns the curves' labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    colours, styles = {"reference": "tab:red", "contrast": "tab:blue"}, ["-", "--", ":", "-."]
    drawn = [run_curves(run) for run in runs]
    longest = max(epochs for _, (_, _, epochs) in drawn)
    labels = []
    for curves, (norm, seed, epochs) in drawn:
        val = curves.get("val/srocc", [])
        labels.append(curve_label(norm, seed, epochs, val[-1][0] if val else None))
        for ax, tag in ((top, "val/srocc"), (bottom, "train/loss_quality")):
            xs, ys = zip(*curves[tag]) if curves.get(tag) else ((), ())
            ax.plot(xs, ys, color=colours.get(norm, "grey"), linestyle=styles[seed % len(styles)],
                    linewidth=1 if epochs == longest else 2, label=labels[-1])
    top.set_ylabel("validation SROCC")
    top.axhline(0, color="black", linewidth=0.5)
    top.legend(fontsize=8, loc="lower right")
    bottom.set_ylabel("training L1 (quality)")
    bottom.set_xlabel("epoch")
    top.set_title("Validation SROCC and training loss by epoch; the paper's optimizer (SGD 1e-3, "
                  "momentum 0.9, batch 128, NSS x25)", fontsize=9)
    _save(fig, path, dpi=90)
    return labels


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(OUT_DIR), help="folder for the PNGs (default docs/figures)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--recipe-runs", nargs="+", metavar="RUN_DIR",
                   help="draw only paper_recipe.png, from these run folders")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    figures = (("network.png", draw_network), ("dtcwt_subbands.png", draw_subbands),
               ("copula.png", draw_copula))
    if args.recipe_runs:
        figures = (("paper_recipe.png", lambda path: draw_recipe_curves(path, args.recipe_runs)),)
    for name, draw in figures:
        draw(out / name)
        print(f"{out / name}: {(out / name).stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
