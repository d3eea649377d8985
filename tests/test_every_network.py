"""`python train.py model.name=X train.epochs=2` for every network of siqa.models.MODELS on
every hidden layout the tests build (LIVE 3D Phase I and II, Waterloo-IVC 3D Phase I and II,
a CSV manifest): metrics.json, or where the network cannot run on that database exit 2, one
line on stderr naming why, and no run folder.

Why a case is refused: multiscore predicts per-view scores (the LIVE layouts and a manifest
without view columns carry none; Waterloo-IVC's table and a manifest's left_score,right_score
columns do); padnet cuts 256x256 crops (the hidden views are 40x36 and 80x64). One padnet case
on 256x256 views trains (1 epoch)."""
import csv
import json

import numpy as np
import pytest
import scipy.io
from test_data_layouts import cell, save, view
from test_kfold import make_live2_like

from conftest import make_tiny_database, run_entry
from siqa.models import MODELS

SCENES = 5  # the fewest for a 60/20/20 content split with a scene in every part, and some to spare


def make_live1_like(root, scenes=SCENES):
    """LIVE 3D Phase I's layout (data.mat, <type>/im<k>_<level>_l.bmp, refimgs/), one
    distorted pair per scene."""
    names, refs = [], []
    for s in range(scenes):
        kind = ("jp2k", "blur", "wn", "ff", "jpeg")[s % 5]
        save(root / kind / f"im{s + 1}_1_l.bmp", view(150 + 10 * s, s))
        save(root / kind / f"im{s + 1}_1_r.bmp", view(100 - 10 * s, 50 + s))
        save(root / "refimgs" / f"im{s + 1}_l.bmp", view(150, 100 + s))
        save(root / "refimgs" / f"im{s + 1}_r.bmp", view(100, 150 + s))
        names.append(f"{kind}\\im{s + 1}_1.bmp")
        refs.append(f"refimgs\\im{s + 1}.bmp")
    scipy.io.savemat(root / "data.mat", {
        "img_names": cell(names, (1, scenes)), "ref_names": cell(refs, (1, scenes)),
        "dmos": np.array([[10.0 + 8 * s] for s in range(scenes)])})


def make_waterloo_like(root, scenes=SCENES):
    """Waterloo-IVC 3D's layout (side-by-side PNGs in 3D/Session3DIQ/, a headed MOS table
    with the per-view MOS): per scene its pristine pair and one distorted pair."""
    rows = []
    for s in range(scenes):
        ref = f"N{2 * s + 1:04d}"
        for k, kind in enumerate(("Reference", "WN")):
            name = f"N{2 * s + k + 1:04d}"
            save(root / "3D" / "Session3DIQ" / f"{name}.png",
                 np.hstack([view(200 - 40 * k, 10 * s + k), view(60 + 10 * s, 10 * s + k + 5)]))
            rows.append([name, ref, kind, 90.0 - 40 * k - s, 85.0 - 30 * k, 88.0 - 35 * k - s])
    with open(root / "MOS.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Image Name", "Reference", "Distortion Type", "MOS 3D", "MOS_left", "MOS_right"])
        w.writerows(rows)


def build(layout, root):
    """(dataset overrides) of a hidden database in `layout`, built under `root`."""
    if layout == "live3d_phase1":
        make_live1_like(root)
    elif layout == "live3d_phase2":
        make_live2_like(root, per_scene=1)
    elif layout.startswith("waterloo3d"):
        make_waterloo_like(root)
    else:
        return [f"dataset.manifest={make_tiny_database(root, scenes=SCENES, levels=1)}"]
    return [f"dataset.root={root}"]


LAYOUTS = ["live3d_phase1", "live3d_phase2", "waterloo3d_phase1", "waterloo3d_phase2", "csv"]
REFUSED = {  # (network, layout) -> what the one line names
    **{("multiscore", layout): "per-view scores" for layout in ("live3d_phase1", "live3d_phase2", "csv")},
    **{("padnet", layout): "256x256" for layout in LAYOUTS},
}


@pytest.fixture(scope="module")
def databases(tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    return {layout: build(layout, root / layout) for layout in LAYOUTS}


def train(tmp_path, dataset, *extra):
    out = tmp_path / "run"
    return out, run_entry("train.py", *dataset, f"out_dir={out}", f"nss.cache_dir={tmp_path / 'cache'}",
                          "nss.workers=1", f"tensorboard.dir={tmp_path / 'tb'}", "train.batch_size=4",
                          "train.threads=1", *extra)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("network", sorted(MODELS))
def test_train_every_network_on_every_layout(network, layout, databases, tmp_path):
    out, proc = train(tmp_path, [f"dataset.name={layout}", *databases[layout]],
                      f"model.name={network}", "train.epochs=2")
    why = REFUSED.get((network, layout))
    if why is None:
        assert proc.returncode == 0, proc.stderr
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["test"]["n"] >= 1 and np.isfinite(metrics["test"]["rmse"])
        return
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert why in proc.stderr, proc.stderr
    assert not out.exists()


def test_padnet_trains_on_views_of_256_pixels(tmp_path):
    """One 256x256 crop a view (the smallest PAD-Net takes), 5 scenes, 1 epoch."""
    manifest = make_tiny_database(tmp_path / "db", scenes=SCENES, levels=1, size=(256, 256))
    out, proc = train(tmp_path, ["dataset.name=csv", f"dataset.manifest={manifest}"],
                      "model.name=padnet", "train.epochs=1")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "metrics.json").read_text())["test"]["n"] == 1


def with_view_scores(manifest):
    """The manifest with left_score,right_score columns (each view's score: the pair's, +-3)."""
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["left_score"], row["right_score"] = float(row["score"]) - 3, float(row["score"]) + 3
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def test_multiscore_trains_on_a_manifest_with_per_view_score_columns(tmp_path):
    manifest = with_view_scores(make_tiny_database(tmp_path / "db", scenes=SCENES, levels=1))
    out, proc = train(tmp_path, ["dataset.name=csv", f"dataset.manifest={manifest}"],
                      "model.name=multiscore", "train.epochs=2")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["n"] >= 1 and np.isfinite(metrics["test"]["rmse"])


def test_unknown_network_is_one_line(tmp_path, tiny_manifest):
    out, proc = train(tmp_path, ["dataset.name=csv", f"dataset.manifest={tiny_manifest}"],
                      "model.name=resnet")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "Traceback" not in proc.stderr
    assert "resnet" in proc.stderr and "bourbia2021" in proc.stderr
    assert not out.exists()
