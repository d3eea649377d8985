"""How much the 5-parameter logistic flatters unrelated predictions, by the number of items.

Predictions and scores drawn independently (normal; scores 40 + 10 N(0, 1)), `--draws`
times per size; for each size, the median and 95th percentile of PLCC after the
non-decreasing logistic fit (siqa.evaluation.metrics.fit_logistic, forced: the project's minimum
count is left out) next to the median raw |PLCC|. This is what set
siqa.evaluation.metrics.MIN_LOGISTIC_ITEMS (docs/statistics.md).

    python benchmarks/logistic_null.py [--draws 300] [--sizes 5,8,12,16,20,30,50] [--seed 0]
"""
import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=300)
    parser.add_argument("--sizes", default="5,8,12,16,20,30,50")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from siqa.evaluation import metrics

    metrics.MIN_LOGISTIC_ITEMS = 5  # as many items as parameters: what the fit alone does
    rng = np.random.default_rng(args.seed)
    print("| items | PLCC after the logistic: median | 95th percentile | fits (others flat) | raw abs PLCC: median |")
    print("|---|---|---|---|---|")
    for n in map(int, args.sizes.split(",")):
        after, raw = [], []
        for _ in range(args.draws):
            x, y = rng.normal(size=n), 40 + 10 * rng.normal(size=n)
            result = metrics.evaluate_scores(x, y)
            raw.append(abs(result["plcc"]))
            if result["plcc_logistic"] is not None:
                after.append(result["plcc_logistic"])
        print(f"| {n} | {np.median(after):.3f} | {np.quantile(after, 0.95):.3f} | "
              f"{len(after)} of {args.draws} | {np.median(raw):.3f} |")


if __name__ == "__main__":
    main()
