"""Seeded simulation of the statistics at the field's scene counts: coverage of the
scene-bootstrap interval, and type-I error of the paired tests under a scene-level null.

Model (one "database" per simulation): k scenes of m = 15 pairs, targets ~ U(0, 60); a run's
predictions are target x (1 + slope_s) + offset_s + noise, with scene effects slope_s ~
N(0, 0.15^2) and offset_s ~ N(0, 8^2) and noise ~ N(0, 8^2) per pair. The scene effects are
what makes pairs of one scene dependent (scene-to-scene variation).

1. Coverage: the population value of each metric is computed once on 4,000 scenes; the
   95 % percentile scene bootstrap (siqa.stats.bootstrap_metrics) of a k-scene test set
   covers it in what share of the simulations?
2. Type-I error at 5 %: two runs drawn independently from the same model (so neither is
   better on the population of scenes); how often does each test reject?
   - scene test: siqa.stats.paired_scene_test on the pooled predictions (SROCC, RMSE);
   - pair test: the same permutation with every pair its own unit (scenes ignored);
   - Pitman-Morgan on all pairs' residuals target - prediction (independent pairs assumed);
   - Wilcoxon across 10 random 60/20/20 splits (siqa.data.splits.content_splits) of the
     per-split test SROCC (overlapping test sets, one database).

    python benchmarks/scene_statistics.py [--sims 400] [--seed 0]

Prints two Markdown tables (docs/statistics.md quotes them).
"""
import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from siqa.stats import (bootstrap_metrics, paired_scene_test, pitman_morgan,  # noqa: E402
                        wilcoxon_signed_rank)

PAIRS_PER_SCENE, SLOPE_SD, OFFSET_SD, NOISE_SD = 15, 0.15, 8.0, 8.0
COVERAGE_SCENES = (2, 4, 6, 8, 12, 20)
TYPE1_SCENES = (6, 8, 20)
COVERAGE_METRICS = ("srocc", "krocc", "plcc", "rmse")


def database(k, rng):
    """targets (k*m,), scene ids (k*m,)."""
    target = rng.uniform(0, 60, size=k * PAIRS_PER_SCENE)
    return target, np.repeat(np.arange(k), PAIRS_PER_SCENE)


def run_predictions(target, scenes, rng):
    k = scenes.max() + 1
    slope = rng.normal(0, SLOPE_SD, k)[scenes]
    offset = rng.normal(0, OFFSET_SD, k)[scenes]
    return target * (1 + slope) + offset + rng.normal(0, NOISE_SD, target.size)


def metric(name, x, y):
    if name == "srocc":
        return stats.spearmanr(x, y).statistic
    if name == "krocc":
        return stats.kendalltau(x, y).statistic
    if name == "plcc":
        return stats.pearsonr(x, y).statistic
    return float(np.sqrt(np.mean((x - y) ** 2)))


def population_values(seed=12345, k=4000):
    rng = np.random.default_rng(seed)
    y, s = database(k, rng)
    x = run_predictions(y, s, rng)
    return {m: metric(m, x, y) for m in COVERAGE_METRICS}


def coverage(ks=COVERAGE_SCENES, sims=400, resamples=1000, seed=0):
    """{k: {metric: share of simulations whose scene interval covers the population value}}."""
    truth = population_values()
    rng = np.random.default_rng(seed)
    out = {}
    for k in ks:
        hits = {m: 0 for m in COVERAGE_METRICS}
        for _ in range(sims):
            y, s = database(k, rng)
            x = run_predictions(y, s, rng)
            ci = bootstrap_metrics(x, y, s, n_resamples=resamples, seed=rng).confidence_interval
            for m in COVERAGE_METRICS:
                low, high = ci[m].low, ci[m].high
                hits[m] += low is not None and low <= truth[m] <= high
        out[k] = {m: hits[m] / sims for m in COVERAGE_METRICS}
    return out


def type1(ks=TYPE1_SCENES, sims=400, swaps=999, seed=0, alpha=0.05, with_splits=True):
    """{k: {test: rejection rate at alpha}} under the scene-level null."""
    from siqa.data.records import StereoPair
    from siqa.data.splits import content_splits

    rng = np.random.default_rng(seed)
    out = {}
    for k in ks:
        rejects = {}

        def count(name, p):
            rejects[name] = rejects.get(name, 0) + (p < alpha)

        for _ in range(sims):
            y, s = database(k, rng)
            a, b = run_predictions(y, s, rng), run_predictions(y, s, rng)
            for m in ("srocc", "rmse"):
                count(f"scene test ({m})",
                      paired_scene_test(a, b, y, s, m, n_resamples=swaps, seed=rng).pvalue)
            count("pair test (srocc)", paired_scene_test(a, b, y, np.arange(y.size), "srocc",
                                                         n_resamples=swaps, seed=rng).pvalue)
            count("Pitman-Morgan (residuals)", pitman_morgan(y - a, y - b).pvalue)
            if with_splits:
                pairs = [StereoPair(str(i), Path("x"), None, 0.0, False, str(si), "x")
                         for i, si in enumerate(s)]
                splits = content_splits(pairs, seed=int(rng.integers(1 << 31)), repeats=10)
                sa = [metric("srocc", a[sp["test"]], y[sp["test"]]) for sp in splits]
                sb = [metric("srocc", b[sp["test"]], y[sp["test"]]) for sp in splits]
                count("Wilcoxon, 10 random splits (srocc)", wilcoxon_signed_rank(sa, sb).pvalue)
        out[k] = {name: n / sims for name, n in rejects.items()}
    return out


def table(result, first):
    keys = list(next(iter(result.values())))
    lines = [f"| {first} | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for k, row in result.items():
        lines.append(f"| {k} | " + " | ".join(f"{100 * row[c]:.1f} %" for c in keys) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--sims", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"Coverage of the 95 % scene-bootstrap interval ({args.sims} simulations, seed {args.seed}):\n")
    print(table(coverage(sims=args.sims, seed=args.seed), "scenes"))
    print(f"\nType-I error at 5 % under a scene-level null ({args.sims} simulations, seed {args.seed}):\n")
    print(table(type1(sims=args.sims, seed=args.seed), "scenes"))


if __name__ == "__main__":
    main()
