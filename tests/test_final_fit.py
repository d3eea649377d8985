"""A final fit after k-fold: dataset.split=[1, 0, 0] trains one model on every pair for a
fixed train.epochs, with no selection (best.pt is the last epoch) and no test; it checks the
spread of its predictions on its training pairs and warns as other runs do; it loads,
scores, resumes and extends like any run, and what cannot apply to it is refused in one line.
The epochs it trains come from the folds' best epochs, which a k-fold run turns into a count,
or refuses to, when its folds did not learn."""
import json

import pytest

from conftest import run_entry, tiny_overrides
from siqa.evaluation.metrics import prediction_spread
from siqa.evaluation.reports import final_fit_epochs, final_fit_line


def one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_final_fit_on_every_pair(tiny_manifest, tmp_path):
    from siqa.checkpoint import load_checkpoint

    run = tmp_path / "run"
    proc = run_entry("train.py", *tiny_overrides(tiny_manifest, tmp_path, **{"dataset.split": "[1,0,0]"}))
    assert proc.returncode == 0, proc.stderr
    assert "no validation split: best.pt is the last epoch" in proc.stdout
    assert "no test split: best.pt is epoch 2, trained on 24 pairs" in proc.stdout
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["val"] is None and metrics["test"] is None and metrics["best_epoch"] == 2
    assert metrics["pairs"] == {"train": 24, "val": 0, "test": 0}
    assert metrics["protocol"]["selection"] == "none: the last epoch (no validation split)"
    best, last = load_checkpoint(run / "best.pt"), load_checkpoint(run / "last.pt")
    assert best["epoch"] == last["epoch"] == 2 and best["best"]["val"] is None
    assert best["best"]["train"] == metrics["train"]  # its spread on its training pairs
    assert all(best["model"][k].equal(last["model"][k]) for k in last["model"])  # no selection
    assert len(best["split"]["train"]) == 24 and not best["split"]["val"] and not best["split"]["test"]

    import siqa  # scored like any checkpoint, and as the run folder's one model
    from siqa.data import load_database
    from siqa.inference.api import NearConstantWarning

    # 2 epochs of the paper's recipe predict near-constant scores: said in the log, recorded
    # as the spread of best.pt's scores of the training pairs, and siqa.load warns
    spread = metrics["train"]["spread"]
    assert spread["near_constant"] is True
    assert (f"warning: the training predictions (best.pt, a final fit) are near constant: "
            f"{spread['min']:.4g} .. {spread['max']:.4g}") in proc.stdout
    # and the run's last word before where it was written: it did not learn
    assert metrics["learning"]["learned"] is False and metrics["learning"]["spread"] == spread
    said = proc.stdout.strip().splitlines()[-2]
    assert said.startswith("[non-learner] this run predicts near-constant scores for its own "
                           f"training pairs; its predictions on its training pairs spread "
                           f"{spread['min']:.4g} .. {spread['max']:.4g}"), said
    with pytest.warns(NearConstantWarning, match="its run's training predictions are near constant"):
        model = siqa.load(run / "best.pt", device="cpu")
    assert model.near_constant is True
    pairs = load_database("csv", manifest=tiny_manifest)
    scores = model.score([p.left for p in pairs], [p.right for p in pairs])
    again = prediction_spread(scores, *spread["score_range"])
    assert again["min"] == pytest.approx(spread["min"], rel=1e-5)  # float32 sums, another order
    assert again["max"] == pytest.approx(spread["max"], rel=1e-5)
    folder = tiny_manifest.parent
    pair = (folder / "s1_2_l.png", folder / "s1_2_r.png")
    with pytest.warns(NearConstantWarning):
        assert siqa.load(run, device="cpu").score(*pair) == model.score(*pair)
    predicted = run_entry("predict.py", "--checkpoint", run, "--device", "cpu", *pair)
    assert predicted.returncode == 0, predicted.stderr
    assert predicted.stdout.startswith(f"# one model (tiny, 1 random split): the best.pt of {run}")
    assert "# warning: " in predicted.stdout and "training predictions are near constant" in predicted.stdout

    one_line_error(run_entry("evaluate.py", "--checkpoint", run / "best.pt",
                             f"nss.cache_dir={tmp_path / 'cache'}"), "has no test split")
    again = run_entry("train.py", "--resume", f"out_dir={run}")
    assert again.returncode == 0 and "is finished" in again.stdout, again.stderr
    longer = run_entry("train.py", "--resume", f"out_dir={run}", "train.epochs=3")
    assert longer.returncode == 0, longer.stderr
    assert "after epoch 2" in longer.stdout and "best.pt is epoch 3" in longer.stdout
    assert load_checkpoint(run / "best.pt")["epoch"] == 3


def test_several_splits_without_a_test_are_refused(tiny_manifest, tmp_path):
    proc = run_entry("train.py", *tiny_overrides(tiny_manifest, tmp_path, **{
        "dataset.split": "[0.8,0.2,0]", "train.repeats": 2}))
    one_line_error(proc, "leaves the test part empty", "train.repeats=1")
    assert not (tmp_path / "run").exists()


def fold(best_epoch, near_constant):
    return {"best_epoch": best_epoch, "val": {"spread": {"near_constant": near_constant}}}


LEARNED = {"learned": True, "why": None}


def test_the_epoch_rule_leaves_out_folds_that_had_not_learnt_and_says_so():
    folds = [fold(1, True), fold(12, False), fold(15, False), fold(20, False), fold(1, True)]
    rule = final_fit_epochs(folds, LEARNED)
    assert rule["epochs"] == 15 and rule["near_constant_splits"] == [0, 4]
    assert rule["best_epochs"] == [1, 12, 15, 20, 1]
    assert final_fit_line(rule) == (
        "warning: final fit (docs/usage.md#after-k-fold): train.epochs=15, the median of the "
        "folds' best epochs (1, 12, 15, 20, 1); splits 0, 4 left out (near-constant validation "
        "predictions at their best epoch)")
    even = final_fit_epochs([fold(10, False), fold(13, False)], LEARNED)
    assert even["epochs"] == 12 and not final_fit_line(even).startswith("warning")  # 11.5 up


def test_the_epoch_rule_refuses_folds_that_learned_nothing():
    flat = final_fit_epochs([fold(1, True), fold(1, True)], LEARNED)
    assert flat["epochs"] is None and "every fold's validation predictions" in flat["why"]
    not_learned = {"learned": False, "why": "did not beat the constant predictor (RMSE 30, constant 20)"}
    refused = final_fit_epochs([fold(1, True), fold(14, False), fold(9, False)], not_learned)
    assert refused["epochs"] is None
    assert final_fit_line(refused) == (
        "warning: no epoch count for a final fit: the folds' best epochs (1, 14, 9) say nothing "
        "about how long to train, since the run did not learn: it did not beat the constant "
        "predictor (RMSE 30, constant 20) (docs/usage.md#after-k-fold)")


@pytest.mark.parametrize("spread, learned, mark", [
    ({"min": 36.15, "max": 60.92, "spread": 24.77, "score_range": [0.0, 65.5],
      "fraction": 0.3782, "near_constant": False}, None, "[not judged]"),
    ({"min": 29.0, "max": 29.1, "spread": 0.1, "score_range": [0.0, 64.0],
      "fraction": 0.1 / 64, "near_constant": True}, False, "[non-learner]"),
    ({"min": 3.0, "max": 3.0, "spread": 0.0, "score_range": [5.0, 5.0],
      "fraction": None, "near_constant": None}, None, "[not judged]"),  # equal scores: no rule
])
def test_a_final_fits_verdict_rests_on_its_training_spread(spread, learned, mark):
    """Without test pairs only near-constant training predictions say a run did not learn;
    a spread that is not near constant leaves it unjudged, and says what was measured."""
    from siqa.evaluation.comparison import judge_untested
    from siqa.evaluation.comparison_tables import untested_line

    judged = judge_untested({"test": None, "train": {"spread": spread}})
    assert judged["learned"] is learned and judged["spread"] == spread
    line = untested_line(judged, "this run")
    assert line.startswith(f"{mark} this run ")
    if spread["fraction"] is not None:
        lo, hi = spread["score_range"]
        assert (f"spread {spread['min']:.4g} .. {spread['max']:.4g}, "
                f"{100 * spread['fraction']:.2g} % of the score range {lo:.4g} .. {hi:.4g}") in line
    else:
        assert "spread" not in line
