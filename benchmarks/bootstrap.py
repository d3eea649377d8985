"""Time the scene-level bootstrap of the test metrics: vectorised vs a loop of scipy calls.

For test sets the size of LIVE 3D Phase I (73 pairs, 4 scenes), Waterloo-IVC 3D Phase II
(92 pairs, 2 scenes) and a whole-database cross evaluation (460 pairs, 10 scenes): the
project's `bootstrap_metrics` (all resamples as one weight matrix) against the plain way,
one resample at a time with scipy's spearmanr / kendalltau / pearsonr on the expanded
sample (`--loop-resamples` of them, scaled to the full count). Prints seconds and ratios.

    python benchmarks/bootstrap.py [--resamples 2000] [--loop-resamples 200]
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from siqa.evaluation.stats import bootstrap_metrics, resample_weights  # noqa: E402


def loop(pred, target, scenes, resamples, seed=0):
    weights = resample_weights(scenes, resamples, seed).astype(int)
    for w in weights:
        x, y = np.repeat(pred, w), np.repeat(target, w)
        stats.spearmanr(x, y), stats.kendalltau(x, y), stats.pearsonr(x, y)
        np.sqrt(np.mean((x - y) ** 2))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--loop-resamples", type=int, default=200)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"{'test set':>28} | vectorised, {args.resamples} resamples | scipy loop (scaled) | ratio")
    for n, k in ((73, 4), (92, 2), (460, 10)):
        target = rng.uniform(0, 60, n)
        pred = target + rng.normal(0, 8, n)
        scenes = [f"s{i % k}" for i in range(n)]
        t0 = time.perf_counter()
        bootstrap_metrics(pred, target, scenes, n_resamples=args.resamples, seed=0)
        vec = time.perf_counter() - t0
        t0 = time.perf_counter()
        loop(pred, target, scenes, args.loop_resamples)
        slow = (time.perf_counter() - t0) * args.resamples / args.loop_resamples
        print(f"{f'{n} pairs, {k} scenes':>28} | {vec:10.3f} s | {slow:10.2f} s | {slow / vec:6.1f}x")


if __name__ == "__main__":
    main()
