"""compare.py on two real tiny runs (train.repeats=2, one epoch), the second trained with
dataset.split_file of the first; the protocol card and the intervals they write."""
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import make_tiny_database, run_entry, tiny_overrides
from siqa.checkpoint import load_checkpoint
from siqa.data.splits import content_splits, split_document, write_split_file
from siqa.errors import UserError
from siqa.evaluation.comparison import Run, compare, load_run
from siqa.evaluation.comparison_tables import tables
from siqa.evaluation.stats import holm, pitman_morgan, wilcoxon_signed_rank


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    work = tmp_path_factory.mktemp("compare")
    manifest = make_tiny_database(work / "db", scenes=10)
    common = {"train.epochs": 1, "train.repeats": 2}
    a = run_entry("train.py", *tiny_overrides(manifest, work, **common, out_dir=work / "a",
                                              **{"dataset.split": "[0.4,0.2,0.4]"}))
    assert a.returncode == 0, a.stderr
    b = run_entry("train.py", *tiny_overrides(  # the file's splits: no dataset.split (no effect)
        manifest, work, **{**common, "train.seed": 7, "train.nss_weight": 0,
                           "dataset.split_file": work / "a" / "splits.json"}, out_dir=work / "b"))
    assert b.returncode == 0, b.stderr
    return work


def names_in_order(path):
    with open(path, newline="") as f:
        return [(r["split"], r["name"]) for r in csv.DictReader(f)]


def test_split_file_run_trains_on_identical_splits(runs):
    a, b = runs / "a", runs / "b"
    doc_a, doc_b = (json.loads((d / "splits.json").read_text()) for d in (a, b))
    assert doc_b["splits"] == doc_a["splits"] and doc_b["pairs_sha256"] == doc_a["pairs_sha256"]
    assert doc_b["seed"] == 0  # the file's seed, not train.seed=7
    for r in range(2):
        sa = load_checkpoint(a / f"split_{r}" / "last.pt")["split"]
        sb = load_checkpoint(b / f"split_{r}" / "last.pt")["split"]
        assert sa == sb  # pair names of train/val/test, in order
        assert names_in_order(a / f"split_{r}" / "predictions.csv") == \
            names_in_order(b / f"split_{r}" / "predictions.csv")
    assert doc_a["splits"][0] != doc_a["splits"][1]


def test_runs_carry_protocol_cards_and_intervals(runs):
    for d in ("a", "b"):
        metrics = json.loads((runs / d / "split_1" / "metrics.json").read_text())
        card = metrics["protocol"]
        assert card["selection"] == "best validation SROCC, test evaluated once"
        assert card["splits"]["index"] == 1 and card["splits"]["count"] == 2
        assert card["config"]["train"]["epochs"] == 1 and len(card["config_sha256"]) == 64
        assert set(card["versions"]) >= {"torch", "numpy", "scipy"}
        assert card["logistic"]["mapping"] in ("logistic", "linear", "constant")
        assert card["wall_time_s"] > 0 and card["device"].startswith("cpu")
        test = metrics["test"]
        assert set(test["ci95"]) == {"srocc", "krocc", "plcc", "rmse"}
        assert test["bootstrap"]["scenes"] == 4 and test["bootstrap"]["resamples"] >= 1000
        # 4 test scenes: below the scene count where the interval means something
        assert all(v == [None, None] for v in test["ci95"].values())
        assert test["ci95_note"].startswith("4 scene(s), no interval")
        assert len(test["per_scene"]) == 4
        assert sum(v["pairs"] for v in test["per_scene"].values()) == metrics["pairs"]["test"]
        low, high = test["ci95_pair_level"]["rmse"]
        assert low <= test["rmse"] <= high
        summary = json.loads((runs / d / "summary.json").read_text())
        assert summary["protocol"]["splits"]["index"] is None
        assert summary["srocc"]["min"] <= summary["srocc"]["median"] <= summary["srocc"]["max"]
    card_b = json.loads((runs / "b" / "summary.json").read_text())["protocol"]
    assert card_b["splits"]["file"].endswith("splits.json") and len(card_b["splits"]["file_sha256"]) == 64
    card_a = json.loads((runs / "a" / "summary.json").read_text())["protocol"]
    assert card_a["splits"]["document_sha256"] == card_b["splits"]["document_sha256"]


def test_compare_markdown_latex_and_statistics(runs, tmp_path):
    proc = run_entry("compare.py", runs / "a", runs / "b", "--label", "nss25", "--label", "nss0",
                     "--json", tmp_path / "c.json")
    assert proc.returncode == 0, proc.stderr
    assert "| SROCC |" in proc.stdout and "Wilcoxon" in proc.stdout and "Pitman-Morgan" in proc.stdout
    assert "2/2^2 = 0.5: no difference across splits can be significant" in proc.stdout
    result = json.loads((tmp_path / "c.json").read_text())
    got = result["comparisons"][0]
    # two splits: below the 3 a test across splits needs (Wilcoxon p >= 0.5, t with 1 df);
    # the Pitman-Morgan test of split 0 recomputed here
    assert got["metrics"]["srocc"]["pvalue"] is None and got["metrics"]["srocc"]["winner"] is None
    assert got["metrics"]["srocc"]["n"] == 2 and "too few splits to test (2)" in proc.stdout
    from siqa.evaluation.metrics import fit_logistic

    res = {}
    for d in ("a", "b"):
        with open(runs / d / "split_0" / "predictions.csv") as f:
            rows = sorted((r["name"], float(r["score"]), float(r["prediction"]))
                          for r in csv.DictReader(f) if r["split"] == "test")
        y, x = np.array([r[1] for r in rows]), np.array([r[2] for r in rows])
        res[d] = y - fit_logistic(x, y)(x)
    v0 = pitman_morgan(res["b"], res["a"])
    if np.isnan(v0.statistic):  # both maps flat (1-epoch runs that rank backwards): equal residuals
        assert got["variance_tests"][0]["t"] is None and got["variance_tests"][0]["pvalue"] is None
    else:
        assert got["variance_tests"][0]["t"] == pytest.approx(v0.statistic)
        assert got["variance_tests"][0]["pvalue"] == pytest.approx(v0.pvalue)
    raw = [t["pvalue"] for t in got["variance_tests"]]
    adjusted = [t["pvalue_holm"] for t in got["variance_tests"]]
    known = [i for i, p in enumerate(raw) if p is not None]  # Holm over the tests that ran
    assert [adjusted[i] for i in known] == pytest.approx(list(holm([raw[i] for i in known])))
    assert all(adjusted[i] is None for i in range(len(raw)) if i not in known)
    # the corrected resampled t-test: n_test / n_train from the runs' own pair counts
    counts = [json.loads((runs / "a" / f"split_{r}" / "metrics.json").read_text())["pairs"]
              for r in range(2)]
    ratio = np.mean([c["test"] / c["train"] for c in counts])
    assert result["test_train_ratio"] == pytest.approx(ratio)
    assert got["corrected_t"]["srocc"]["pvalue"] is None and got["corrected_t"]["srocc"]["df"] is None
    assert "Nadeau-Bengio" in proc.stdout
    latex = run_entry("compare.py", runs / "a", runs / "b", "--latex", "--metric", "srcc")
    assert latex.returncode == 0 and r"\begin{tabular}" in latex.stdout
    assert "KROCC" not in latex.stdout  # --metric with the alias srcc kept SROCC only


def test_compare_refuses_runs_on_other_splits(runs, tmp_path):
    other = tmp_path / "c"
    shutil.copytree(runs / "a", other)
    doc = json.loads((other / "splits.json").read_text())
    from siqa.data.databases.csv_manifest import load_csv

    pairs = load_csv(runs / "db" / "manifest.csv")
    seeded = content_splits(pairs, ratios=(0.4, 0.2, 0.4), seed=1, repeats=2)
    write_split_file(other / "splits.json", split_document(pairs, seeded, "csv", 1, doc["ratios"]))
    proc = run_entry("compare.py", runs / "a", other)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:") and len(proc.stderr.strip().splitlines()) == 1
    assert "differ in split 0" in proc.stderr and "dataset.split_file" in proc.stderr
    bad = run_entry("compare.py", runs / "a", runs / "b", "--metric", "accuracy")
    assert bad.returncode == 2 and "unknown metric" in bad.stderr
    with pytest.raises(Exception, match="different pair lists|differ"):
        compare([load_run(runs / "a"), load_run(other)])


def synthetic_runs(values_a, values_b, metric="srocc", pairs=8, seed=0):
    """Two Run objects on the same made-up splits: per-split test values of one metric and
    test predictions (so that the per-split variance tests run too)."""
    rng = np.random.default_rng(seed)
    doc = {"database": "toy", "pairs_sha256": "0" * 64,
           "splits": [{"train": ["a"], "val": ["b"], "test": ["c"]}] * len(values_a)}
    runs = []
    for label, values, noise in (("base", values_a, 5.0), ("other", values_b, 5.0)):
        preds = []
        for r in range(len(values)):
            y = np.linspace(0, 60, pairs)
            x = y + rng.normal(0, noise, pairs)
            preds.append({f"p{i}": (float(y[i]), float(x[i])) for i in range(pairs)})
        runs.append(Run(Path(label), label, doc, [{metric: v} for v in values], preds))
    return runs


def test_winner_by_the_sign_of_the_rank_sums_with_eleven_zero_differences():
    """11 splits tie, 9 favour the other run: Wilcoxon p = 2/2^9 = 0.0039 and the other run
    wins, although the median of the 20 differences is 0 (the former rule named the
    baseline). Holm over one metric leaves p unchanged."""
    a = np.full(20, 0.80)
    b = np.r_[np.full(11, 0.80), 0.80 + np.arange(1, 10) * 0.01]
    result = compare(synthetic_runs(a, b), metrics=["srocc"])
    cell = result["comparisons"][0]["metrics"]["srocc"]
    assert cell["median_difference"] == 0.0
    assert round(cell["pvalue"], 4) == 0.0039 and cell["pvalue_holm"] == cell["pvalue"]
    assert cell["winner"] == "other" and cell["better_on"] == 9 and cell["worse_on"] == 0
    # lower is better for RMSE: the same numbers make the baseline the winner
    rmse = compare(synthetic_runs(a, b, metric="rmse"), metrics=["rmse"])
    assert rmse["comparisons"][0]["metrics"]["rmse"]["winner"] == "base"
    assert result["min_wilcoxon_pvalue"] == pytest.approx(2 / 2 ** 20)


def test_holm_over_metrics_removes_a_star_that_raw_p_would_give():
    """Six metrics; one with raw p = 0.0313 (2/2^6, 6 splits all one way) and five with
    p >= 0.4: Holm multiplies the smallest by 6 -> 0.19, no winner; alone it would be one."""
    a = np.linspace(0.70, 0.80, 6)
    strong = a + 0.01
    metrics = ["srocc", "krocc", "plcc", "plcc_logistic", "rmse", "rmse_logistic"]
    runs = synthetic_runs(a, strong, metric="srocc")
    flip = np.array([1, -1, 1, -1, 1, -1]) * 0.01
    for base_t, other_t in zip(runs[0].tests, runs[1].tests):
        for m in metrics[1:]:
            base_t[m] = 0.5
    for r, other_t in enumerate(runs[1].tests):
        for m in metrics[1:]:
            other_t[m] = 0.5 + flip[r] * (r + 1)
    result = compare(runs, metrics=metrics)
    cell = result["comparisons"][0]["metrics"]["srocc"]
    assert cell["pvalue"] == pytest.approx(2 / 2 ** 6)
    assert cell["pvalue_holm"] == pytest.approx(6 * 2 / 2 ** 6) and cell["winner"] is None
    alone = compare(runs, metrics=["srocc"])["comparisons"][0]["metrics"]["srocc"]
    assert alone["winner"] == "other"
    text = tables(result)
    assert "Holm" in text and "2/2^6 = 0.0312" in text


def test_one_split_table_says_no_interval_instead_of_na_percent():
    runs = synthetic_runs([0.8], [0.9])
    text = tables(compare(runs, metrics=["srocc"]))
    assert "n/a %" not in text and "one split: no interval of the median" in text
    assert "2/2^1 = 1: no difference across splits can be significant" in text


def toy_kfold(seed, per_scene, splits, name):
    """8 scenes of `per_scene` pairs with uniform scores, and the split document of a 2-fold
    design with `splits` splits; returns (rng, scenes, scores, pair names, document)."""
    rng = np.random.default_rng(seed)
    scenes = np.repeat([f"s{i}" for i in range(8)], per_scene)
    y = rng.uniform(0, 60, scenes.size)
    names = [name.format(i) for i in range(scenes.size)]
    doc = {"database": "toy", "pairs_sha256": "0" * 64, "folds": 2,
           "splits": [{"train": ["a"], "val": ["b"], "test": ["c"]}] * splits}
    return rng, scenes, y, names, doc


def test_kfold_runs_get_the_paired_scene_test_on_pooled_predictions():
    """Two k-fold runs (2 folds x 2 repetitions) of 8 scenes: the pooled out-of-fold
    predictions (mean over the repetitions) go through the paired scene permutation test,
    Holm over SROCC, PLCC and RMSE; the better run wins by the sign of the difference."""
    from siqa.evaluation.stats import paired_scene_test

    rng, scenes, y, names, doc = toy_kfold(seed=5, per_scene=6, splits=4, name="p{}")
    half = [set(names[:24]), set(names[24:])]
    runs, pooled = [], {}
    for label, noise in (("base", 15.0), ("other", 3.0)):
        preds, per_rep = [], []
        for rep in range(2):
            x = y + rng.normal(0, noise, y.size)
            per_rep.append(x)
            for fold in range(2):
                preds.append({n: (float(y[i]), float(x[i]), str(scenes[i]))
                              for i, n in enumerate(names) if n in half[fold]})
        runs.append(Run(Path(label), label, doc, [{"srocc": 0.5}] * 4, preds))
        pooled[label] = np.mean(per_rep, axis=0)
    result = compare(runs, metrics=["srocc"])
    tests = result["comparisons"][0]["scene_tests"]
    order = np.argsort(names)
    want = paired_scene_test(pooled["base"][order], pooled["other"][order], y[order],
                             scenes[order], "srocc")
    assert tests["srocc"]["pvalue"] == pytest.approx(want.pvalue)
    assert tests["srocc"]["difference"] == pytest.approx(want.statistic)
    assert tests["srocc"]["scenes"] == 8 and tests["srocc"]["method"] == "exact"
    assert tests["srocc"]["pvalue"] == pytest.approx(2 / 2 ** 8)  # every swap is worse
    assert tests["rmse"]["winner"] == "other" and tests["srocc"]["winner"] == "other"
    assert [t["pvalue_holm"] for t in tests.values()] == pytest.approx(
        list(holm([t["pvalue"] for t in tests.values()])))
    assert "paired scene permutation test" in tables(result)


# ------------------------------------------------------------------- N runs, leaderboard
def three_runs(values, metric="srocc", seed=0):
    """synthetic_runs for several runs: {label: per-split values}, the first the reference."""
    labels = list(values)
    runs = synthetic_runs(values[labels[0]], values[labels[1]], metric=metric, seed=seed)
    for label in labels[2:]:
        extra = synthetic_runs(values[labels[0]], values[label], metric=metric, seed=seed + 1)[1]
        runs.append(Run(Path(label), label, extra.splits, extra.tests, extra.predictions))
    for run, label in zip(runs, labels):
        run.label, run.folder = label, Path(label)
    return runs


def test_holm_over_the_comparisons_with_the_reference():
    """6 splits, two runs each better than the reference on every split: raw Wilcoxon
    p = 2/2^6 each; alone either is a winner, together Holm doubles the smaller: none is."""
    a = np.linspace(0.70, 0.80, 6)
    runs = three_runs({"ref": a, "x": a + 0.01, "y": a + 0.02})
    two = compare(runs[:2], metrics=["srocc"])["comparisons"][0]["metrics"]["srocc"]
    assert two["pvalue_holm"] == pytest.approx(2 / 2 ** 6) and two["winner"] == "x"
    result = compare(runs, metrics=["srocc"])
    cells = [c["metrics"]["srocc"] for c in result["comparisons"]]
    assert [c["pvalue"] for c in cells] == pytest.approx([2 / 2 ** 6] * 2)
    assert [c["pvalue_holm"] for c in cells] == pytest.approx([4 / 2 ** 6] * 2)
    assert [c["winner"] for c in cells] == [None, None]
    assert [c["baseline"] for c in result["comparisons"]] == ["ref", "ref"]
    # Holm over metrics x comparisons: one family, recomputed here
    metrics = ["srocc", "plcc"]
    for run in runs:
        for r, t in enumerate(run.tests):
            t["plcc"] = 0.5 + 0.01 * r * (run.label != "ref")
    result = compare(runs, metrics=metrics)
    raw = [c["metrics"][m]["pvalue"] for c in result["comparisons"] for m in metrics]
    got = [c["metrics"][m]["pvalue_holm"] for c in result["comparisons"] for m in metrics]
    assert got == pytest.approx(list(holm(raw)))


def test_reference_leaderboard_and_its_files(tmp_path):
    """--reference names the run the others are tested against; the leaderboard ranks the
    runs best first with their medians and intervals, and goes to CSV and Markdown."""
    import csv as csv_mod

    from siqa.evaluation.comparison_tables import write_outputs

    a = np.linspace(0.70, 0.80, 8)
    runs = three_runs({"ref": a, "x": a + 0.05, "y": a - 0.05})
    result = compare(runs, metrics=["srocc"], reference="y")
    assert result["reference"] == "y"
    assert [c["label"] for c in result["comparisons"]] == ["ref", "x"]
    assert all(c["baseline"] == "y" for c in result["comparisons"])
    board = result["leaderboard"]
    assert [r["run"] for r in board] == ["x", "ref", "y", "constant (score mean)"]
    assert [r["rank"] for r in board] == [1, 2, 3, None]
    # made-up runs record no training or validation scores: no constant predictor to judge by
    assert board[3]["metrics"]["srocc"]["value"] is None and all(r["learned"] for r in board[:3])
    assert board[0]["metrics"]["srocc"]["value"] == pytest.approx(np.median(a + 0.05))
    assert board[0]["metrics"]["srocc"]["winner"] == "x"  # 8 splits all better: p = 2/2^8, Holm x2
    assert board[2]["reference"] and "winner" not in board[2]["metrics"]["srocc"]
    with pytest.raises(Exception, match="--reference z"):
        compare(runs, metrics=["srocc"], reference="z")
    paths = write_outputs(tmp_path, result)
    assert [p.name for p in paths] == ["leaderboard.csv", "leaderboard.md", "comparison.md",
                                       "comparison.json"]
    with open(tmp_path / "leaderboard.csv", newline="") as f:
        rows = list(csv_mod.DictReader(f))
    assert [(r["run"], r["rank"], r["metric"]) for r in rows] == [
        ("x", "1", "srocc"), ("ref", "2", "srocc"), ("y", "3", "srocc"),
        ("constant (score mean)", "", "srocc")]
    assert rows[3]["value"] == "" and rows[3]["learned"] == "" and rows[0]["learned"] == "1"
    low, high = board[0]["metrics"]["srocc"]["ci"]
    assert float(rows[0]["value"]) == board[0]["metrics"]["srocc"]["value"]
    assert (float(rows[0]["ci_low"]), float(rows[0]["ci_high"])) == (low, high)
    assert rows[0]["winner"] == "x" and rows[2]["reference"] == "1" and rows[2]["pvalue_holm"] == ""
    md = (tmp_path / "leaderboard.md").read_text()
    assert md.startswith("| rank | run | SROCC |") and "| 3 | y (reference) |" in md
    assert "*" in md.splitlines()[2]  # x: a significant winner


def test_n_runs_refused_in_one_line_when_one_differs_in_its_splits():
    a = np.linspace(0.70, 0.80, 4)
    runs = three_runs({"ref": a, "x": a, "y": a})
    runs[2].splits = {**runs[2].splits, "splits": [{"train": ["a"], "val": ["c"], "test": ["b"]}] * 4}
    with pytest.raises(Exception, match="runs ref and y differ in split 0") as err:
        compare(runs, metrics=["srocc"])
    assert "\n" not in str(err.value)


def test_kfold_leaderboard_gives_the_pooled_out_of_fold_metrics():
    from siqa.evaluation.metrics import evaluate_scores

    rng, scenes, y, names, doc = toy_kfold(seed=3, per_scene=4, splits=2, name="p{:02d}")
    runs, preds = [], {}
    for label, noise in (("base", 20.0), ("other", 2.0)):
        x = y + rng.normal(0, noise, y.size)
        preds[label] = x
        folds = [{n: (float(y[i]), float(x[i]), str(scenes[i])) for i, n in enumerate(names)
                  if (i < 16) == (f == 0)} for f in range(2)]
        runs.append(Run(Path(label), label, doc, [{"srocc": 0.1}, {"srocc": 0.2}], folds))
    board = compare(runs, metrics=["srocc", "rmse"])["leaderboard"]
    assert [r["run"] for r in board] == ["other", "base", "constant (score mean)"]
    want = evaluate_scores(preds["other"], y)
    cell = board[0]["metrics"]["srocc"]
    assert cell["value"] == pytest.approx(want["srocc"]) and cell["value"] != 0.2
    assert cell["ci"][0] <= cell["value"] <= cell["ci"][1]  # 8 scenes: a scene-bootstrap interval
    assert cell["test"] == "scene permutation" and "pooled out-of-fold" in board[0]["source"]


def test_compare_cli_with_three_runs_writes_the_leaderboard(runs, tmp_path):
    proc = run_entry("compare.py", runs / "a", runs / "b", runs / "a", "--label", "A",
                     "--label", "B", "--label", "A2", "--reference", "B", "--out", tmp_path / "cmp",
                     "--per-distortion")
    assert proc.returncode == 0, proc.stderr
    assert "| rank | run | SROCC |" in proc.stdout and "B (reference)" in proc.stdout
    assert "| distortion | pairs |" in proc.stdout  # --per-distortion
    assert "Per distortion, SROCC" in (tmp_path / "cmp" / "comparison.md").read_text()
    assert "A vs B" in proc.stdout and "A2 vs B" in proc.stdout
    assert "2 comparison(s) with B" in proc.stdout
    result = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert len(result["comparisons"]) == 2 and result["reference"] == "B"
    assert (tmp_path / "cmp" / "leaderboard.csv").read_text().startswith("rank,run,reference,")
    same = run_entry("compare.py", runs / "a", runs / "a")
    assert same.returncode == 2 and "labelled 'a'" in same.stderr


# ------------------------------------------- runs written as files on a generated database
def generated_pairs(folder, scenes=10, levels=4, mos=False):
    """The pairs of a generated database (make_tiny_database), read by the CSV loader; with
    mos=True the same images and names scored 100 - DMOS (higher_is_better=true)."""
    from siqa.data.databases.csv_manifest import load_csv

    manifest = folder / "manifest.csv"
    if not manifest.is_file():
        make_tiny_database(folder, scenes=scenes, levels=levels)
    if not mos:
        return load_csv(manifest)
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row.update(score=repr(100.0 - float(row["score"])), higher_is_better="true")
    flipped = folder / "manifest_mos.csv"
    with open(flipped, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return load_csv(flipped)


def write_kfold_run(folder, pairs, predict, folds=5):
    """A finished k-fold run folder as train.py writes it (splits.json; per split its
    predictions.csv of the val and test pairs and metrics.json with the test report),
    the predictions made by predict(score array, rng) instead of a network."""
    from siqa.data.splits import KFOLD_DESIGN, kfold_splits
    from siqa.evaluation.reports import predictions_csv, score_report, write_json

    splits = kfold_splits(pairs, folds=folds, repetitions=1, seed=0)
    folder.mkdir(parents=True)
    write_split_file(folder / "splits.json", split_document(
        pairs, splits, "csv", 0, [0.6, 0.2, 0.2], design=KFOLD_DESIGN, folds=folds))
    rng = np.random.default_rng(len(folder.name))
    pred = predict(np.array([p.score for p in pairs]), rng)
    for r, split in enumerate(splits):
        d = folder / f"split_{r}"
        d.mkdir()
        val, test = list(split["val"]), list(split["test"])
        split_of = {pairs[i].name: part for part, idx in (("val", val), ("test", test)) for i in idx}
        text = predictions_csv([pairs[i] for i in val + test], pred[val + test], split_of)
        (d / "predictions.csv").write_text(text)
        write_json(d / "metrics.json", {"test": score_report([pairs[i] for i in test], pred[test])})
    return folder


def test_runs_trained_on_other_labels_are_refused(tmp_path):
    """The same images and names scored as DMOS and as 100 - DMOS (MOS) give the same split
    file; the scores the runs recorded for their test pairs differ, and compare.py refuses
    them in one line naming both folders and a pair (ranked, the MOS run would be scored
    against its own labels and scene-tested against the DMOS ones)."""
    dmos = generated_pairs(tmp_path / "db")
    mos = generated_pairs(tmp_path / "db", mos=True)
    assert [p.name for p in dmos] == [p.name for p in mos] and dmos[0].score != mos[0].score
    a = write_kfold_run(tmp_path / "dmos", dmos, lambda y, rng: y + rng.normal(0, 3, y.size))
    b = write_kfold_run(tmp_path / "mos", mos, lambda y, rng: y + rng.normal(0, 3, y.size))
    with pytest.raises(UserError, match="different scores") as err:
        compare([load_run(a), load_run(b)])
    assert str(a) in str(err.value) and str(b) in str(err.value) and "\n" not in str(err.value)
    proc = run_entry("compare.py", a, b)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    pair = proc.stderr.split("test pair ")[1].split()[0]
    assert pair in {p.name for p in dmos}


def test_runs_with_other_fold_counts_are_told_the_setting_that_differs():
    """5 folds against 3 folds: the message names protocol.folds, not train.repeats (and
    the design, for k-fold against random splits)."""
    runs = synthetic_runs(np.linspace(0.7, 0.8, 5), np.linspace(0.7, 0.8, 5))
    runs[0].splits = {**runs[0].splits, "folds": 5}
    runs[1].splits = {**runs[1].splits, "folds": 3, "splits": runs[1].splits["splits"][:3]}
    runs[1].tests, runs[1].predictions = runs[1].tests[:3], runs[1].predictions[:3]
    with pytest.raises(UserError) as err:
        compare(runs, metrics=["srocc"])
    message = str(err.value)
    assert "protocol.folds=5" in message and "protocol.folds=3" in message
    assert "train.repeats" not in message and "\n" not in message
    runs[1].splits = {k: v for k, v in runs[1].splits.items() if k != "folds"}
    with pytest.raises(UserError, match=r"protocol.folds=5\) vs random splits \(protocol.design"):
        compare(runs, metrics=["srocc"])


# ------------------------------------------------ runs that learned nothing, the constant row
def noise_around_the_mean(y, rng):
    """Predictions that know nothing of the scores: the mean plus noise of their spread."""
    return y.mean() + rng.normal(0, y.std(), y.size)


def test_runs_that_learned_nothing_are_marked_and_never_win(tmp_path):
    """Three k-fold runs predicting noise around the mean: the leaderboard carries the
    constant predictor, every run is marked a non-learner (in the tables, the CSV and the
    JSON), no cell gets a * and no comparison names a winner; a run that learned, tested
    against one of them, is not called a winner either (its scene test would name it)."""
    from siqa.evaluation.comparison_tables import leaderboard_table, write_outputs

    pairs = generated_pairs(tmp_path / "db")
    noise = [load_run(write_kfold_run(tmp_path / name, pairs, noise_around_the_mean))
             for name in ("n1", "n22", "n333")]  # the folder name seeds the noise
    result = compare(noise)
    board = result["leaderboard"]
    assert board[-1]["run"] == "constant (score mean)" and board[-1]["rank"] is None
    assert [r["rank"] for r in board] == [None] * 4  # no non-learner reads as a rank
    assert board[-1]["metrics"]["srocc"]["value"] is None
    assert board[-1]["metrics"]["rmse"]["value"] == pytest.approx(result["constant_baseline"]["rmse"])
    assert [r["learned"] for r in result["runs"]] == [False] * 3
    for r in result["runs"]:
        assert "constant predictor" in r["why"] or "includes 0" in r["why"]
    text = tables(result)
    cells = [line for line in text.splitlines() if line.startswith("|")]
    assert not any(" *" in line for line in cells) and "**" not in text
    assert text.count("[non-learner] n") == 3  # the footnotes under the leaderboard
    assert all(f"| — | n{i} [non-learner]" in text or f"| — | n{i} (reference) [non-learner]"
               in text for i in ("1", "22", "333"))
    assert "| — | constant (score mean) | — | — | — |" in text
    winners = [t["winner"] for c in result["comparisons"]
               for t in [*c["metrics"].values(), *c["variance_tests"], *c["scene_tests"].values()]]
    assert winners and set(winners) == {None}
    assert all(c["not_tested"] for c in result["comparisons"])
    assert "n22 vs n1: not tested: n22 " in text
    write_outputs(tmp_path / "out", result)
    saved = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert [(r["learned"], bool(r["why"])) for r in saved["runs"]] == [(False, True)] * 3
    with open(tmp_path / "out" / "leaderboard.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    constant = [r for r in rows if r["run"] == "constant (score mean)"]
    assert {r["metric"]: r["value"] for r in constant}["srocc"] == ""
    assert float({r["metric"]: r["value"] for r in constant}["rmse"]) == pytest.approx(
        result["constant_baseline"]["rmse"])
    assert {r["learned"] for r in rows if r["run"] != "constant (score mean)"} == {"0"}
    assert "constant (score mean)" in leaderboard_table(result, latex=True)
    # a run that learned against one that did not: the scene test alone would call it
    good = load_run(write_kfold_run(tmp_path / "good", pairs, lambda y, rng: y + rng.normal(0, 2, y.size)))
    mixed = compare([noise[0], good])
    assert [r["learned"] for r in mixed["runs"]] == [False, True]
    # the run that learned is ranked first and alone, whatever the non-learner's SROCC
    assert [(r["run"], r["rank"]) for r in mixed["leaderboard"]] == [
        ("good", 1), ("n1", None), ("constant (score mean)", None)]
    # a non-learner with the best SROCC (every pair ranked right, 100 off the scale: it does
    # not beat the constant predictor) still comes after the run that learned, unranked
    offset = load_run(write_kfold_run(tmp_path / "offset", pairs, lambda y, rng: y + 100.0))
    ordered = compare([good, offset])
    assert [r["learned"] for r in ordered["runs"]] == [True, False]
    assert ordered["leaderboard"][1]["metrics"]["srocc"]["value"] > \
        ordered["leaderboard"][0]["metrics"]["srocc"]["value"]
    assert [(r["run"], r["rank"]) for r in ordered["leaderboard"]][:2] == [("good", 1), ("offset", None)]
    scene = mixed["comparisons"][0]["scene_tests"]["rmse"]
    assert scene["pvalue_holm"] < 0.05 and scene["winner"] is None
    assert mixed["comparisons"][0]["not_tested"].startswith("n1 ")
    cells = [line for line in tables(mixed).splitlines() if line.startswith("|")]
    assert not any(" *" in line for line in cells)
    assert any("| good |" in line for line in cells)  # the run that learned: no marker


def test_constant_baseline_rmse_is_the_training_mean_scored_on_the_test_pairs(tmp_path):
    """Recomputed from the files: each fold's test pairs (its predictions.csv) predicted by
    the mean score of its training scenes (from the manifest), pooled over the 5 folds;
    without the split file's pair counts, the mean of each fold's validation rows."""
    from siqa.evaluation.comparison import constant_baseline

    pairs = generated_pairs(tmp_path / "db")
    folder = write_kfold_run(tmp_path / "run", pairs, noise_around_the_mean)
    doc = json.loads((folder / "splits.json").read_text())
    errors, val_errors = [], []
    for r, split in enumerate(doc["splits"]):
        train = [p.score for p in pairs if p.content in split["train"]]
        with open(folder / f"split_{r}" / "predictions.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        val = np.mean([float(row["score"]) for row in rows if row["split"] == "val"])
        test = [float(row["score"]) for row in rows if row["split"] == "test"]
        errors += [np.mean(train) - y for y in test]
        val_errors += [val - y for y in test]
    want = np.sqrt(np.mean(np.square(errors)))
    result = compare([load_run(folder), load_run(folder, "again")], metrics=["rmse"])
    assert result["constant_baseline"]["rmse"] == pytest.approx(want, rel=1e-12)
    assert result["constant_baseline"]["mean_of"] == "the training scores of each split"
    assert result["leaderboard"][-1]["metrics"]["rmse"]["value"] == pytest.approx(want, rel=1e-12)
    run = load_run(folder)
    run.splits = {k: v for k, v in run.splits.items() if k != "scenes"}
    fallback = constant_baseline(run)
    assert fallback["rmse"] == pytest.approx(np.sqrt(np.mean(np.square(val_errors))), rel=1e-12)
    assert fallback["mean_of"].startswith("the validation scores")
    assert fallback["rmse"] != pytest.approx(want)


# -------------------------------------------------------- splits dropped, too few to test
def test_splits_without_a_value_are_counted_and_too_few_are_not_tested():
    """PLCC after the logistic undefined in 2 of 5 splits of one run: 3 of 5 splits tested,
    the dropped ones named; with 3 undefined, 2 remain and neither the Wilcoxon nor the
    corrected t-test runs (it would have had 1 degree of freedom)."""
    values = np.linspace(0.70, 0.80, 5)
    runs = synthetic_runs(values, values + 0.02, metric="plcc_logistic")
    doc = {**runs[0].splits, "scenes": {"a": {"pairs": 24}, "b": {"pairs": 8}, "c": {"pairs": 8}}}
    for run in runs:
        run.splits = doc
    for r in (1, 3):
        runs[1].tests[r]["plcc_logistic"] = None
    result = compare(runs, metrics=["plcc_logistic"])
    cell = result["comparisons"][0]["metrics"]["plcc_logistic"]
    assert (cell["n"], cell["splits"], cell["dropped"]["count"]) == (3, 5, 2)
    assert cell["pvalue"] == pytest.approx(wilcoxon_signed_rank(values[[0, 2, 4]],
                                                                values[[0, 2, 4]] + 0.02).pvalue)
    assert ("3 of 5 splits (2 dropped: PLCC (logistic) undefined in other (splits 1, 3))"
            in tables(result))
    runs[0].tests[0]["plcc_logistic"] = None
    result = compare(runs, metrics=["plcc_logistic"])
    comp = result["comparisons"][0]
    cell, t = comp["metrics"]["plcc_logistic"], comp["corrected_t"]["plcc_logistic"]
    assert cell["n"] == 2 and cell["pvalue"] is None and cell["winner"] is None
    assert t["pvalue"] is None and t["df"] is None
    text = tables(result)
    assert text.count("too few splits to test (2)") == 2  # the Wilcoxon and the t-test rows
    assert "undefined in base (split 0); PLCC (logistic) undefined in other (splits 1, 3)" in text


def test_a_single_split_gives_a_description_not_a_verdict():
    """One split where one run's residuals vary far less (Pitman-Morgan p tiny): the table
    describes the smaller variance in plain type; no winner, nothing in bold."""
    y = np.linspace(0, 60, 40)
    rng = np.random.default_rng(1)
    doc = {"database": "toy", "pairs_sha256": "0" * 64,
           "splits": [{"train": ["a"], "val": ["b"], "test": ["c"]}]}
    runs = [Run(Path(label), label, doc, [{"srocc": 0.8}],
                [{f"p{i}": (float(y[i]), float(x)) for i, x in enumerate(y + rng.normal(0, s, y.size))}])
            for label, s in (("base", 12.0), ("other", 0.5))]
    result = compare(runs, metrics=["srocc"])
    test = result["comparisons"][0]["variance_tests"][0]
    assert test["pvalue_holm"] < 1e-6 and test["winner"] is None
    assert test["smaller_variance"] == "other"
    text = tables(result)
    assert "**" not in text and "a description, not a verdict" in text
    assert "| other |" in text.splitlines()[-1] or text.rstrip().endswith("| other |")
    assert "too few splits to test (1)" in text
    assert r"\textbf" not in tables(result, latex=True)


# ---------------------------------------------------------------------- what the header says
def test_header_names_the_aggregate_the_leaderboard_prints(tmp_path):
    """k-fold: the pooled out-of-fold metrics (not a median the table does not give);
    random splits: the median over the splits."""
    from siqa.evaluation.comparison_tables import _header_line

    pairs = generated_pairs(tmp_path / "db")
    runs = [load_run(write_kfold_run(tmp_path / name, pairs, lambda y, rng: y + rng.normal(0, 3, y.size)))
            for name in ("k1", "k22")]
    kfold = _header_line(compare(runs, metrics=["srocc"]))
    assert "Leaderboard metrics: the metric of the pooled out-of-fold predictions" in kfold
    assert "median" not in kfold
    random = _header_line(compare(synthetic_runs(np.linspace(0.7, 0.8, 6), np.linspace(0.7, 0.8, 6)),
                                  metrics=["srocc"]))
    assert "Leaderboard metrics: median over the splits [distribution-free interval" in random
    assert "pooled" not in random


def test_per_distortion_gives_each_runs_metric_per_distortion_as_the_leaderboard(tmp_path):
    """--per-distortion: k-fold runs, the metric of the pooled out-of-fold predictions of each
    distortion (recomputed here from the files); random splits, the median over the splits
    of each split's per-distortion value."""
    from siqa.evaluation.comparison import per_distortion
    from siqa.evaluation.metrics import srocc

    pairs = generated_pairs(tmp_path / "db")
    good = load_run(write_kfold_run(tmp_path / "good", pairs, lambda y, rng: y + rng.normal(0, 9, y.size)))
    noisy = load_run(write_kfold_run(tmp_path / "noisy", pairs, noise_around_the_mean))
    result = compare([good, noisy], metrics=["srocc"])
    for run in (good, noisy):
        preds = {n: v for split in run.predictions for n, v in split.items()}
        for kind in ("blur", "wn"):
            names = [p.name for p in pairs if p.distortion == kind]
            cell = result["per_distortion"][run.label]["groups"][kind]
            assert cell["pairs"] == len(names)
            assert cell["srocc"] == pytest.approx(srocc([preds[n][1] for n in names],
                                                        [preds[n][0] for n in names]), rel=1e-12)
    text = tables(result, per_distortion=True)
    assert ("Per distortion, SROCC (the pooled out-of-fold predictions of 5 folds x 1 repetition, "
            "as the leaderboard):") in text
    blur = result["per_distortion"]
    want = (f"| blur | {blur['good']['groups']['blur']['pairs']} | "
            f"{blur['good']['groups']['blur']['srocc']:.4f} | {blur['noisy']['groups']['blur']['srocc']:.4f} |")
    assert want in text.splitlines()
    assert "Per distortion" not in tables(result)
    splits = Run(Path("r"), "r", {"splits": [{}, {}, {}]}, [
        {"per_distortion": {"blur": {"n": 4, "srocc": v, "rmse": 2 * v}}} for v in (0.5, 0.9, 0.7)],
        [{}, {}, {}])
    random = per_distortion(splits)
    assert random["source"] == "the median over 3 splits"
    assert random["groups"]["blur"]["pairs"] == 12 and random["groups"]["blur"]["srocc"] == 0.7
    assert random["groups"]["blur"]["rmse"] == 1.4 and random["groups"]["blur"]["plcc"] is None
