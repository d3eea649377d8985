"""evaluate.py --matrix: train x test table with the score direction handled."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import make_tiny_database, run_entry, tiny_overrides
from siqa.data.records import StereoPair
from siqa.evaluation.matrix import oriented, parse_test
from siqa.evaluation.reports import fmt_metric as _fmt


def test_right_dmos_predictions_on_a_mos_database_give_positive_correlations():
    rng = np.random.default_rng(0)
    dmos = rng.uniform(0, 60, 40)
    mos_pairs = [StereoPair(f"p{i}", Path("x"), None, 100.0 - d, True, f"s{i % 5}", "wn")
                 for i, d in enumerate(dmos)]
    cell = oriented(dmos, mos_pairs, trained_higher_is_better=False)  # predicts DMOS exactly
    assert cell["flipped"] and cell["srocc"] == pytest.approx(1.0) and cell["plcc"] == pytest.approx(1.0)
    assert cell["raw_srocc"] == pytest.approx(-1.0)
    same = oriented(100.0 - dmos, mos_pairs, trained_higher_is_better=True)
    assert not same["flipped"] and same["srocc"] == pytest.approx(1.0)
    wrong = oriented(-dmos, mos_pairs, trained_higher_is_better=False)
    assert wrong["srocc"] == pytest.approx(-1.0)


@pytest.mark.parametrize("spec, key", [
    ("csv=/data/own/mos.csv", "manifest"),        # the csv loader reads only a manifest
    ("csv=/data/own", "root"),                     # a folder holding manifest.csv
    ("waterloo3d_phase1=/data/ivc/mos.CSV", "root"),  # Waterloo takes a root (and a manifest)
    ("live3d_phase1=/data/LIVE3D-I", "root"),
])
def test_a_test_database_path_is_a_manifest_only_for_a_manifest_only_loader(spec, key):
    name, overrides = parse_test(spec)
    path = spec.split("=", 1)[1]
    assert name == spec.split("=", 1)[0] and overrides["name"] == name
    assert overrides[key] == path
    other = "root" if key == "manifest" else "manifest"
    assert overrides[other] is None


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    work = tmp_path_factory.mktemp("matrix")
    manifest = make_tiny_database(work / "db")
    proc = run_entry("train.py", *tiny_overrides(manifest, work, **{"train.epochs": 1}))
    assert proc.returncode == 0, proc.stderr
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    for name, flip in (("mos.csv", True), ("dmos_copy.csv", False)):
        with open(manifest.parent / name, "w", newline="") as f:
            fields = list(rows[0]) + ["higher_is_better"]
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            for r in rows:
                score = 100 - float(r["score"]) if flip else float(r["score"])
                writer.writerow({**r, "score": score, "higher_is_better": str(flip).lower()})
    return work, manifest


def test_matrix_on_own_mos_and_dmos_databases(checkpoint, tmp_path):
    """mos.csv and dmos_copy.csv rate the checkpoint's own images: by content they are its
    database, scored on its test split (marked *), the MOS one with the direction flipped."""
    work, manifest = checkpoint
    folder = manifest.parent
    proc = run_entry("evaluate.py", "--matrix", "--checkpoint", work / "run" / "best.pt",
                     "--test", f"csv={manifest}", "--test", f"csv={folder / 'mos.csv'}",
                     "--test", f"csv={folder / 'dmos_copy.csv'}", "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "matrix.json").read_text())
    own, mos, dmos = result["cells"]
    run_test = json.loads((work / "run" / "metrics.json").read_text())["test"]
    assert own["split"] == "checkpoint test split" and own["n"] == run_test["n"]
    assert own["srocc"] == pytest.approx(run_test["srocc"]) and not own["flipped"]
    assert mos["n"] == dmos["n"] == run_test["n"] and mos["flipped"] and not dmos["flipped"]
    assert {c["mark"] for c in result["cells"]} == {"*"}
    for key in ("srocc", "plcc"):  # same images, reversed scale: same oriented correlation
        assert mos[key] == pytest.approx(dmos[key], abs=1e-12)
        assert mos[f"raw_{key}"] == pytest.approx(-dmos[f"raw_{key}"], abs=1e-12)
    text = (tmp_path / "matrix.md").read_text()
    assert "| train \\ test | csv | csv' | csv'' |" in text and "*" in text


def _seen_names(work):
    from siqa.checkpoint import load_checkpoint

    split = load_checkpoint(work / "run" / "best.pt")["split"]
    return set(split["train"]) | set(split["val"]), split["test"]


def test_matrix_recognises_its_database_by_a_relative_manifest_path(checkpoint, tmp_path):
    """The run was given an absolute manifest path; the same manifest by a relative path is
    the same database: its training pairs are marked, not scored as unseen."""
    work, manifest = checkpoint
    relative = manifest.relative_to(work)  # db/manifest.csv, from the run's work folder
    proc = run_entry("evaluate.py", "--matrix", "--checkpoint", work / "run" / "best.pt",
                     "--test", f"csv={relative}", "--out", tmp_path, cwd=work)
    assert proc.returncode == 0, proc.stderr
    (cell,) = json.loads((tmp_path / "matrix.json").read_text())["cells"]
    _, test = _seen_names(work)
    assert cell["split"] == "checkpoint test split" and cell["n"] == len(test) < 24
    assert f"| {_fmt(cell['srocc'])}* |" in (tmp_path / "matrix.md").read_text()


def test_matrix_drops_and_marks_the_training_pairs_another_database_shares(checkpoint, tmp_path):
    """A database with some of the checkpoint's pairs (not its whole test split): scored
    without its training and validation pairs, and the cell marked +."""
    work, manifest = checkpoint
    seen, test = _seen_names(work)
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    names = [f"{r['left']}|{r['right']}" for r in rows]
    kept = [r for r, n in zip(rows, names) if n != test[0]]  # one test pair left out
    other = tmp_path / "other"
    other.mkdir()
    with open(other / "shared.csv", "w", newline="") as f:  # the same images, other paths
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "left": manifest.parent / r["left"],
                          "right": manifest.parent / r["right"]} for r in kept)
    out = tmp_path / "m"
    proc = run_entry("evaluate.py", "--matrix", "--checkpoint", work / "run" / "best.pt",
                     "--test", f"csv={other / 'shared.csv'}", "--out", out)
    assert proc.returncode == 0, proc.stderr
    (cell,) = json.loads((out / "matrix.json").read_text())["cells"]
    assert cell["mark"] == "+" and cell["dropped_seen_pairs"] == len(seen)
    assert cell["n"] == len(kept) - len(seen) == len(test) - 1
    assert f"| {_fmt(cell['srocc'])}+ |" in (out / "matrix.md").read_text()


def test_matrix_needs_a_test_database(checkpoint):
    work, _ = checkpoint
    proc = run_entry("evaluate.py", "--matrix", "--checkpoint", work / "run" / "best.pt")
    assert proc.returncode == 2 and "--test" in proc.stderr
    two = run_entry("evaluate.py", "--checkpoint", work / "run" / "best.pt",
                    "--checkpoint", work / "run" / "best.pt")
    assert two.returncode == 2 and "--matrix" in two.stderr
