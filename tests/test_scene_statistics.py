"""The scene-level statistics at the field's scene counts: the paired scene permutation
test against a brute-force reference, and seeded simulations (a few seconds) of its level
and of the scene-bootstrap interval's coverage (benchmarks/scene_statistics.py, whose full
run gives the figures of docs/statistics.md)."""
import itertools
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from siqa.evaluation.stats import MIN_SCENES_FOR_INTERVAL, paired_scene_test

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import scene_statistics as sim  # noqa: E402


def brute_force(a, b, y, scenes, metric):
    """Every assignment of the two runs to the scenes, one scipy call at a time."""
    def value(x):
        if metric == "srocc":
            return stats.spearmanr(x, y).statistic
        if metric == "plcc":
            return stats.pearsonr(x, y).statistic
        return np.sqrt(np.mean((x - y) ** 2))

    labels = sorted(set(scenes))
    observed = value(b) - value(a)
    count = total = 0
    for flips in itertools.product([False, True], repeat=len(labels)):
        swap = np.isin(scenes, [s for s, f in zip(labels, flips) if f])
        d = value(np.where(swap, a, b)) - value(np.where(swap, b, a))
        count += abs(d) >= abs(observed) - 1e-12
        total += 1
    return observed, count / total


@pytest.mark.parametrize("metric", ["srocc", "plcc", "rmse"])
def test_paired_scene_test_equals_brute_force(metric):
    rng = np.random.default_rng(4)
    y, s = sim.database(5, rng)
    a = sim.run_predictions(y, s, rng)
    b = sim.run_predictions(y, s, rng) * 0.9
    got = paired_scene_test(a, b, y, [f"scene{i}" for i in s], metric)
    d, p = brute_force(a, b, y, s, metric)
    assert got.method == "exact" and got.n_swaps == 32 and got.n_scenes == 5
    assert got.statistic == pytest.approx(d, rel=1e-10)
    assert got.pvalue == pytest.approx(p)


def test_paired_scene_test_detects_a_better_run_and_is_seeded():
    rng = np.random.default_rng(1)
    y, s = sim.database(20, rng)
    a = y + rng.normal(0, 15, y.size)
    b = y + rng.normal(0, 5, y.size)  # clearly better on every scene
    res = paired_scene_test(a, b, y, s, "srocc", n_resamples=999, seed=0)
    assert res.method == "monte-carlo" and res.statistic > 0 and res.pvalue <= 0.002
    again = paired_scene_test(a, b, y, s, "rmse", n_resamples=999, seed=0)
    assert again.statistic < 0  # lower RMSE for b
    c = y + rng.normal(0, 10, y.size)
    p1 = paired_scene_test(a, c, y, s, "plcc", n_resamples=499, seed=3).pvalue
    assert p1 == paired_scene_test(a, c, y, s, "plcc", n_resamples=499, seed=3).pvalue


def test_scene_test_keeps_its_level_where_ignoring_scenes_does_not():
    """Scene-level null (two runs drawn from one model with scene effects), 6 and 8 scenes,
    exact scene swaps: the scene test rejects near 5 %; the same permutation over pairs
    (scenes ignored) and Pitman-Morgan on residuals reject far more often."""
    result = sim.type1(ks=(6, 8), sims=120, seed=0, with_splits=False)
    for k in (6, 8):
        assert result[k]["scene test (srocc)"] <= 0.10, result
        assert result[k]["scene test (rmse)"] <= 0.10, result
        assert result[k]["pair test (srocc)"] >= 0.15, result
        assert result[k]["Pitman-Morgan (residuals)"] >= 0.15, result


def test_scene_interval_undercovers_below_the_stated_scene_count():
    """The percentile scene bootstrap covers the population SROCC far less than 95 % with
    2 and 4 scenes (why no interval is reported below MIN_SCENES_FOR_INTERVAL)."""
    result = sim.coverage(ks=(2, 4), sims=80, resamples=300, seed=1)
    assert result[2]["srocc"] < 0.7 and result[4]["srocc"] < 0.85, result
    assert MIN_SCENES_FOR_INTERVAL > 4


def test_reports_give_a_scene_interval_only_from_the_stated_scene_count():
    from siqa.evaluation.metrics import srocc
    from siqa.evaluation.reports import intervals

    rng = np.random.default_rng(2)
    for k in (MIN_SCENES_FOR_INTERVAL - 1, MIN_SCENES_FOR_INTERVAL):
        y, s = sim.database(k, rng)
        x = sim.run_predictions(y, s, rng)
        got = intervals(x, y, [f"s{i}" for i in s], n_resamples=300)
        low, high = got["ci95"]["srocc"]
        if k < MIN_SCENES_FOR_INTERVAL:
            assert (low, high) == (None, None)
            assert got["ci95_note"].startswith(f"{k} scene(s), no interval")
            assert got["per_scene"]["s0"]["srocc"] == pytest.approx(srocc(x[s == 0], y[s == 0]))
            assert len(got["per_scene"]) == k
        else:
            assert low < srocc(x, y) < high and "per_scene" not in got
            assert "simulated coverage" in got["ci95_note"]
        assert None not in got["ci95_pair_level"]["srocc"]


def test_pair_interval_undercovers_where_the_scene_interval_is_reported():
    """ci95_pair_level (pairs resampled as if independent) at 8 test scenes covers the
    population value far less often than its nominal 95 %."""
    result = sim.coverage(ks=(8,), sims=60, resamples=300, seed=1, unit="pair")
    assert result[8]["srocc"] < 0.8 and result[8]["rmse"] < 0.8, result


def test_median_interval_covers_the_database_median_at_its_stated_level():
    """summary.json's median_ci over 10 random splits: its stated coverage is the order
    statistics' 1 - 2 P(Bin(10, 1/2) <= 1); it holds for the database's own median (the
    10 per-split values are draws from that database's split distribution), and the
    population median (over databases too) is covered no more often."""
    result = sim.median_coverage(ks=(8,), sims=30, reference=30, population=200, seed=1)[8]
    assert result["stated"] == pytest.approx(1 - 2 * 11 / 1024)
    for m in ("srocc", "rmse"):
        assert result[f"{m}, per-database median"] >= 0.9, result
        assert result[f"{m}, population median"] <= result[f"{m}, per-database median"], result
