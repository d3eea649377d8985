"""Load: siqa.load(...).score from several threads equals serial calls; predict.py
--manifest streams its rows (memory flat in their number) and writes its CSV atomically."""
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest


def test_score_from_several_threads_equals_serial(model, tiny_manifest):
    import torch

    folder = tiny_manifest.parent
    pairs = [(folder / f"s{s}_{k}_l.png", folder / f"s{s}_{k}_r.png") for s in range(8) for k in range(3)]
    assert torch.get_num_threads() > 1 or pytest.skip("one torch thread: nothing to race")
    threads = torch.get_num_threads()
    serial = [model.score(left, right) for left, right in pairs]
    batches = model.score([p[0] for p in pairs], [p[1] for p in pairs])
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            threaded = list(pool.map(lambda p: model.score(*p), pairs))
            assert threaded == serial
            lists = list(pool.map(lambda _: model.score([p[0] for p in pairs], [p[1] for p in pairs]), range(4)))
            assert all(np.array_equal(got, batches) for got in lists)
            assert torch.get_num_threads() == threads  # the caller's setting survives


def test_predict_manifest_streams_and_writes_its_csv_atomically(checkpoint, tiny_manifest, tmp_path):
    import csv
    import os
    import signal
    import subprocess
    import sys

    import siqa
    from conftest import ROOT, python_path, run_entry

    with open(tiny_manifest, newline="") as f:
        base = list(csv.DictReader(f))
    rows = [dict(base[i % len(base)], left=str(tiny_manifest.parent / base[i % len(base)]["left"]),
                 right=str(tiny_manifest.parent / base[i % len(base)]["right"]), id=i) for i in range(400)]
    manifest = tmp_path / "many.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "out" / "scored.csv"
    out.parent.mkdir()
    out.write_text("the previous file\n")
    cmd = [sys.executable, str(ROOT / "predict.py"), "--checkpoint", str(checkpoint), "--device", "cpu",
           "--manifest", str(manifest), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": python_path(), "OMP_NUM_THREADS": "1"})
    lines = 0
    for line in proc.stdout:  # scores come out while the rows are read: streamed
        lines += not line.startswith("#")
        if lines == 5:
            proc.send_signal(signal.SIGTERM)
            break
    proc.communicate(timeout=300)
    assert proc.returncode == 143
    assert out.read_text() == "the previous file\n"  # no half-file
    assert [p.name for p in out.parent.iterdir()] == ["scored.csv"]  # no temporary left

    done = run_entry("predict.py", "--checkpoint", checkpoint, "--device", "cpu", "--manifest", manifest,
                     "--out", out, env={"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    with open(out, newline="") as f:
        got = list(csv.DictReader(f))
    assert [r["id"] for r in got] == [str(i) for i in range(400)]
    import torch

    threads = torch.get_num_threads()  # the same arithmetic as the subprocess: one thread
    torch.set_num_threads(1)
    try:
        want = siqa.load(checkpoint, device="cpu").score_pairs([(r["left"], r["right"]) for r in rows])
    finally:
        torch.set_num_threads(threads)
    assert [float(r["prediction"]) for r in got] == list(want)


# -- every network: the score predict.py gives is the one the training path gives ---------
def _printed(stdout):
    """predict.py's printed scores, in order (6 decimals)."""
    return [float(line.split("\t")[-1]) for line in stdout.splitlines() if not line.startswith("#")]


def test_predict_gives_a_stereoqanet_run_the_scores_of_its_predictions_csv(tiny_manifest, tmp_path):
    """A 2-epoch StereoQA-Net run (RGB patches standardised with its training split's
    statistics): predict.py (pairs, --sbs, --manifest) and siqa.load score its test pairs as
    the run's own test did (predictions.csv), and the quality maps are drawn without the
    naturalness plot, which needs the NSS task."""
    import csv

    from PIL import Image

    import siqa
    from conftest import run_entry, tiny_overrides
    from siqa.errors import UserError
    from siqa.evaluation.reports import test_predictions

    proc = run_entry("train.py", *tiny_overrides(tiny_manifest, tmp_path, **{"model.name": "stereoqanet"}))
    assert proc.returncode == 0, proc.stderr
    ckpt = tmp_path / "run" / "best.pt"
    want = test_predictions(tmp_path / "run" / "predictions.csv")
    assert len(want) >= 3 and len(set(want.values())) == len(want)  # distinct: a real check
    folder = tiny_manifest.parent
    names = sorted(want)
    views = [(folder / n.split("|")[0], folder / n.split("|")[1]) for n in names]
    expected = np.array([want[n] for n in names])

    pairs = run_entry("predict.py", "--checkpoint", ckpt, "--device", "cpu",
                      *[str(v) for pair in views for v in pair], "--maps", tmp_path / "maps")
    assert pairs.returncode == 0, pairs.stderr
    np.testing.assert_allclose(_printed(pairs.stdout), expected, rtol=0, atol=1e-6)  # 6 decimals

    manifest = tmp_path / "test_pairs.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["left", "right"])
        writer.writerows([[str(a), str(b)] for a, b in views])
    got = _predict_manifest(ckpt, manifest, tmp_path / "scored.csv")
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)

    left, right = views[0]
    Image.fromarray(np.concatenate([np.asarray(Image.open(left)), np.asarray(Image.open(right))],
                                   axis=1)).save(tmp_path / "sbs.png")
    sbs = run_entry("predict.py", "--checkpoint", ckpt, "--device", "cpu", "--sbs", tmp_path / "sbs.png")
    assert sbs.returncode == 0, sbs.stderr
    assert abs(_printed(sbs.stdout)[0] - expected[0]) <= 1e-6

    model = siqa.load(ckpt, device="cpu")
    assert model.name == "stereoqanet" and model.spec.channels == 3
    np.testing.assert_allclose(model.score([v[0] for v in views], [v[1] for v in views]), expected,
                               rtol=0, atol=1e-6)
    grid = model.patch_scores(left, right)  # 64x80 views: 2 x 2 whole 32x32 patches
    assert grid.shape == (2, 2) and abs(grid.mean() - expected[0]) <= 1e-6
    with pytest.raises(UserError, match="stereoqanet network, which predicts no NSS"):
        model.naturalness(left, right)
    stem = f"{left.stem}_{right.stem}"
    written = sorted(p.name for p in (tmp_path / "maps").iterdir() if p.name.startswith(stem + "_"))
    assert written == sorted(f"{stem}_{s}" for s in ("quality.png", "asymmetry.png", "quality.npy",
                                                     "self_left.npy", "self_right.npy", "asymmetry.npy"))
    np.testing.assert_allclose(np.load(tmp_path / "maps" / f"{stem}_quality.npy"), grid, rtol=0, atol=1e-6)


def _colour_database(folder, size, pairs=3, seed=0):
    """`pairs` RGB stereo pairs of `size` (W, H) with a CSV manifest (the training path's
    loader reads it)."""
    import csv

    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    w, h = size
    rows = []
    for i in range(pairs):
        base = rng.integers(0, 256, (h, w, 3)).astype(np.float64)
        for eye, noise in (("l", 0), ("r", 20 * i)):
            view = np.clip(base + rng.normal(0, noise + 1, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(view).save(folder / f"p{i}_{eye}.png")
        rows.append({"left": f"p{i}_l.png", "right": f"p{i}_r.png", "score": float(10 * i)})
    with open(folder / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder / "manifest.csv"


@pytest.mark.parametrize("name, size", [("multiscore", (100, 70)), ("padnet", (300, 260))])
def test_predict_scores_multiscore_and_padnet_as_evaluate_does(name, size, tmp_path):
    """Multi-score (four outputs: the first, quality, is the score) and PAD-Net (256x256
    crops covering the view) on colour views, from a checkpoint made in-process (no fixture
    database carries the per-view scores Multi-score trains on): predict.py's scores equal
    evaluate.py's path (siqa.scoring.predict_database: the training path's patches and
    batches), and arrays score as their files."""
    import torch
    from PIL import Image

    import siqa
    from siqa import config
    from siqa.build import load_model
    from siqa.checkpoint import load_checkpoint, save_checkpoint
    from siqa.data.databases.csv_manifest import load_csv
    from siqa.models import create_model
    from siqa.scoring import predict_database

    manifest = _colour_database(tmp_path / "db", size)
    cfg = config.load_config(overrides=[f"model.name={name}", "device=cpu"])  # as train.py stores it
    torch.manual_seed(0)
    network = create_model(name)
    if name == "multiscore":  # ReLU outputs: a positive bias keeps the scores apart from 0
        with torch.no_grad():
            network.head.fc3.bias.fill_(1.0)
    ckpt = tmp_path / f"{name}.pt"
    save_checkpoint(ckpt, {"model": network.state_dict(), "config": cfg,
                           "database": {"name": "colour", "higher_is_better": False,
                                        "score_min": 0.0, "score_max": 20.0}})
    pairs = load_csv(manifest)
    state = load_checkpoint(ckpt)
    threads = torch.get_num_threads()
    try:
        want = predict_database(load_model(state, torch.device("cpu")), pairs, state["config"],
                                torch.device("cpu"), progress=False)
    finally:
        torch.set_num_threads(threads)  # load_model set the run's numerics
    assert len(set(np.round(want, 6))) == len(pairs)  # distinct scores: a real comparison

    got = _predict_manifest(ckpt, manifest, tmp_path / "scored.csv")
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)

    model = siqa.load(ckpt, device="cpu")
    assert model.name == name
    left, right = pairs[1].left, pairs[1].right
    arrays = model.score(np.asarray(Image.open(left)), np.asarray(Image.open(right)))
    assert arrays == model.score(left, right)
    assert abs(arrays - want[1]) <= 1e-6


def _predict_manifest(ckpt, manifest, out):
    """predict.py --manifest MANIFEST --out OUT on the CPU: the predictions it wrote."""
    import csv

    from conftest import run_entry

    proc = run_entry("predict.py", "--checkpoint", ckpt, "--device", "cpu", "--manifest", manifest,
                     "--out", out)
    assert proc.returncode == 0, proc.stderr
    with open(out, newline="") as f:
        return np.array([float(r["prediction"]) for r in csv.DictReader(f)])
