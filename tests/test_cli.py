"""train.py / evaluate.py / predict.py end to end on a tiny fixture database (CPU)."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_entry, tiny_overrides


@pytest.fixture(scope="module")
def trained(tiny_run):
    return tiny_run  # the session's shared tiny run (conftest.py)


def test_train_writes_every_file(trained):
    work, proc = trained
    run = work / "run"
    for name in ("config.yaml", "best.pt", "last.pt", "metrics.json", "predictions.csv"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("srocc", "plcc", "krocc", "rmse", "plcc_logistic", "rmse_logistic", "n", "per_distortion"):
        assert key in metrics["test"], key
    assert set(metrics["test"]["per_distortion"]) == {"blur", "wn"}
    assert "srocc" in metrics["val"]
    with open(run / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == metrics["test"]["n"] + metrics["pairs"]["val"]
    assert {r["split"] for r in rows} == {"val", "test"}
    assert list((work / "tb").glob("run-*/events.out.tfevents.*"))  # TensorBoard curves
    assert "test (" in proc.stdout and "SROCC" in proc.stdout
    assert not list(run.glob("*.tmp"))


def test_checkpoint_holds_what_resume_needs(trained):
    from siqa.checkpoint import load_checkpoint

    work, _ = trained
    last = load_checkpoint(work / "run" / "last.pt")
    assert {"model", "optimizer", "epoch", "rng", "config", "split", "best"} <= set(last)
    assert last["epoch"] == 2
    assert set(last["split"]) == {"train", "val", "test"}


def test_evaluate_reproduces_test_metrics(trained, tmp_path):
    """evaluate.py scores the checkpoint under the run's own arithmetic (its train.threads
    and numerics): the same predictions, bit for bit, and so the same metrics."""
    work, _ = trained
    proc = run_entry("evaluate.py", "--checkpoint", work / "run" / "best.pt", "--out", tmp_path / "ev")
    assert proc.returncode == 0, proc.stderr
    got = json.loads((tmp_path / "ev" / "metrics.json").read_text())["test"]
    want = json.loads((work / "run" / "metrics.json").read_text())["test"]

    def test_rows(path):
        with open(path, newline="") as f:
            return {r["name"]: r["prediction"] for r in csv.DictReader(f)
                    if r.get("split", "test") in ("test", "")}

    assert test_rows(tmp_path / "ev" / "predictions.csv") == test_rows(work / "run" / "predictions.csv")
    for key in ("srocc", "plcc", "krocc", "rmse", "plcc_logistic", "rmse_logistic", "n"):
        if want[key] is None:  # e.g. no PLCC after a flat map
            assert got[key] is None, key
        else:
            assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), key
    assert (tmp_path / "ev" / "scatter.png").stat().st_size > 1000


def test_predict_same_score_for_views_and_side_by_side(trained, tiny_manifest, tmp_path):
    work, _ = trained
    folder = tiny_manifest.parent
    left, right = folder / "s0_1_l.png", folder / "s0_1_r.png"
    sbs = np.concatenate([np.asarray(Image.open(left)), np.asarray(Image.open(right))], axis=1)
    Image.fromarray(sbs).save(tmp_path / "sbs.png")
    ckpt = work / "run" / "best.pt"
    a = run_entry("predict.py", "--checkpoint", ckpt, left, right)
    b = run_entry("predict.py", "--checkpoint", ckpt, "--sbs", tmp_path / "sbs.png")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    score = lambda out: float(out.strip().splitlines()[-1].split("\t")[-1])
    assert score(a.stdout) == pytest.approx(score(b.stdout), abs=1e-6)
    assert "higher = worse" in a.stdout  # says the scale and direction
    # --manifest with --out: the manifest's rows plus a prediction column
    c = run_entry("predict.py", "--checkpoint", ckpt, "--manifest", tiny_manifest, "--out", tmp_path / "p.csv")
    assert c.returncode == 0, c.stderr
    with open(tmp_path / "p.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 24 and "prediction" in rows[0] and "score" in rows[0]
    row = next(r for r in rows if r["left"] == "s0_1_l.png")
    assert float(row["prediction"]) == pytest.approx(score(a.stdout), abs=1e-4)


def test_resume_after_epoch_one_equals_uninterrupted_run(trained, tiny_manifest, tmp_path):
    work, _ = trained
    first = run_entry("train.py", *tiny_overrides(tiny_manifest, tmp_path, **{
        "model.name": "bourbia2021", "train.epochs": 1}))  # the network of the session's run
    assert first.returncode == 0, first.stderr
    resumed = run_entry("train.py", "--resume", f"out_dir={tmp_path / 'run'}", "train.epochs=2")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    got = json.loads((tmp_path / "run" / "metrics.json").read_text())
    want = json.loads((work / "run" / "metrics.json").read_text())
    assert got["test"] == want["test"] and got["val"] == want["val"]


def test_existing_run_is_not_overwritten(trained, tiny_manifest):
    work, _ = trained
    proc = run_entry("train.py", *tiny_overrides(tiny_manifest, work))
    assert proc.returncode == 2
    assert "already holds a run" in proc.stderr and "--resume" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_evaluate_on_a_mos_database_orients_the_correlations(trained, tiny_manifest, tmp_path):
    """A DMOS-trained checkpoint on a MOS copy of its database (score -> 100 - score):
    the raw correlations change sign, the oriented ones (as evaluate.py --matrix) do not."""
    import csv as csv_mod

    work, _ = trained
    with open(tiny_manifest, newline="") as f:
        rows = list(csv_mod.DictReader(f))
    mos = tmp_path / "mos.csv"
    with open(mos, "w", newline="") as f:
        writer = csv_mod.DictWriter(f, fieldnames=[*rows[0], "higher_is_better"])
        writer.writeheader()
        for row in rows:
            left, right = (str((tiny_manifest.parent / row[k]).resolve()) for k in ("left", "right"))
            writer.writerow({**row, "left": left, "right": right,
                             "score": 100 - float(row["score"]), "higher_is_better": "true"})
    proc = run_entry("evaluate.py", "--checkpoint", work / "run" / "best.pt", "--out", tmp_path / "ev",
                     "dataset.name=csv", f"dataset.manifest={mos}")
    assert proc.returncode == 0, proc.stderr
    # the same images as the checkpoint's database (siqa.data.overlap): its test split is scored
    report = json.loads((tmp_path / "ev" / "metrics.json").read_text())["test"]
    assert report["oriented"]["flipped"] is True
    assert report["oriented"]["srocc"] == pytest.approx(-report["srocc"])
    assert report["oriented"]["raw_srocc"] == pytest.approx(report["srocc"])
    assert "oriented SROCC" in proc.stdout


# ------------------------------------------------- TensorBoard folders, several pairs, folders

def test_tensorboard_folders_differ_for_runs_with_the_same_last_component(tmp_path, monkeypatch):
    from siqa.training.logbook import tensorboard_name

    a, b = tensorboard_name(tmp_path / "a" / "exp"), tensorboard_name(tmp_path / "b" / "exp")
    assert a != b and a.startswith("exp-") and b.startswith("exp-")
    monkeypatch.chdir(tmp_path)  # the same run named from another working directory
    assert tensorboard_name(Path("a") / "exp") == a
    assert tensorboard_name(tmp_path / "b" / ".." / "a" / "exp") == a


def test_predict_scores_several_pairs_as_each_alone(checkpoint, tiny_manifest):
    folder = tiny_manifest.parent
    one = [folder / "s0_1_l.png", folder / "s0_1_r.png"]
    two = [folder / "s3_2_l.png", folder / "s3_2_r.png"]
    both = run_entry("predict.py", "--checkpoint", checkpoint, *one, *two)
    assert both.returncode == 0, both.stderr
    lines = [line for line in both.stdout.splitlines() if not line.startswith("#")]
    alone = [run_entry("predict.py", "--checkpoint", checkpoint, *pair) for pair in (one, two)]
    scores = [float(p.stdout.strip().splitlines()[-1].split("\t")[-1]) for p in alone]
    assert len(lines) == 2 and lines[0].startswith(str(one[0])) and lines[1].startswith(str(two[0]))
    assert [float(line.split("\t")[-1]) for line in lines] == pytest.approx(scores, abs=1e-6)
    odd = run_entry("predict.py", "--checkpoint", checkpoint, *one, two[0])
    assert odd.returncode == 2 and "in pairs" in odd.stderr


def test_a_run_folder_is_evaluated_as_its_best_pt(checkpoint, tmp_path):
    """evaluate.py takes a run folder as predict.py and siqa.load do: a run of one split is
    its best.pt on its test split (several splits: tests/test_evaluate_run.py)."""
    proc = run_entry("evaluate.py", "--checkpoint", checkpoint.parent, "--out", tmp_path / "ev")
    assert proc.returncode == 0, proc.stderr
    got = json.loads((tmp_path / "ev" / "metrics.json").read_text())["test"]
    want = json.loads((checkpoint.parent / "metrics.json").read_text())["test"]
    assert (got["n"], got["srocc"], got["rmse"]) == (want["n"], want["srocc"], want["rmse"])
    empty = run_entry("evaluate.py", "--checkpoint", tmp_path)
    assert empty.returncode == 2 and len(empty.stderr.strip().splitlines()) == 1
    assert f"{tmp_path} holds no tested split" in empty.stderr
