"""After k-fold: siqa.load(RUN_DIR) and predict.py --checkpoint RUN_DIR score with the mean of
the fold models (every tested split's best.pt), name them, and equal the mean of what
predict.py gives with each split's own best.pt; a folder without a tested split is refused
in one line."""
import csv

import numpy as np
import pytest

from conftest import run_entry, tiny_overrides

FOLDS = 3


@pytest.fixture(scope="module")
def kfold_run(tiny_manifest, tmp_path_factory):
    """A 3-fold run of the tiny database (1 epoch): the run folder."""
    work = tmp_path_factory.mktemp("kfold")
    proc = run_entry("train.py", *tiny_overrides(tiny_manifest, work, **{
        "protocol.design": "kfold", "protocol.folds": FOLDS, "train.epochs": 1}))
    assert proc.returncode == 0, proc.stderr
    return work / "run"


def predictions(path):
    with open(path, newline="") as f:
        return [float(row["prediction"]) for row in csv.DictReader(f)]


def printed(stdout):
    """predict.py's scores (the last column of its non-header lines)."""
    return [float(line.rsplit("\t", 1)[1]) for line in stdout.splitlines() if not line.startswith("#")]


def test_predict_py_on_the_run_folder_is_the_mean_of_each_folds_predict_py(kfold_run, tiny_manifest,
                                                                          tmp_path):
    """Per pair, the run folder's prediction equals (p_0 + p_1 + p_2) / 3 of the three folds'
    own predict.py runs: exactly in the --out CSV (full precision), to the printed 6 decimals
    on stdout; the header names the folds."""
    folds = []
    for r in range(FOLDS):
        proc = run_entry("predict.py", "--checkpoint", kfold_run / f"split_{r}" / "best.pt", "--device",
                         "cpu", "--manifest", tiny_manifest, "--out", tmp_path / f"fold{r}.csv")
        assert proc.returncode == 0, proc.stderr
        folds.append(predictions(tmp_path / f"fold{r}.csv"))
    whole = run_entry("predict.py", "--checkpoint", kfold_run, "--device", "cpu", "--manifest",
                      tiny_manifest, "--out", tmp_path / "ensemble.csv")
    assert whole.returncode == 0, whole.stderr
    header = whole.stdout.splitlines()[0]
    assert header.startswith("# mean of 3 models") and "k-fold, 3 folds x 1 repetition" in header
    assert "split_0, split_1, split_2" in header and str(kfold_run) in header
    ensemble = predictions(tmp_path / "ensemble.csv")
    want = [(a + b + c) / 3 for a, b, c in zip(*folds)]
    assert len(ensemble) == 24 and ensemble == want
    assert np.allclose(printed(whole.stdout), want, rtol=0, atol=1e-6)
    assert len({round(p, 6) for p in folds[0]} | {round(p, 6) for p in folds[1]}) > 2  # folds differ


def test_siqa_load_of_a_run_folder(kfold_run, tiny_manifest):
    """The model object: its folds named (attributes and repr), scores the mean of the folds'
    own siqa.load scores, a patch grid whose mean is the score, the mean predicted NSS."""
    import siqa
    from siqa.inference.ensemble import FoldEnsemble

    folder = tiny_manifest.parent
    left, right = folder / "s2_1_l.png", folder / "s2_1_r.png"
    model = siqa.load(kfold_run, device="cpu")
    assert isinstance(model, FoldEnsemble)
    assert model.splits == ["split_0", "split_1", "split_2"] and model.left_out == []
    assert model.design == "k-fold, 3 folds x 1 repetition" and model.name == "tiny"
    assert "splits=['split_0', 'split_1', 'split_2']" in repr(model)
    alone = [siqa.load(kfold_run / f"split_{r}" / "best.pt", device="cpu") for r in range(FOLDS)]
    one = model.score(left, right)
    assert isinstance(one, float) and one == sum(m.score(left, right) for m in alone) / 3
    lefts, rights = [left, folder / "s5_2_l.png"], [right, folder / "s5_2_r.png"]
    many = model.score(lefts, rights)
    assert np.array_equal(many, sum(m.score(lefts, rights) for m in alone) / 3)
    assert many[0] == one
    assert model.lower_better and model.score_range == alone[0].score_range
    grid = model.patch_scores(left, right)
    assert grid.shape == alone[0].patch_scores(left, right).shape
    assert abs(grid.mean() - one) < 1e-6
    nat = model.naturalness(left, right)
    want = sum(m.naturalness(left, right).predicted for m in alone) / 3
    assert np.allclose(nat.predicted, want, rtol=0, atol=1e-12) and nat.computed.shape == (108,)


def test_a_partly_tested_run_averages_its_tested_splits_and_names_the_others(kfold_run, tmp_path):
    part = tmp_path / "part"
    (part).mkdir()
    (part / "splits.json").symlink_to(kfold_run / "splits.json")
    for r in range(FOLDS):
        (part / f"split_{r}").mkdir()
        (part / f"split_{r}" / "best.pt").symlink_to(kfold_run / f"split_{r}" / "best.pt")
        if r != 1:  # split 1 not tested yet
            (part / f"split_{r}" / "metrics.json").symlink_to(kfold_run / f"split_{r}" / "metrics.json")
    import siqa

    model = siqa.load(part, device="cpu")
    assert model.splits == ["split_0", "split_2"] and model.left_out == ["split_1"]
    assert "left out: split_1" in model.describe_members()


def test_a_folder_without_a_tested_split_is_refused_in_one_line(kfold_run, tmp_path):
    empty = tmp_path / "untested"
    (empty / "split_0").mkdir(parents=True)
    (empty / "splits.json").symlink_to(kfold_run / "splits.json")
    (empty / "split_0" / "best.pt").symlink_to(kfold_run / "split_0" / "best.pt")  # no metrics.json
    for folder in (empty, tmp_path / "nothing_here"):
        folder.mkdir(exist_ok=True)
        proc = run_entry("predict.py", "--checkpoint", folder, "--sbs", "x.png")
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert f"{folder} holds no finished split" in lines[0]
    proc = run_entry("export.py", "--checkpoint", kfold_run, "--format", "torchscript", "--out",
                     tmp_path / "x.pt")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "is a run folder" in proc.stderr
