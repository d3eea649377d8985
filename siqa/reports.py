"""What a run or an evaluation writes: metrics.json, predictions.csv, summary.json."""
import csv
import io
import json
import statistics

import numpy as np

from siqa.files import atomic_write_text
from siqa.metrics import evaluate_scores, per_group


def score_report(pairs, predictions) -> dict:
    """Overall metrics, per distortion type and, where the database says it, per symmetry."""
    target = np.array([p.score for p in pairs], dtype=np.float64)
    pred = np.asarray(predictions, dtype=np.float64)
    report = evaluate_scores(pred, target)
    report["per_distortion"] = per_group(pred, target, [p.distortion for p in pairs])
    known = [i for i, p in enumerate(pairs) if p.symmetric is not None]
    if known:
        groups = ["symmetric" if pairs[i].symmetric else "asymmetric" for i in known]
        report["per_symmetry"] = per_group(pred[known], target[known], groups)
    return report


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


SUMMARY_KEYS = ("srocc", "plcc", "krocc", "rmse", "plcc_logistic", "rmse_logistic")


def summarize(test_reports) -> dict:
    """Median, mean and std (ddof=1 where defined) of each test metric over repeated splits."""
    out = {"repeats": len(test_reports)}
    for key in SUMMARY_KEYS:
        values = [r[key] for r in test_reports if r.get(key) is not None]
        if not values:
            out[key] = None
            continue
        out[key] = {
            "median": statistics.median(values),
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values,
        }
    return out
