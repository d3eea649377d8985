"""Seeded simulation of the statistics at the field's scene counts: coverage of the
scene-bootstrap interval, and type-I error of the paired tests under a scene-level null.

Model (one "database" per simulation): k scenes of m = 15 pairs, targets ~ U(0, 60); a run's
predictions are target x (1 + slope_s) + offset_s + noise, with scene effects slope_s ~
N(0, 0.15^2) and offset_s ~ N(0, 8^2) and noise ~ N(0, 8^2) per pair. The scene effects are
what makes pairs of one scene dependent (scene-to-scene variation).

1. Coverage: the population value of each metric is computed once on 4,000 scenes; the
   95 % percentile scene bootstrap (siqa.evaluation.stats.bootstrap_metrics) of a k-scene test set
   covers it in what share of the simulations?
   The same for the pair bootstrap (metrics.json's ci95_pair_level: every pair resampled
   on its own, scenes ignored) at 6, 8 and 20 test scenes.
2. Type-I error at 5 %: two runs drawn independently from the same model (so neither is
   better on the population of scenes); how often does each test reject?
   - scene test: siqa.evaluation.stats.paired_scene_test on the pooled predictions (SROCC, RMSE);
   - pair test: the same permutation with every pair its own unit (scenes ignored);
   - Pitman-Morgan on all pairs' residuals target - prediction (independent pairs assumed);
   - Wilcoxon across 10 random 60/20/20 splits (siqa.data.splits.content_splits) of the
     per-split test SROCC (overlapping test sets, one database).
3. The median interval of summary.json (siqa.evaluation.stats.median_interval: order statistics of the
   per-split test metrics, 97.9 % at 10 splits), under the whole random design: draw a
   database of k = 6, 8, 20 scenes (the scene effects belong to the scene: a scene is as
   hard for the method whatever it trains on), draw 10 random 60/20/20 content splits
   (siqa.data.splits.content_splits, repeats=10), give each split its own run (the pair
   noise redrawn: every split trains its own network), take each split's test SROCC and
   RMSE, form the interval. Does it cover
   - the per-database median: the median of the per-split metric over the random splits
     (and runs) of that one database, estimated from --reference single random splits;
   - the population median: the median of the per-split metric over databases AND
     splits, estimated from --population databases with one random split each?

    python benchmarks/scene_statistics.py [--sims 400] [--seed 0] [--median-sims 200]
        [--reference 40] [--population 2000] [--part scene,pair,type1,median]

Prints four Markdown tables (docs/statistics.md quotes them).
"""
import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from siqa.evaluation.stats import (  # noqa: E402
    bootstrap_metrics,
    median_interval,
    paired_scene_test,
    pitman_morgan,
    wilcoxon_signed_rank,
)

PAIRS_PER_SCENE, SLOPE_SD, OFFSET_SD, NOISE_SD = 15, 0.15, 8.0, 8.0
COVERAGE_SCENES = (2, 4, 6, 8, 12, 20)
TYPE1_SCENES = (6, 8, 20)
PAIR_COVERAGE_SCENES = (6, 8, 20)  # test scenes
MEDIAN_SCENES = (6, 8, 20)  # database scenes (Waterloo-IVC I, LIVE 3D II, LIVE 3D I)
DESIGN_SPLITS = 10  # train.repeats of the random design
MEDIAN_METRICS = ("srocc", "rmse")
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


def coverage(ks=COVERAGE_SCENES, sims=400, resamples=1000, seed=0, unit="scene"):
    """{k: {metric: share of simulations whose interval covers the population value}};
    unit "scene": the scene bootstrap (ci95), "pair": the pair bootstrap (ci95_pair_level)."""
    truth = population_values()
    rng = np.random.default_rng(seed)
    out = {}
    for k in ks:
        hits = {m: 0 for m in COVERAGE_METRICS}
        for _ in range(sims):
            y, s = database(k, rng)
            x = run_predictions(y, s, rng)
            ci = bootstrap_metrics(x, y, s if unit == "scene" else None, n_resamples=resamples,
                                   seed=rng).confidence_interval
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


def scene_effects(k, rng):
    """(slope, offset) of each scene: how the method errs on it, drawn with the database."""
    return rng.normal(0, SLOPE_SD, k), rng.normal(0, OFFSET_SD, k)


def split_metrics(target, scenes, effects, splits, rng):
    """{metric: [the test metric of each split]}, each split with its own run (fresh noise)."""
    slope, offset = effects
    out = {m: [] for m in MEDIAN_METRICS}
    for split in splits:
        test = split["test"]
        y, s = target[test], scenes[test]
        x = y * (1 + slope[s]) + offset[s] + rng.normal(0, NOISE_SD, y.size)
        for m in MEDIAN_METRICS:
            out[m].append(metric(m, x, y))
    return out


def median_coverage(ks=MEDIAN_SCENES, sims=200, reference=40, population=2000, seed=0):
    """{k: {"<metric>, per-database median": share, "<metric>, population median": share,
    "stated": the interval's stated coverage}}: how often summary.json's median_ci of
    DESIGN_SPLITS random splits covers each median (module docstring, 3)."""
    from siqa.data.records import StereoPair
    from siqa.data.splits import content_splits

    rng = np.random.default_rng(seed)

    def draw(k):
        y, s = database(k, rng)
        pairs = [StereoPair(str(i), Path("x"), None, 0.0, False, str(si), "x") for i, si in enumerate(s)]
        return y, s, scene_effects(k, rng), pairs

    def one_split(pairs):
        return content_splits(pairs, seed=int(rng.integers(1 << 31)), repeats=1)

    out = {}
    for k in ks:
        pooled = {m: [] for m in MEDIAN_METRICS}  # one split of each of `population` databases
        for _ in range(population):
            y, s, effects, pairs = draw(k)
            for m, v in split_metrics(y, s, effects, one_split(pairs), rng).items():
                pooled[m] += v
        truth = {m: float(np.median(v)) for m, v in pooled.items()}
        hits = {}
        for _ in range(sims):
            y, s, effects, pairs = draw(k)
            design = split_metrics(y, s, effects, content_splits(
                pairs, seed=int(rng.integers(1 << 31)), repeats=DESIGN_SPLITS), rng)
            ref = {m: [] for m in MEDIAN_METRICS}
            for _ in range(reference):
                for m, v in split_metrics(y, s, effects, one_split(pairs), rng).items():
                    ref[m] += v
            for m in MEDIAN_METRICS:
                low, high, stated = median_interval(design[m])
                for name, value in (("per-database median", np.median(ref[m])),
                                    ("population median", truth[m])):
                    key = f"{m}, {name}"
                    hits[key] = hits.get(key, 0) + (low <= value <= high)
        out[k] = {**{key: n / sims for key, n in hits.items()}, "stated": stated}
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
    parser.add_argument("--median-sims", type=int, default=200, help="databases of part 3")
    parser.add_argument("--reference", type=int, default=40,
                        help="random splits estimating each database's own median")
    parser.add_argument("--population", type=int, default=2000,
                        help="databases (one split each) estimating the population median")
    parser.add_argument("--part", default="scene,pair,type1,median",
                        help="which tables (each seeded on its own: a part alone prints the same figures)")
    args = parser.parse_args()
    parts = args.part.split(",")
    if "scene" in parts:
        print(f"Coverage of the 95 % scene-bootstrap interval ({args.sims} simulations, seed {args.seed}):\n")
        print(table(coverage(sims=args.sims, seed=args.seed), "scenes"))
    if "pair" in parts:
        print(f"\nCoverage of the 95 % pair-bootstrap interval, ci95_pair_level ({args.sims} "
              f"simulations, seed {args.seed}):\n")
        print(table(coverage(PAIR_COVERAGE_SCENES, sims=args.sims, seed=args.seed, unit="pair"), "scenes"))
    if "type1" in parts:
        print(f"\nType-I error at 5 % under a scene-level null ({args.sims} simulations, seed {args.seed}):\n")
        print(table(type1(sims=args.sims, seed=args.seed), "scenes"))
    if "median" in parts:
        print(f"\nCoverage of summary.json's median_ci over {DESIGN_SPLITS} random splits "
              f"({args.median_sims} databases, seed {args.seed}; per-database median from "
              f"{args.reference} splits, population median from {args.population} databases):\n")
        print(table(median_coverage(sims=args.median_sims, reference=args.reference,
                                    population=args.population, seed=args.seed), "database scenes"))


if __name__ == "__main__":
    main()
