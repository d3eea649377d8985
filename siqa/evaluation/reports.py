"""What a run or an evaluation writes: metrics.json, predictions.csv, summary.json."""
import csv
import io
import json
import math
import statistics

import numpy as np

from siqa.errors import counted
from siqa.evaluation.metrics import (
    evaluate_scores,
    krocc,
    near_constant_message,
    per_group,
    plcc,
    prediction_spread,
    rmse,
    srocc,
)
from siqa.evaluation.stats import (
    BOOTSTRAP_METRICS,
    DEFAULT_RESAMPLES,
    MIN_SCENES_FOR_INTERVAL,
    SCENE_INTERVAL_COVERAGE,
    bootstrap_metrics,
    median_interval,
)
from siqa.files import atomic_write_text
from siqa.runfolder import BEST

BOOTSTRAP_SEED = 0


def fmt_metric(x) -> str:
    """A metric in a log line: four decimals, or n/a where it is undefined."""
    return "n/a" if x is None else f"{x:.4f}"


def per_scene(pred, target, scenes) -> dict:
    """{scene: {"pairs", "srocc", "krocc", "plcc", "rmse"}} (raw predictions; None where
    undefined)."""
    labels = np.asarray([str(s) for s in scenes], dtype=object)
    out = {}
    for scene in sorted(set(labels.tolist())):
        x, y = pred[labels == scene], target[labels == scene]
        out[scene] = {"pairs": int(x.size), "srocc": srocc(x, y), "krocc": krocc(x, y),
                      "plcc": plcc(x, y), "rmse": rmse(x, y)}
    return out


def intervals(pred, target, scenes, n_resamples=DEFAULT_RESAMPLES, seed=BOOTSTRAP_SEED) -> dict:
    """Bootstrap intervals of SROCC, KROCC, PLCC and RMSE (raw predictions):
    "ci95" resamples scenes (the independent unit), only from MIN_SCENES_FOR_INTERVAL scenes
    on (below, [None, None], "ci95_note" says "n scenes, no interval" and "per_scene" gives
    each scene's values); "ci95_pair_level" resamples pairs (narrower than the truth: pairs
    of one scene are not independent)."""
    by_scene = bootstrap_metrics(pred, target, scenes, n_resamples=n_resamples, seed=seed)
    by_pair = bootstrap_metrics(pred, target, None, n_resamples=n_resamples, seed=seed)
    enough = by_scene.n_units >= MIN_SCENES_FOR_INTERVAL
    out = {
        "ci95": {k: (ci.as_list() if enough else [None, None])
                 for k, ci in by_scene.confidence_interval.items()},
        "ci95_note": (SCENE_INTERVAL_COVERAGE if enough else
                      f"{by_scene.n_units} scene(s), no interval (a scene-level interval needs "
                      f"at least {MIN_SCENES_FOR_INTERVAL} scenes: docs/statistics.md)"),
        "ci95_pair_level": {k: ci.as_list() for k, ci in by_pair.confidence_interval.items()},
        "bootstrap": {"method": "percentile", "resamples": int(n_resamples), "seed": seed,
                      "unit": "scene (ci95); pair (ci95_pair_level)",
                      "scenes": by_scene.n_units, "min_scenes": MIN_SCENES_FOR_INTERVAL,
                      "metrics": list(BOOTSTRAP_METRICS),
                      "undefined_resamples": by_scene.undefined},
    }
    if not enough:
        out["per_scene"] = per_scene(np.asarray(pred, dtype=np.float64),
                                     np.asarray(target, dtype=np.float64), scenes)
    return out


def spread_of(pred, database) -> dict:
    """siqa.evaluation.metrics.prediction_spread against the score range of `database` (a
    siqa.data.records.database_info: the scale the network predicts on)."""
    return prediction_spread(pred, database["score_min"], database["score_max"])


def validation_report(pred, pairs, database) -> dict:
    """The validation metrics of an epoch (evaluate_scores) and the spread of its predictions
    ("spread"): a checkpoint keeps them as its best["val"], so that siqa.load and predict.py
    can tell a near-constant model."""
    target = np.array([p.score for p in pairs], dtype=np.float64)
    return {**evaluate_scores(pred, target), "spread": spread_of(pred, database)}


def score_report(pairs, predictions, database=None) -> dict:
    """Overall metrics with bootstrap intervals and the logistic fit used, per distortion
    type and, where the database says it, per symmetry; with `database` (the
    database_info of the network's training database) the spread of the predictions on its
    scale ("spread", siqa.evaluation.metrics.prediction_spread)."""
    target = np.array([p.score for p in pairs], dtype=np.float64)
    pred = np.asarray(predictions, dtype=np.float64)
    report = evaluate_scores(pred, target, fit_info=True)
    report["logistic"] = report.pop("mapping")
    if database is not None:
        report["spread"] = spread_of(pred, database)
    if len(pairs) >= 3:
        report.update(intervals(pred, target, [p.content for p in pairs]))
    report["per_distortion"] = per_group(pred, target, [p.distortion for p in pairs])
    known = [i for i, p in enumerate(pairs) if p.symmetric is not None]
    if known:
        groups = ["symmetric" if pairs[i].symmetric else "asymmetric" for i in known]
        report["per_symmetry"] = per_group(pred[known], target[known], groups)
    return report


def near_constant_lines(report) -> list:
    """A warning line for each part of a run's report ("train": a final fit's, "val",
    "test") whose predictions are near constant."""
    names = {"train": f"the training predictions ({BEST}, a final fit)",
             "val": "the validation predictions (best epoch)", "test": "the test predictions"}
    return ["warning: " + near_constant_message(report[part]["spread"], what)
            for part, what in names.items()
            if (report.get(part) or {}).get("spread", {}).get("near_constant")]


def split_log_lines(report) -> list:
    """The log lines of a split's test: its metrics, then a warning where the predictions are
    near constant."""
    test = report["test"]
    line = (f"test ({counted(report['pairs']['test'], 'pair')}, "
            f"{counted(report['scenes']['test'], 'scene')}, best epoch {report['best_epoch']}): "
            f"SROCC {fmt_metric(test['srocc'])} PLCC {fmt_metric(test['plcc'])} "
            f"KROCC {fmt_metric(test['krocc'])} RMSE {test['rmse']:.3f}")
    return [line, *near_constant_lines(report)]


def pooled_line(rep) -> str:
    """The log line of one repetition of the k-fold design's pooled out-of-fold report."""
    return (f"pooled out-of-fold, repetition {rep['repetition']} ({counted(rep['pairs'], 'pair')}, "
            f"{counted(rep['scenes'], 'scene')}): SROCC {fmt_metric(rep['srocc'])} PLCC "
            f"{fmt_metric(rep['plcc'])} KROCC {fmt_metric(rep['krocc'])} RMSE {rep['rmse']:.3f}")


FINAL_FIT_RULE = ("the median of the folds' best epochs (rounded up), over the folds whose "
                  "validation predictions at their best epoch were not near constant")


def final_fit_epochs(split_metrics, learning) -> dict:
    """The epoch count of a final fit after k-fold (docs/usage.md#after-k-fold), from the
    folds' metrics.json (`split_metrics`, in split order) and the run's `learning`
    (siqa.evaluation.comparison.judge): FINAL_FIT_RULE, refused ("epochs": None and "why")
    where the run did not learn or no fold's best epoch spread its predictions; the folds
    left out ("near_constant_splits"): their best epoch is that of a network that had not
    learnt, often the first."""
    best = [m["best_epoch"] for m in split_metrics]
    flat = [r for r, m in enumerate(split_metrics)
            if (((m.get("val") or {}).get("spread") or {}).get("near_constant"))]
    kept = [e for r, e in enumerate(best) if r not in flat]
    out = {"rule": FINAL_FIT_RULE, "best_epochs": best, "near_constant_splits": flat,
           "epochs": None, "why": None}
    if not learning["learned"]:
        out["why"] = f"the run did not learn: it {learning['why']}"
    elif not kept:
        out["why"] = "every fold's validation predictions were near constant at its best epoch"
    else:
        out["epochs"] = math.ceil(statistics.median(kept))
    return out


def final_fit_line(rule) -> str:
    """The log line of `final_fit_epochs`: the epoch count, or a warning why there is none,
    or which folds it left out."""
    epochs = ", ".join(map(str, rule["best_epochs"]))
    flat = rule["near_constant_splits"]
    left_out = (f"split{'s' if len(flat) > 1 else ''} {', '.join(map(str, flat))} left out "
                "(near-constant validation predictions at their best epoch)") if flat else ""
    if rule["epochs"] is None:
        return (f"warning: no epoch count for a final fit: the folds' best epochs ({epochs}) "
                f"say nothing about how long to train, since {rule['why']} "
                "(docs/usage.md#after-k-fold)")
    line = (f"final fit (docs/usage.md#after-k-fold): train.epochs={rule['epochs']}, the median "
            f"of the folds' best epochs ({epochs})")
    return f"warning: {line}; {left_out}" if flat else line


def predictions_csv(pairs, predictions, split_of=None) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["name", "split", "content", "distortion", "symmetric", "score", "prediction"])
    for pair, pred in zip(pairs, predictions):
        split = split_of.get(pair.name, "") if split_of else ""
        sym = "" if pair.symmetric is None else int(pair.symmetric)
        writer.writerow([pair.name, split, pair.content, pair.distortion, sym,
                         repr(float(pair.score)), repr(float(pred))])
    return buf.getvalue()


def write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def test_predictions(path) -> dict:
    """{pair name: prediction} of the test rows of a predictions.csv."""
    with open(path, newline="") as f:
        return {row["name"]: float(row["prediction"]) for row in csv.DictReader(f)
                if row["split"] == "test"}


def pooled_out_of_fold(pairs, prediction_files, folds) -> dict:
    """The k-fold design's report: per repetition (`folds` consecutive splits), the test
    predictions of its folds pooled, one per pair, and every metric computed on all pairs
    at once (score_report: intervals, per distortion); then their summary over the
    repetitions. The folds of one repetition test every scene once, so the pooled set is
    the whole database."""
    repetitions = []
    for r, start in enumerate(range(0, len(prediction_files), int(folds))):
        preds = {}
        for path in prediction_files[start:start + int(folds)]:
            preds.update(test_predictions(path))
        chosen = [p for p in pairs if p.name in preds]  # database order
        report = score_report(chosen, [preds[p.name] for p in chosen])
        report.update(repetition=r, pairs=len(chosen), scenes=len({p.content for p in chosen}))
        repetitions.append(report)
    return {"folds": int(folds), "repetitions": repetitions, "summary": summarize(repetitions, unit="repetitions")}


SUMMARY_KEYS = ("srocc", "plcc", "krocc", "rmse", "plcc_logistic", "rmse_logistic")


def summarize(test_reports, unit="splits") -> dict:
    """Median, mean, std (ddof=1 where defined), min, max of each test metric over the
    reports (of splits; of a k-fold run's repetitions with unit="repetitions"), their count
    under `unit`, and the distribution-free interval of the median (order statistics; its
    coverage is given: below 6 reports no interval reaches 95 %, see siqa.evaluation.stats)."""
    out = {unit: len(test_reports)}
    for key in SUMMARY_KEYS:
        values = [r[key] for r in test_reports if r.get(key) is not None]
        if not values:
            out[key] = None
            continue
        low, high, coverage = median_interval(values)
        out[key] = {
            "median": statistics.median(values),
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values),
            "max": max(values),
            "median_ci": [low, high],
            "median_ci_coverage": coverage,
            "values": values,
        }
    return out
