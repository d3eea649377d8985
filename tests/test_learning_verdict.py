"""The end of a run says whether it learned, with compare.py's verdict and words (the same
functions: siqa.evaluation.comparison.judge): in its last log line and in metrics.json (one
split) or summary.json (several), a non-learner marked `[non-learner]` with why."""
import csv
import json
import shutil

import pytest

from conftest import tiny_overrides
from siqa import config as config_mod
from siqa.evaluation.comparison import compare, judge, load_run, per_distortion
from siqa.evaluation.comparison_tables import judgement_line, leaderboard_table, per_distortion_lines
from siqa.files import read_json
from siqa.training import run as runner
from siqa.training.distributed import Dist


@pytest.fixture(scope="module")
def one_epoch_run(tiny_manifest, tmp_path_factory, one_torch_thread):
    """One split, one epoch of the paper's recipe (reference normalisation: predictions
    near constant, a network that has not learnt): (run folder, its log lines)."""
    work = tmp_path_factory.mktemp("verdict")
    cfg = config_mod.load_config(overrides=tiny_overrides(
        tiny_manifest, work, **{"train.epochs": 1, "train.keep_last": False}))
    lines = []
    runner.train(cfg, dist=Dist(), progress=False, log=lines.append)
    return work / "run", lines


def verdict(judged):
    return {"learned": judged["learned"], "why": judged["why"]}


def test_a_run_that_learned_nothing_says_so_as_compare_does(one_epoch_run):
    run, lines = one_epoch_run
    learning = read_json(run / "metrics.json")["learning"]
    assert learning["learned"] is False
    assert learning["why"].startswith("did not beat the constant predictor (RMSE ")
    assert learning["rmse"] > learning["constant_rmse"]
    assert lines[-1] == judgement_line(learning, "this run")
    assert lines[-1].startswith(f"[non-learner] this run {learning['why']}: judged on its one "
                                "split's test against the constant at the mean of the validation "
                                "scores")
    # before it, the test's per-distortion table: metrics.json's per_distortion, as printed
    table = per_distortion(load_run(run))
    test = read_json(run / "metrics.json")["test"]["per_distortion"]
    assert table["source"] == "its one split's test" and set(table["groups"]) == set(test)
    assert all(table["groups"][d]["srocc"] == g["srocc"] and table["groups"][d]["pairs"] == g["n"]
               for d, g in test.items())
    shown = per_distortion_lines(table)
    assert lines[-1 - len(shown):-1] == shown
    result = compare([load_run(run, "a"), load_run(run, "b")])  # compare.py on the same folder
    assert verdict(result["runs"][0]) == verdict(learning)
    assert f"[non-learner] a {learning['why']}: no winner is called against it." in \
        leaderboard_table(result)


def learned_copy(run, folder):
    """The run's files with its test predictions replaced by the scores plus 0.5, and its
    metrics.json's test SROCC and RMSE by theirs: a run that ranks every pair right."""
    folder.mkdir()
    for name in ("splits.json", "config.yaml"):
        shutil.copy(run / name, folder / name)
    with open(run / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        if row["split"] == "test":
            row["prediction"] = repr(float(row["score"]) + 0.5)
    with open(folder / "predictions.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    metrics = read_json(run / "metrics.json")
    metrics["test"].update(srocc=1.0, rmse=0.5)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def test_a_run_that_learned_says_so_in_the_same_measures(one_epoch_run, tmp_path):
    run, _ = one_epoch_run
    good = learned_copy(run, tmp_path / "good")
    judged = judge(load_run(good))
    assert judged["learned"] is True and judged["why"] is None
    assert judged["rmse"] == 0.5 and judged["constant_rmse"] == read_json(
        run / "metrics.json")["learning"]["constant_rmse"]
    assert judgement_line(judged, "this run").startswith(
        f"[learned] this run beat the constant predictor (RMSE 0.5, constant "
        f"{judged['constant_rmse']:.4g}) and has an SROCC of 1.000, above 0 (no interval): ")
    result = compare([load_run(good, "good"), load_run(run, "bad")])
    assert [verdict(r) for r in result["runs"]] == [verdict(judged), verdict(
        read_json(run / "metrics.json")["learning"])]
