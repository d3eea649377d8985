"""Near-constant predictions are named: a 4-epoch SGD model once predicted 0.0458 .. 0.0463
on a 0 .. 64 scale, and metrics.json still reported SROCC 0.467, predict.py three equal
scores, without comment. The rule is one function (siqa.evaluation.metrics.prediction_spread);
the run's log, metrics.json, the protocol card, evaluate.py, predict.py and siqa.load say it.
And constant targets leave the after-logistic metrics undefined."""
import json
import warnings

import numpy as np
import pytest

from conftest import make_stereo_database, run_entry, tiny_overrides
from siqa.data.records import StereoPair
from siqa.evaluation.metrics import NEAR_CONSTANT_FRACTION, evaluate_scores, prediction_spread
from siqa.evaluation.reports import score_report


@pytest.mark.parametrize("pred,low,high,fraction,near", [
    ([0.0458, 0.0463, 0.0460], 0, 64, 0.0005 / 64, True),  # the report: 0.0008 % of the range
    ([3.0, 3.0, 3.0], 0, 64, 0.0, True),                   # constant
    ([10.0, 10.5], 0, 100, 0.005, True),                   # 0.5 % < 1 %
    ([10.0, 11.0], 0, 100, 0.01, False),                   # exactly 1 %: not below
    ([10.0, 12.0, 11.0], 0, 100, 0.02, False),             # 2 %
    ([2.0, 2.5], 1, 5, 0.125, False),                      # the range is max - min, not max
    ([50.0, 50.04], 0, 5, 0.008, True),                    # outside the range: the spread counts
])
def test_the_rule_on_hand_computed_cases(pred, low, high, fraction, near):
    got = prediction_spread(pred, low, high)
    assert NEAR_CONSTANT_FRACTION == 0.01
    assert got["spread"] == pytest.approx(max(pred) - min(pred), abs=1e-15)
    assert got["fraction"] == pytest.approx(fraction, abs=1e-12)
    assert got["near_constant"] is near
    assert got["min"] == min(pred) and got["max"] == max(pred) and got["score_range"] == [low, high]
    json.dumps(got)


@pytest.mark.parametrize("pred,low,high", [([1.0], 0, 64), ([], 0, 64), ([1.0, 2.0], 5, 5)])
def test_the_rule_does_not_judge_what_it_cannot(pred, low, high):
    """One prediction, none, or a database whose scores are all equal: no verdict (None)."""
    got = prediction_spread(pred, low, high)
    assert got["near_constant"] is None and got["fraction"] is None


def test_constant_targets_leave_the_after_logistic_metrics_undefined():
    """test.per_distortion.pristine of the demo (3 pairs, all scored 0) would show
    rmse_logistic 0.0, a perfect fit of nothing."""
    flat = evaluate_scores([0.3, 0.1, 0.2], [0.0, 0.0, 0.0], fit_info=True)
    assert flat["plcc_logistic"] is None and flat["rmse_logistic"] is None
    assert flat["srocc"] is None and flat["rmse"] == pytest.approx(np.sqrt((0.09 + 0.01 + 0.04) / 3))
    pairs = [StereoPair(f"p{i}", f"l{i}.png", f"r{i}.png", score, False, f"s{i}", kind)
             for i, (score, kind) in enumerate([(0, "pristine")] * 3 + [(10, "wn"), (20, "wn"), (30, "wn")])]
    report = score_report(pairs, [0.3, 0.1, 0.2, 11.0, 19.0, 33.0])
    pristine = report["per_distortion"]["pristine"]
    assert pristine["plcc_logistic"] is None and pristine["rmse_logistic"] is None
    assert report["per_distortion"]["wn"]["rmse_logistic"] is not None


@pytest.fixture(scope="module")
def near_constant_run(tmp_path_factory):
    """Two epochs of the paper's recipe on a 24-pair RGB database (4 scenes, scores 0 .. 59.5):
    the network predicts about 0.07 for every pair."""
    work = tmp_path_factory.mktemp("near_constant")
    manifest = make_stereo_database(work / "db")
    proc = run_entry("train.py", *tiny_overrides(manifest, work, **{"model.name": "bourbia2021"}))
    assert proc.returncode == 0, proc.stderr
    return work, manifest, proc


def test_the_run_says_so_in_its_log_metrics_and_card(near_constant_run):
    work, _, proc = near_constant_run
    warned = [line for line in proc.stdout.splitlines() if line.startswith("warning:")]
    assert any("the test predictions are near constant" in line for line in warned), proc.stdout
    assert any("validation predictions" in line for line in warned)
    assert all("of the score range 0 .. 59.5 (below 1 %)" in line for line in warned)
    metrics = json.loads((work / "run" / "metrics.json").read_text())
    assert metrics["test"]["spread"]["near_constant"] is True
    assert metrics["test"]["spread"]["score_range"] == [0.0, 59.5]
    assert metrics["val"]["spread"]["near_constant"] is True
    card = metrics["protocol"]["predictions"]
    assert card["near_constant"] is True and "1 %" in card["rule"]


def test_evaluate_says_so(near_constant_run):
    work, _, _ = near_constant_run
    proc = run_entry("evaluate.py", "--checkpoint", work / "run" / "best.pt", "--out", work / "eval")
    assert proc.returncode == 0, proc.stderr
    assert "warning: the predictions of" in proc.stdout and "are near constant" in proc.stdout
    metrics = json.loads((work / "eval" / "metrics.json").read_text())
    assert metrics["test"]["spread"]["near_constant"] is True
    assert metrics["protocol"]["predictions"]["near_constant"] is True


def test_predict_and_siqa_load_say_so(near_constant_run):
    import siqa
    from siqa.inference.api import NearConstantWarning

    work, manifest, _ = near_constant_run
    db = manifest.parent
    proc = run_entry("predict.py", "--checkpoint", work / "run" / "best.pt",
                     db / "s0_l.png", db / "s0_r.png", db / "s1_wn_l.png", db / "s1_wn_r.png")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    comments = [line for line in proc.stdout.splitlines() if line.startswith("# warning:")]
    assert len(comments) == 1 and "validation predictions are near constant" in comments[0]
    assert len([line for line in proc.stdout.splitlines() if "\t" in line]) == 2
    with pytest.warns(NearConstantWarning, match="near constant"):
        model = siqa.load(work / "run" / "best.pt", device="cpu")
    assert model.near_constant is True


def test_export_says_so_once_after_writing_and_refuses_in_one_line(near_constant_run, tmp_path):
    """export.py of a near-constant bourbia2021 checkpoint: one warning line on stdout after
    the file is written; a refusal after the checkpoint is read (a file where --out's folder
    should be) stays one line on stderr."""
    work, _, _ = near_constant_run
    checkpoint = work / "run" / "best.pt"
    proc = run_entry("export.py", "--checkpoint", checkpoint, "--format", "torchscript",
                     "--out", tmp_path / "m.pt", "--no-check")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    warned = [line for line in proc.stdout.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and "validation predictions are near constant" in warned[0]
    assert (tmp_path / "m.pt").is_file()
    (tmp_path / "a_file").write_text("")
    refused = run_entry("export.py", "--checkpoint", checkpoint, "--format", "torchscript",
                        "--out", tmp_path / "a_file" / "m.pt")
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr


def test_a_model_that_spreads_and_an_older_checkpoint_load_silently(near_constant_run, tmp_path):
    """The same checkpoint with the record of a spread of 20 % (and with none, as written
    before this check): no warning, `near_constant` False (None)."""
    import siqa
    from siqa.checkpoint import load_checkpoint, save_checkpoint

    work, manifest, _ = near_constant_run
    state = load_checkpoint(work / "run" / "best.pt")
    state["best"]["val"]["spread"] = prediction_spread([10.0, 21.9], 0, 59.5)
    save_checkpoint(tmp_path / "spread.pt", state)
    del state["best"]["val"]["spread"]
    save_checkpoint(tmp_path / "older.pt", state)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert siqa.load(tmp_path / "spread.pt", device="cpu").near_constant is False
        assert siqa.load(tmp_path / "older.pt", device="cpu").near_constant is None
    db = manifest.parent
    proc = run_entry("predict.py", "--checkpoint", tmp_path / "spread.pt", db / "s0_l.png", db / "s0_r.png")
    assert proc.returncode == 0 and "warning" not in proc.stdout, proc.stdout
