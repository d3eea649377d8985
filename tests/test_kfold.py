"""protocol.design=kfold: every scene (content group) tested exactly once per repetition,
through train.py on a hidden LIVE 3D Phase II-like layout (8 scenes) and on the demo's
content groups; out-of-fold predictions pooled per repetition."""
import csv
import json

import numpy as np
import pytest
import scipy.io
from test_data_layouts import cell, save, view

from conftest import run_entry
from siqa.config import load_config
from siqa.data import load_database
from siqa.data.splits import split_scenes, splits_for_run
from siqa.evaluation.metrics import evaluate_scores
from siqa.settings import Settings

LIVE2_SCENES = ["003", "007", "008", "009", "010", "013", "015", "021"]  # LIVE-II's 8 ids


def make_live2_like(root, per_scene=3):
    """8 references x `per_scene` side-by-side stimuli in the official layout; DMOS grows
    with the distortion profile and differs between scenes."""
    stims, refs, dmos = [], [], []
    for s, scene in enumerate(LIVE2_SCENES):
        ref = f"{scene}image_0_0.bmp"
        save(root / "Reference" / ref, np.hstack([view(150 + 5 * s, s), view(100, 50 + s)]))
        for k in range(per_scene):
            stim = f"{scene}image_{k + 1}_{k + 2}.bmp"
            save(root / "Stimuli" / stim,
                 np.hstack([view(150 + 5 * s + 20 * k, 100 + 10 * s + k), view(100 - 20 * k, 7 * s + k)]))
            stims.append(stim)
            refs.append(ref)
            dmos.append(10.0 + 15 * k + 2 * s)
    n = len(stims)
    scipy.io.savemat(root / "3DDmosRelease.mat", {
        "Dmos": np.array([[d] for d in dmos]), "RefFilename": cell(refs, (n, 1)),
        "StiFilename": cell(stims, (n, 1))})


def test_train_kfold_on_a_live2_like_layout_tests_every_scene_once_per_repetition(tmp_path):
    root = tmp_path / "live2"
    make_live2_like(root)
    out = tmp_path / "run"
    proc = run_entry("train.py", "dataset.name=live3d_phase2", f"dataset.root={root}",
                     "model.name=tiny", "protocol.design=kfold", "protocol.folds=4", "train.repeats=2",
                     "train.epochs=1", "train.batch_size=8", "train.threads=1",
                     f"out_dir={out}", f"nss.cache_dir={tmp_path / 'cache'}", "nss.workers=1",
                     f"tensorboard.dir={tmp_path / 'tb'}")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((out / "splits.json").read_text())
    assert doc["design"] == "kfold/1" and doc["folds"] == 4 and len(doc["splits"]) == 8
    pairs = load_database("live3d_phase2", root=root)
    scenes = {p.content for p in pairs}
    assert len(scenes) == 8
    for r in range(2):
        block = doc["splits"][4 * r: 4 * r + 4]
        tested = [s for split in block for s in split["test"]]
        assert sorted(tested) == sorted(scenes)  # each scene exactly once
        for split in block:
            assert split["val"] and split["train"]
            assert not set(split["val"]) & set(split["test"])
        # the predictions the folds wrote: every pair tested once in the repetition
        names = []
        for f in range(4):
            with open(out / f"split_{4 * r + f}" / "predictions.csv", newline="") as fh:
                names += [row["name"] for row in csv.DictReader(fh) if row["split"] == "test"]
        assert sorted(names) == sorted(p.name for p in pairs)
    summary = json.loads((out / "summary.json").read_text())
    pooled = summary["pooled"]
    assert pooled["folds"] == 4 and len(pooled["repetitions"]) == 2
    rep = pooled["repetitions"][1]
    assert rep["pairs"] == len(pairs) and rep["scenes"] == 8
    # the pooled metrics are those of the pooled predictions, recomputed here
    preds = {}
    for f in range(4, 8):
        with open(out / f"split_{f}" / "predictions.csv", newline="") as fh:
            preds.update({row["name"]: float(row["prediction"]) for row in csv.DictReader(fh)
                          if row["split"] == "test"})
    want = evaluate_scores(np.array([preds[p.name] for p in pairs]), np.array([p.score for p in pairs]))
    assert rep["srocc"] == pytest.approx(want["srocc"]) and rep["rmse"] == pytest.approx(want["rmse"])
    assert "pooled out-of-fold, repetition 1 (24 pairs, 8 scenes)" in proc.stdout
    assert summary["pooled"]["summary"]["repetitions"] == 2


def test_kfold_on_the_demo_keeps_near_duplicates_together(tmp_path):
    pairs = load_database("demo", root=tmp_path / "demo")
    cfg = load_config(overrides=["protocol.design=kfold", "protocol.folds=3", "train.repeats=2"])
    splits, doc = splits_for_run(pairs, Settings(cfg))
    assert len(splits) == 6
    groups = {p.content for p in pairs}
    assert len(groups) == 9
    for r in range(2):
        tested = []
        for split in splits[3 * r: 3 * r + 3]:
            tested += sorted(split_scenes(pairs, split)["test"])
        assert sorted(tested) == sorted(groups)
    for split in splits:  # pov_hands is never tested while desk trains: one content id
        for part, idx in split.items():
            names = {pairs[i].name.split("/")[1] for i in idx}
            if any(n.startswith("pov_hands") for n in names):
                assert any(n.startswith("desk") for n in names), part
