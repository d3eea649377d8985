"""Compare N runs made on the same splits: a leaderboard, paired tests against a reference
run, and tables that go into a paper (and CSV/Markdown files that other tools read).

    reference R (N splits) ─┐
    run X (N splits) ───────┤  same splits.json (scene ids per split, pair-list hash, folds)?
    run Y ...  ─────────────┘  same scores of the test pairs (predictions.csv)? else refuse
        │
        ├─ leaderboard: per run and metric the median over the splits and the
        │  distribution-free interval of the median; k-fold runs: the metric of the pooled
        │  out-of-fold predictions with its scene-bootstrap interval; best first; then the
        │  constant predictor (each split's training mean: `training_means`), RMSE only;
        │  the runs that learned ranked first, the non-learners after them, unranked
        ├─ per run: learned or not (`learning_verdict`): its SROCC interval above 0 and its
        │  RMSE below the constant predictor's, both aggregated as the leaderboard does
        ├─ per metric, each X against R: the per-split test values where both runs have one
        │  (the dropped splits counted); paired differences X - R; Wilcoxon signed-rank test
        │  (siqa.evaluation.stats), two-sided, and the corrected resampled t-test; neither
        │  below MIN_SPLITS_TO_TEST splits
        ├─ per split: residuals target - logistic(prediction) of each run on the same test
        │  pairs (each run's own fit, siqa.evaluation.metrics.fit_logistic); Pitman-Morgan test of
        │  their variances (paired)
        └─ k-fold runs: the paired scene permutation test on the pooled predictions

Holm over each family, and a family spans every comparison with the reference: the
metrics x comparisons (Wilcoxon), the splits x comparisons (Pitman-Morgan), the metrics x
comparisons (scene tests); with two runs, one comparison. A winner is named only where the
Holm-adjusted p < alpha (default 0.05), by the sign of the test statistic (R+ - R- for the
Wilcoxon, in the direction in which the metric is better; the smaller residual variance
for Pitman-Morgan); otherwise the cell says "n.s.". No winner is named in a comparison
where either run did not learn ("not tested", the p-values kept and still counted in the
Holm families). The Pitman-Morgan test assumes
independent test pairs, which pairs of one scene are not: it is a per-split description,
not a scene-level test; with a single split it names the smaller variance only as a
description ("smaller_variance"), never a winner. With N splits no Wilcoxon p can fall
below 2 / 2^N (`min_wilcoxon_pvalue`): the tables say so. The reference is the first run unless
`reference` names another. The tables (Markdown, or LaTeX `tabular` with --latex) and the
files compare.py writes are in siqa.evaluation.comparison_tables.
"""
import csv
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from siqa.errors import UserError
from siqa.evaluation.metrics import (
    LOWER_IS_BETTER,
    evaluate_scores,
    fit_logistic,
    metric_name,
    per_group,
    rmse,
    srocc,
)
from siqa.evaluation.reports import intervals
from siqa.evaluation.stats import (
    PAIRED_TEST_METRICS,
    corrected_resampled_t,
    holm,
    median_interval,
    min_wilcoxon_pvalue,
    paired_scene_test,
    pitman_morgan,
    wilcoxon_signed_rank,
)
from siqa.files import read_json
from siqa.runfolder import PREDICTIONS, SPLITS, RunFolder, SplitFolder

DEFAULT_METRICS = ("srocc", "krocc", "plcc", "rmse", "plcc_logistic", "rmse_logistic")
TITLES = {"srocc": "SROCC", "krocc": "KROCC", "plcc": "PLCC", "rmse": "RMSE",
          "plcc_logistic": "PLCC (logistic)", "rmse_logistic": "RMSE (logistic)"}
# Scores are written with repr() and read back exactly; the relative tolerance forgives a
# label that another tool rounded in its last digit, not another scale
SCORE_RTOL = 1e-9


@dataclass
class Run:
    folder: Path
    label: str
    splits: dict  # the splits.json document
    tests: list  # per split: the "test" dict of metrics.json
    predictions: list  # per split: {pair name: (score, prediction, scene)} of the test pairs
    val_scores: list = None  # per split: the scores of its validation pairs
    known_scores: dict = None  # {pair name: (score, scene)} of every recorded row (val, test)
    distortions: dict = None  # {pair name: distortion} of every recorded test row


def _recorded_rows(path, distortions):
    """({name: (score, prediction, scene)} of the test rows, [scores of the val rows],
    {name: (score, scene)} of both) of a predictions.csv; each test row's distortion into
    `distortions`."""
    if not path.is_file():
        raise UserError(f"{path} is missing: the run folder is incomplete")
    test, val, known = {}, [], {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            score = float(row["score"])
            if row["split"] == "test":
                test[row["name"]] = (score, float(row["prediction"]), row.get("content"))
                distortions[row["name"]] = row.get("distortion")
            elif row["split"] == "val":
                val.append(score)
            if row["split"] in ("val", "test"):
                known[row["name"]] = (score, row.get("content"))
    return test, val, known


def load_run(folder, label=None, split_dirs=None) -> Run:
    """A finished run folder (one split, or several with split_0 .. split_N-1; `split_dirs`:
    the split folders where they lie elsewhere, as the parts summarize.py merges)."""
    folder = Path(folder)
    run = RunFolder(folder)
    if not run.splits_file.is_file():
        raise UserError(f"{folder} is not a finished run folder of this version (no {SPLITS})")
    doc = read_json(run.splits_file)
    count = len(doc.get("splits", []))
    splits = run.splits(count) if split_dirs is None else [SplitFolder(d) for d in split_dirs]
    tests, preds, vals, known, distortions = [], [], [], {}, {}
    for split in splits:
        if not split.metrics.is_file():
            raise UserError(f"{split.metrics} is missing: the run has not finished "
                            "(finish it with train.py --resume)")
        tests.append(read_json(split.metrics)["test"])
        test, val, rows = _recorded_rows(split.predictions, distortions)
        preds.append(test)
        vals.append(val)
        known.update(rows)
    return Run(folder, label or folder.name, doc, tests, preds, vals, known, distortions)


def _design(doc) -> str:
    folds = doc.get("folds")
    return f"{folds} folds (protocol.folds={folds})" if folds else \
        "random splits (protocol.design=random)"


def check_same_splits(runs):
    """UserError (one line) unless every run used the same splits as the first."""
    base = runs[0]
    for run in runs[1:]:
        if run.splits.get("pairs_sha256") != base.splits.get("pairs_sha256"):
            raise UserError(f"runs {base.folder} and {run.folder} were made on different pair "
                            "lists (pair-list hashes differ): they cannot be compared")
        if run.splits.get("folds") != base.splits.get("folds"):
            raise UserError(f"runs {base.folder} and {run.folder} were split differently "
                            f"({_design(base.splits)} vs {_design(run.splits)}): train both with "
                            f"dataset.split_file={RunFolder(base.folder).splits_file}")
        a, b = base.splits["splits"], run.splits["splits"]
        if len(a) != len(b):
            raise UserError(f"runs {base.folder} and {run.folder} have {len(a)} and {len(b)} "
                            "splits: train both with the same train.repeats and dataset.split_file")
        for r, (sa, sb) in enumerate(zip(a, b)):
            if sa != sb:
                part = next(k for k in ("train", "val", "test") if sorted(sa[k]) != sorted(sb[k]))
                raise UserError(f"runs {base.folder} and {run.folder} differ in split {r} "
                                f"({part} scenes {sorted(sa[part])} vs {sorted(sb[part])}): train "
                                f"both with dataset.split_file={RunFolder(base.folder).splits_file}")


def check_same_scores(runs):
    """UserError (one line) unless every run recorded the first run's score for each test
    pair both hold. The split file checks pair names only: the same images scored as DMOS
    and as 100 - DMOS (a MOS manifest) pass it, and every metric and test would then mix
    two targets."""
    base = runs[0]
    for run in runs[1:]:
        for r, (pa, pb) in enumerate(zip(base.predictions, run.predictions)):
            for name in sorted(set(pa) & set(pb)):
                a, b = pa[name][0], pb[name][0]
                if not math.isclose(a, b, rel_tol=SCORE_RTOL):
                    raise UserError(
                        f"runs {base.folder} and {run.folder} were trained on different scores: "
                        f"test pair {name} of split {r} has score {a:g} in one and {b:g} in the "
                        f"other ({PREDICTIONS}; DMOS vs MOS, or another scale?): compare runs "
                        "trained on the same labels")


def _residuals(predictions, names):
    score = np.array([predictions[n][0] for n in names])
    pred = np.array([predictions[n][1] for n in names])
    return score - fit_logistic(pred, score)(pred)


def held_out_ratio(doc):
    """Mean over the splits of (test pairs) / (training pairs), from the split document's
    pairs per scene; None where the document does not give them."""
    scenes = doc.get("scenes")
    if not isinstance(scenes, dict) or not doc.get("splits"):
        return None
    try:
        pairs = {name: int(v["pairs"]) for name, v in scenes.items()}
        ratios = [sum(pairs[s] for s in split["test"]) / sum(pairs[s] for s in split["train"])
                  for split in doc["splits"]]
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    return float(np.mean(ratios))


def reference_index(runs, reference) -> int:
    """The index of the reference run: None = the first; else a label or a run folder."""
    if reference is None:
        return 0
    for i, run in enumerate(runs):
        if reference == run.label or Path(reference).resolve() == run.folder.resolve():
            return i
    raise UserError(f"--reference {reference}: not one of the runs (give a label or a RUN folder)")


def compare(runs, metrics=DEFAULT_METRICS, alpha=0.05, reference=None) -> dict:
    """The leaderboard and the paired statistics of every run against the reference run
    (`reference`: a label or folder; default the first), Holm-corrected over the metrics
    and the comparisons (plain dict, JSON-ready)."""
    try:
        metrics = [metric_name(m) for m in metrics]
    except ValueError as err:
        raise UserError(f"--metric: {err}") from None
    labels = [run.label for run in runs]
    if len(set(labels)) != len(labels):
        twice = next(l for l in labels if labels.count(l) > 1)
        raise UserError(f"two runs are labelled {twice!r}: give each a name with --label")
    ref = reference_index(runs, reference)
    runs = [runs[ref]] + runs[:ref] + runs[ref + 1:]
    check_same_splits(runs)
    check_same_scores(runs)
    base = runs[0]
    ratio = held_out_ratio(base.splits)
    out = {"alpha": alpha, "splits": len(base.tests), "database": base.splits.get("database"),
           "design": "kfold" if base.splits.get("folds") else "random",
           "test_train_ratio": ratio,
           "min_wilcoxon_pvalue": min_wilcoxon_pvalue(len(base.tests)),
           "min_splits_to_test": MIN_SPLITS_TO_TEST,
           "pairs_sha256": base.splits.get("pairs_sha256"), "runs": [], "comparisons": []}
    pooled = {run.label: pooled_report(run) for run in runs} if base.splits.get("folds") else {}
    constant = constant_baseline(base)
    out["constant_baseline"] = constant
    for run in runs:
        verdict = learning_verdict(*_headline(run, pooled.get(run.label)), constant["rmse"])
        out["runs"].append({"label": run.label, "folder": str(run.folder), **verdict,
                            "metrics": _medians(run, metrics)})
    for run in runs[1:]:
        comp = {"label": run.label, "baseline": base.label, "metrics": {},
                "variance_tests": _variance_tests(base, run),
                "variance_test": "Pitman-Morgan (paired residuals, independent pairs assumed)"}
        _split_tests(comp, base, run, metrics, ratio)
        folds = base.splits.get("folds")
        if folds:
            comp["scene_tests"] = scene_tests(base, run, int(folds))
        out["comparisons"].append(comp)
    # one Holm family per kind of test, over every comparison with the reference
    comps = out["comparisons"]
    _holm_winners([(c, t) for c in comps for t in c["metrics"].values()], alpha)
    _holm_winners([(c, t) for c in comps for t in c.get("corrected_t", {}).values()], alpha)
    _holm_winners([(c, t) for c in comps for t in c["variance_tests"]], alpha)
    _holm_winners([(c, t) for c in comps for t in c.get("scene_tests", {}).values()], alpha)
    _withhold_verdicts(out)
    out["holm"] = (f"one family per kind of test over the {len(comps)} comparison(s) with "
                   f"{base.label}: Wilcoxon over metrics x comparisons, the corrected t-test "
                   "over metrics x comparisons, Pitman-Morgan over "
                   "splits x comparisons, scene tests over metrics x comparisons")
    out["reference"] = base.label
    out["leaderboard"] = leaderboard(runs, metrics, out, pooled)
    out["per_distortion"] = {run.label: per_distortion(run) for run in runs}
    return _finite(out)


def _withhold_verdicts(out):
    """No winner where the run or the reference did not learn (a difference between two
    runs that learned nothing says nothing), and none from the description of a single
    split: their p-values stay, the verdict goes."""
    learned = {r["label"]: r for r in out["runs"]}
    for comp in out["comparisons"]:
        tests = [*comp["metrics"].values(), *comp.get("corrected_t", {}).values(),
                 *comp["variance_tests"], *comp.get("scene_tests", {}).values()]
        if out["splits"] == 1:
            for t in comp["variance_tests"]:
                t["smaller_variance"], t["winner"] = t["winner"], None
        failed = [label for label in (comp["label"], comp["baseline"])
                  if not learned[label]["learned"]]
        if failed:
            comp["not_tested"] = "; ".join(f"{label} {learned[label]['why']}" for label in failed)
            for t in tests:
                t["winner"] = None
                t.pop("smaller_variance", None)


def _medians(run, metrics) -> dict:
    """Each metric's values over the run's splits, their median and its interval."""
    summary = {}
    for m in metrics:
        values = [t.get(m) for t in run.tests]
        finite = [v for v in values if v is not None]
        low, high, coverage = median_interval(finite)
        summary[m] = {"values": values,
                      "median": float(np.median(finite)) if finite else None,
                      "median_ci": [low, high], "median_ci_coverage": coverage}
    return summary


def _split_tests(comp, base, run, metrics, ratio):
    """The Wilcoxon test (and the corrected resampled t-test, where the split file gives the
    test/train ratio) of each metric over the splits where both runs have a value, into
    `comp`; which splits were dropped and why; no test below MIN_SPLITS_TO_TEST splits."""
    for m in metrics:
        values = [(a.get(m), b.get(m)) for a, b in zip(base.tests, run.tests)]
        kept = [(a, b) for a, b in values if a is not None and b is not None]
        a = np.array([p[0] for p in kept])
        b = np.array([p[1] for p in kept])
        sign = -1 if m in LOWER_IS_BETTER else 1
        cell = {"n": len(kept), "splits": len(values), "dropped": _dropped(m, values, base, run),
                "better_on": int(np.sum(sign * (b - a) > 0)),
                "worse_on": int(np.sum(sign * (b - a) < 0)),
                "median_difference": float(np.median(b - a)) if kept else None}
        if len(kept) < MIN_SPLITS_TO_TEST:
            skipped = {"pvalue": None, "direction": 0, "method": f"too few splits to test ({len(kept)})"}
            comp["metrics"][m] = {**cell, "statistic": None, "r_plus": None, "r_minus": None,
                                  **skipped}
            if ratio is not None:
                comp.setdefault("corrected_t", {})[m] = {
                    "mean_difference": None, "t": None, "df": None, "n": len(kept), **skipped}
            continue
        res = wilcoxon_signed_rank(a, b)
        comp["metrics"][m] = {**cell, "median_difference": res.median_difference,
                              "statistic": res.statistic, "r_plus": res.r_plus,
                              "r_minus": res.r_minus, "pvalue": res.pvalue,
                              "method": res.method, "direction": sign * res.direction}
        if ratio is not None:
            t = corrected_resampled_t(a, b, ratio)
            comp.setdefault("corrected_t", {})[m] = {
                "mean_difference": t.mean_difference, "t": t.statistic, "df": t.df,
                "pvalue": t.pvalue, "direction": sign * t.direction, "n": len(kept)}


def _dropped(metric, values, base, run):
    """Why splits were left out of a paired test: the metric is undefined (None in
    metrics.json) in one run or both; None when none was."""
    missing = {}
    for r, pair in enumerate(values):
        for run_, v in zip((base, run), pair):
            if v is None:
                missing.setdefault(run_.label, []).append(r)
    if not missing:
        return None
    count = sum(a is None or b is None for a, b in values)
    why = "; ".join(f"{TITLES.get(metric, metric)} undefined in {label} (split"
                    f"{'s' if len(splits) > 1 else ''} {', '.join(map(str, splits))})"
                    for label, splits in missing.items())
    return {"count": count, "why": why}


def _variance_tests(base, run) -> list:
    """The Pitman-Morgan test of the residuals of `run` against `base`, split by split."""
    tests = []
    for r, (pa, pb) in enumerate(zip(base.predictions, run.predictions)):
        if set(pa) != set(pb):
            raise UserError(f"split {r}: the test pairs of {base.folder} and {run.folder} "
                            f"differ ({PREDICTIONS})")
        names = sorted(pa)
        res_a, res_b = _residuals(pa, names), _residuals(pb, names)
        if len(names) >= 3:
            res = pitman_morgan(res_b, res_a)  # statistic > 0: X's residuals vary more
            t, p = res.statistic, res.pvalue  # NaN for identical residuals (a run vs itself)
            direction = -int(np.sign(t)) if np.isfinite(t) else 0
        else:
            t, p, direction = None, None, 0
        tests.append({"split": r, "pairs": len(names), "var_baseline": float(np.var(res_a, ddof=1)),
                      "var_other": float(np.var(res_b, ddof=1)), "t": t, "pvalue": p,
                      "direction": direction})
    return tests


BASELINE_LABEL = "constant (score mean)"
MIN_SPLITS_TO_TEST = 3  # below, no Wilcoxon or t-test across splits (it cannot inform)


def pooled_report(run) -> dict:
    """The metrics of a k-fold run's pooled out-of-fold predictions (mean over the
    repetitions, pairs in name order as the scene tests take them), with the scene
    bootstrap intervals of siqa.evaluation.reports.intervals."""
    pooled = pooled_predictions(run, run.splits["folds"])
    names = sorted(pooled)
    y = np.array([pooled[n][0] for n in names])
    x = np.array([pooled[n][1] for n in names])
    return {**evaluate_scores(x, y), **intervals(x, y, [str(pooled[n][2]) for n in names])}


def training_means(run) -> list:
    """Per split (mean, source) of the constant predictor: the mean of the split's training
    scores where the run folder records a score for every training pair (the pairs of its
    training scenes, counted by splits.json; predictions.csv holds the val and test rows of
    each split, so a k-fold run records every pair), else the mean of the split's validation
    scores, else (None, None). Never the test scores the predictor is scored on."""
    doc = run.splits
    scenes = doc.get("scenes") if isinstance(doc.get("scenes"), dict) else {}
    by_scene = {}
    for score, scene in (run.known_scores or {}).values():
        by_scene.setdefault(str(scene), []).append(score)
    vals = run.val_scores or [None] * len(doc["splits"])
    out = []
    for split, val in zip(doc["splits"], vals):
        train = [str(s) for s in split.get("train", [])]
        if train and all(len(by_scene.get(s, [])) == (scenes.get(s) or {}).get("pairs")
                         for s in train):
            out.append((float(np.mean([y for s in train for y in by_scene[s]])), "training"))
        elif val:
            out.append((float(np.mean(val)), "validation"))
        else:
            out.append((None, None))
    return out


def constant_baseline(run) -> dict:
    """The constant predictor at each split's mean (`training_means`), scored on that
    split's test pairs: its RMSE aggregated as the leaderboard aggregates the runs' (k-fold:
    the pooled out-of-fold predictions, each pair's mean over the repetitions, with the
    scene-bootstrap interval; random splits: the median over the splits and the interval of
    the median). Its correlations are undefined (a constant ranks nothing)."""
    means = training_means(run)
    sources = sorted({source for _, source in means}, key=str)
    if None in sources:
        return {"rmse": None, "ci": [None, None], "interval": None, "means": None,
                "mean_of": None, "source": "not available: the run folders record neither "
                "training nor validation scores"}
    mean_of = ("the training scores of each split" if sources == ["training"] else
               "the validation scores of each split (its training scores are not recorded)"
               if sources == ["validation"] else
               "the training scores of each split where recorded, else its validation scores")
    constant = [{name: (v[0], mean, v[2] if len(v) > 2 else None) for name, v in preds.items()}
                for (mean, _), preds in zip(means, run.predictions)]
    folds = run.splits.get("folds")
    if folds:
        pooled = pooled_predictions(replace(run, predictions=constant), folds)
        names = sorted(pooled)
        x, y = (np.array([pooled[n][i] for n in names]) for i in (1, 0))
        ci = intervals(x, y, [str(pooled[n][2]) for n in names])["ci95"]["rmse"]
        value, interval = rmse(x, y), "scene bootstrap 95 %" if ci[0] is not None else None
        source = f"pooled out-of-fold ({folds} folds)"
    else:
        values = [rmse([v[1] for v in p.values()], [v[0] for v in p.values()]) for p in constant]
        low, high, coverage = median_interval(values)
        value, ci = float(np.median(values)), [low, high]
        interval = None if coverage is None else \
            f"interval of the median, coverage {100 * coverage:.1f} %"
        source = f"median over {len(values)} split(s)"
    return {"rmse": value, "ci": list(ci), "interval": interval, "source": source,
            "mean_of": mean_of, "means": [{"mean": m, "of": src} for m, src in means]}


def _headline(run, pooled):
    """(SROCC, the interval the leaderboard prints for it, RMSE) of a run, aggregated as the
    leaderboard aggregates (whatever --metric asks for): k-fold from `pooled`
    (pooled_report), else the median over the splits of the values in metrics.json (from
    the test predictions where metrics.json lacks them)."""
    if pooled is not None:
        ci = (pooled.get("ci95") or {}).get("srocc") or [None, None]
        return pooled.get("srocc"), list(ci), pooled.get("rmse")
    per_split = {"srocc": [], "rmse": []}
    for test, preds in zip(run.tests, run.predictions):
        y, x = [v[0] for v in preds.values()], [v[1] for v in preds.values()]
        for m, fn in (("srocc", srocc), ("rmse", rmse)):
            per_split[m].append(test[m] if m in test else fn(x, y))
    medians = {}
    for m, values in per_split.items():
        finite = [v for v in values if v is not None]
        medians[m] = float(np.median(finite)) if finite else None
    low, high, _ = median_interval([v for v in per_split["srocc"] if v is not None])
    return medians["srocc"], [low, high], medians["rmse"]


def learning_verdict(srocc_value, srocc_ci, run_rmse, constant_rmse) -> dict:
    """{"learned", "why"}: a run did not learn when its SROCC interval reaches 0 (without an
    interval: its SROCC is not above 0) or its RMSE is not below the constant predictor's
    (when that is known)."""
    why = []
    if constant_rmse is not None and run_rmse is not None and not run_rmse < constant_rmse:
        why.append(f"did not beat the constant predictor (RMSE {run_rmse:.4g}, constant "
                   f"{constant_rmse:.4g})")
    low, high = srocc_ci
    if srocc_value is None:
        why.append("has no SROCC (constant predictions)")
    elif low is not None and low <= 0:
        where = "includes 0" if high >= 0 else "lies below 0"
        why.append(f"has an SROCC interval [{low:.3f}, {high:.3f}] that {where}")
    elif low is None and srocc_value <= 0:
        why.append(f"has an SROCC of {srocc_value:.3f}, not above 0 (no interval)")
    return {"learned": not why, "why": " and ".join(why) or None}


def judge(run) -> dict:
    """Whether one run learned, judged as compare() judges each run of its leaderboard (the
    same functions): its SROCC and RMSE aggregated as the leaderboard aggregates them (k-fold:
    the pooled out-of-fold predictions and their scene-bootstrap interval; random splits:
    the median over the splits and the interval of the median), against the constant
    predictor of `constant_baseline`. {"learned", "why", "srocc", "srocc_ci", "rmse",
    "constant_rmse", "constant", "source"}; what a run writes at its end."""
    folds = run.splits.get("folds")
    pooled = pooled_report(run) if folds else None
    constant = constant_baseline(run)
    value, ci, run_rmse = _headline(run, pooled)
    reps = len(run.tests) // int(folds) if folds else 0
    source = (f"the pooled out-of-fold predictions of {folds} folds x {reps} "
              f"repetition{'s' if reps > 1 else ''}" if folds else
              f"the median over {len(run.tests)} splits" if len(run.tests) > 1 else
              "its one split's test")
    return {**learning_verdict(value, ci, run_rmse, constant["rmse"]), "srocc": value,
            "srocc_ci": ci, "rmse": run_rmse, "constant_rmse": constant["rmse"],
            "constant": (f"the constant at the mean of {constant['mean_of']}"
                         if constant["mean_of"] else f"no constant predictor: {constant['source']}"),
            "source": source}


def judge_untested(report) -> dict:
    """Whether a run with no test pairs (a final fit) learned, as far as it can be told: judge()
    needs held-out predictions, so only the spread of its predictions on its own training
    pairs speaks: near constant, it did not learn; else it is not judged. {"learned" (False
    or None), "why", "spread", "source"}; what such a run writes at its end."""
    spread = (report.get("train") or {}).get("spread") or {}
    near = bool(spread.get("near_constant"))
    why = ("predicts near-constant scores for its own training pairs" if near else
           "has no test pairs to be judged on as compare.py judges")
    return {"learned": False if near else None, "why": why, "spread": spread,
            "source": "its predictions on its training pairs (no test pairs: a final fit)"}


def per_distortion(run) -> dict:
    """{"source", "groups": {distortion: {"pairs", metric: value}}} of a run, aggregated as
    the leaderboard aggregates it: k-fold, the metrics of the pooled out-of-fold predictions
    of each distortion (siqa.evaluation.metrics.per_group); random splits, the median over
    the splits of each split's test value (metrics.json per_distortion; one split: its own)
    and the pairs summed."""
    folds = run.splits.get("folds")
    if folds:
        pooled = pooled_predictions(run, folds)
        names = sorted(pooled)
        groups = per_group([pooled[n][1] for n in names], [pooled[n][0] for n in names],
                           [(run.distortions or {}).get(n) for n in names])
        reps = len(run.tests) // int(folds)
        return {"source": f"the pooled out-of-fold predictions of {folds} folds x {reps} "
                          f"repetition{'s' if reps > 1 else ''}",
                "groups": {str(d): {"pairs": g["n"], **{m: g.get(m) for m in DEFAULT_METRICS}}
                           for d, g in groups.items()}}
    out = {}
    for test in run.tests:
        for d, g in (test.get("per_distortion") or {}).items():
            cell = out.setdefault(str(d), {"pairs": 0, **{m: [] for m in DEFAULT_METRICS}})
            cell["pairs"] += int(g.get("n") or 0)
            for m in DEFAULT_METRICS:
                if g.get(m) is not None:
                    cell[m].append(g[m])
    for cell in out.values():
        for m in DEFAULT_METRICS:
            cell[m] = float(np.median(cell[m])) if cell[m] else None
    count = len(run.tests)
    return {"source": "its one split's test" if count == 1 else f"the median over {count} splits",
            "groups": dict(sorted(out.items()))}


def save_pooled_scatter(run, path, title=None):
    """scatter.png of a k-fold run: its pooled out-of-fold predictions (each pair's mean over
    the repetitions) against the scores, coloured by distortion, with the straight line and
    the logistic of siqa.evaluation.plots."""
    from siqa.evaluation.plots import save_scatter_png  # matplotlib: only where a plot is drawn

    folds = run.splits["folds"]
    pooled = pooled_predictions(run, folds)
    names = sorted(pooled)
    reps = len(run.tests) // int(folds)
    save_scatter_png(path, [pooled[n][1] for n in names], [pooled[n][0] for n in names],
                     [(run.distortions or {}).get(n) for n in names],
                     title=title or f"{run.splits.get('database')}: pooled out-of-fold, {folds} folds "
                                    f"x {reps} repetition{'s' if reps > 1 else ''}, {len(names)} pairs")


def leaderboard(runs, metrics, result, pooled) -> list:
    """One row per run, the runs that learned first, ranked best first by the first metric,
    then the non-learners, unranked (rank None), in the same order: its value and interval per metric
    (per-split design: the median over the splits and the distribution-free interval of
    the median; k-fold: the pooled out-of-fold metric and its scene-bootstrap 95 %
    interval; `pooled`: pooled_report per label) and, against the reference, the Holm p and
    winner of the test to quote (Wilcoxon across splits; k-fold: the paired scene test
    where it covers the metric); then the constant predictor's row, unranked."""
    rows = []
    for i, run in enumerate(runs):
        status = result["runs"][i]
        row = {"run": run.label, "folder": str(run.folder), "reference": i == 0,
               "learned": status["learned"], "why": status["why"], "metrics": {}}
        if run.label in pooled:
            report = pooled[run.label]
            row["source"] = (f"pooled out-of-fold ({run.splits['folds']} folds, mean over "
                             f"{len(run.tests) // int(run.splits['folds'])} repetition(s))")
            for m in metrics:
                low, high = (report.get("ci95") or {}).get(m, [None, None])
                row["metrics"][m] = {"value": report.get(m), "ci": [low, high],
                                     "interval": "scene bootstrap 95 %" if low is not None else None}
        else:
            row["source"] = f"median over {len(run.tests)} split(s)"
            for m in metrics:
                s = status["metrics"][m]
                cov = s["median_ci_coverage"]
                row["metrics"][m] = {"value": s["median"], "ci": s["median_ci"],
                                     "interval": None if cov is None else
                                     f"interval of the median, coverage {100 * cov:.1f} %"}
        if i:
            comp = result["comparisons"][i - 1]
            tests = comp.get("scene_tests") or {}
            for m in metrics:
                cell = tests.get(m) or comp["metrics"][m]
                row["metrics"][m].update(test="scene permutation" if m in tests else "Wilcoxon",
                                         pvalue_holm=cell["pvalue_holm"], winner=cell["winner"])
        rows.append(row)
    first = metrics[0]
    sign = 1 if first in LOWER_IS_BETTER else -1
    order = sorted(range(len(rows)), key=lambda i: (
        not rows[i]["learned"], rows[i]["metrics"][first]["value"] is None,
        sign * (rows[i]["metrics"][first]["value"] or 0.0), i))
    learners = [i for i in order if rows[i]["learned"]]
    for i in order:  # a non-learner has no rank: it is not placed against the runs that learned
        rows[i]["rank"] = learners.index(i) + 1 if i in learners else None
    return [rows[i] for i in order] + [_baseline_row(result["constant_baseline"], metrics)]


def _baseline_row(constant, metrics) -> dict:
    """The constant predictor in the leaderboard: raw RMSE only, every other metric None."""
    cells = {m: {"value": None, "ci": [None, None], "interval": None} for m in metrics}
    if "rmse" in cells:
        cells["rmse"] = {"value": constant["rmse"], "ci": constant["ci"],
                         "interval": constant["interval"]}
    source = constant["source"] + (f", constant at the mean of {constant['mean_of']}"
                                   if constant["mean_of"] else "")
    return {"run": BASELINE_LABEL, "folder": "", "reference": False, "baseline": True,
            "rank": None, "learned": None, "why": None, "source": source, "metrics": cells}


def pooled_predictions(run, folds) -> dict:
    """{pair: (score, mean out-of-fold prediction over the repetitions, scene)} of a k-fold
    run: each repetition's folds test every pair once."""
    sums = {}
    for predictions in run.predictions:
        for name, (score, pred, scene) in predictions.items():
            total = sums.setdefault(name, [score, 0.0, scene, 0])
            total[1] += pred
            total[3] += 1
    return {name: (v[0], v[1] / v[3], v[2]) for name, v in sums.items()}


def scene_tests(base, run, folds, seed=0) -> dict:
    """Paired scene permutation tests (siqa.evaluation.stats.paired_scene_test) of run - base on the
    pooled out-of-fold predictions, per metric of PAIRED_TEST_METRICS."""
    pa, pb = pooled_predictions(base, folds), pooled_predictions(run, folds)
    names = sorted(pa)
    if sorted(pb) != names:
        raise UserError(f"the pooled test pairs of {base.folder} and {run.folder} differ")
    y = np.array([pa[n][0] for n in names])
    a, b = np.array([pa[n][1] for n in names]), np.array([pb[n][1] for n in names])
    scenes = [str(pa[n][2]) for n in names]
    out = {}
    for m in PAIRED_TEST_METRICS:
        res = paired_scene_test(a, b, y, scenes, m, seed=seed)
        sign = -1 if m in LOWER_IS_BETTER else 1
        out[m] = {"difference": res.statistic, "scenes": res.n_scenes, "pairs": len(names),
                  "pvalue": res.pvalue, "method": res.method, "swaps": res.n_swaps,
                  "direction": sign * int(np.sign(res.statistic))}
    return out


def _holm_winners(family, alpha):
    """Add "pvalue_holm" (Holm over this family) and "winner" (by "direction": +1 = the
    other run is better) to every test dict of one family: (comparison, test) pairs."""
    raw = [np.nan if t["pvalue"] is None else t["pvalue"] for _, t in family]
    for (comp, t), adjusted in zip(family, holm(raw)):
        t["pvalue_holm"] = adjusted
        significant = np.isfinite(adjusted) and adjusted < alpha and t["direction"] != 0
        t["winner"] = ((comp["label"] if t["direction"] > 0 else comp["baseline"])
                       if significant else None)


def _finite(obj):
    """NaN and infinities (an undefined test) become None, so that the result is JSON."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


