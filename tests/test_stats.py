"""siqa.evaluation.stats against scipy on hand-made inputs: bootstrap statistics, Wilcoxon, F-test."""
import numpy as np
import pytest
from scipy import stats

from siqa.evaluation.stats import (
    bootstrap_metrics,
    holm,
    median_interval,
    min_wilcoxon_pvalue,
    pitman_morgan,
    resample_metrics,
    resample_weights,
    wilcoxon_signed_rank,
)


def tied_scores(n=30, seed=0):
    rng = np.random.default_rng(seed)
    target = np.round(rng.uniform(0, 10, n))  # integer scores: many ties
    pred = np.round(target + rng.normal(0, 3, n), 1)
    pred[:4] = pred[4]  # a tie group in the predictions too
    scenes = [f"s{i % 6}" for i in range(n)]
    return pred, target, scenes


def test_every_resample_equals_scipy_on_the_expanded_sample():
    pred, target, scenes = tied_scores()
    weights = resample_weights(scenes, n_resamples=25, seed=4)
    got = resample_metrics(pred, target, weights)
    for b in range(25):
        counts = weights[b].astype(int)
        x, y = np.repeat(pred, counts), np.repeat(target, counts)
        assert got["srocc"][b] == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
        assert got["krocc"][b] == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)
        assert got["plcc"][b] == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-12)
        assert got["rmse"][b] == pytest.approx(np.sqrt(np.mean((x - y) ** 2)), rel=1e-12)


def test_scene_resamples_take_whole_scenes():
    _, _, scenes = tied_scores()
    weights = resample_weights(scenes, n_resamples=50, seed=1)
    labels = np.array(scenes)
    for row in weights:
        for s in set(scenes):
            assert len(set(row[labels == s])) == 1  # all pairs of a scene drawn together
        drawn = sum(row[labels == s][0] for s in set(scenes))
        assert drawn == 6  # k scenes drawn with replacement
    pair_weights = resample_weights(np.arange(30), n_resamples=50, seed=1)
    assert (pair_weights.sum(axis=1) == 30).all()


def test_monotone_prediction_interval_is_one_one():
    rng = np.random.default_rng(2)
    target = rng.uniform(0, 100, 60)
    pred = np.exp(target / 30)  # monotone, not linear
    scenes = [f"s{i % 8}" for i in range(60)]
    for groups in (scenes, None):
        res = bootstrap_metrics(pred, target, groups, n_resamples=1000, seed=0)
        for key in ("srocc", "krocc"):
            assert res.confidence_interval[key].low == pytest.approx(1.0, abs=1e-12)
            assert res.confidence_interval[key].high == pytest.approx(1.0, abs=1e-12)
        assert res.confidence_interval["plcc"].high < 1.0  # not linear
    assert res.unit == "pair" and res.n_units == 60


def test_random_prediction_interval_contains_zero_and_is_seeded():
    rng = np.random.default_rng(3)
    target, pred = rng.normal(size=80), rng.normal(size=80)
    scenes = [f"s{i % 10}" for i in range(80)]
    res = bootstrap_metrics(pred, target, scenes, n_resamples=2000, seed=7)
    assert res.unit == "scene" and res.n_units == 10 and res.n_resamples == 2000
    for key in ("srocc", "krocc", "plcc"):
        ci = res.confidence_interval[key]
        assert ci.low < 0 < ci.high, key
    again = bootstrap_metrics(pred, target, scenes, n_resamples=2000, seed=7)
    other = bootstrap_metrics(pred, target, scenes, n_resamples=2000, seed=8)
    assert again.confidence_interval == res.confidence_interval
    assert other.confidence_interval != res.confidence_interval
    # the percentile rule, by hand
    dist = res.bootstrap_distribution["srocc"]
    assert res.confidence_interval["srocc"].low == pytest.approx(np.percentile(dist, 2.5))


def test_median_interval_order_statistics():
    x = np.array([9.0, 1, 8, 2, 7, 3, 6, 4, 5, 10])
    low, high, coverage = median_interval(x)
    assert (low, high) == (2.0, 9.0)  # x_(2), x_(9) for n = 10
    assert coverage == pytest.approx(1 - 2 * stats.binom.cdf(1, 10, 0.5))
    ci = stats.quantile_test(x, q=np.median(x), p=0.5).confidence_interval(0.95)
    assert (ci.low, ci.high) == (low, high)
    low, high, coverage = median_interval([3.0, 1, 2, 5, 4])
    assert (low, high) == (1.0, 5.0) and coverage == pytest.approx(0.9375)  # n = 5: below 95 %
    assert median_interval([1.0]) == (None, None, None)


@pytest.mark.parametrize("a,b", [
    ([0.80, 0.82, 0.79, 0.85, 0.81], [0.84, 0.83, 0.86, 0.88, 0.80]),  # n = 5, exact
    ([1, 2, 3, 4, 5, 6, 7, 8, 9], [1.5, 2.7, 2.1, 4.9, 6.2, 5.4, 8.8, 7.1, 10.3]),  # exact
    ([1, 2, 3, 4, 5, 6, 7], [2, 3, 1, 6, 7, 4, 9]),  # ties in |d|: sign flips
    ([1, 2, 3, 4, 5, 6, 7, 8], [1, 3, 5, 4, 8, 6, 7, 12]),  # zeros and ties
    ([0.0] * 20, [0.5, -0.5, 1, 1, 2, -1, 3, 0.5, 1.5, 2, 2, -0.25, 1, 4, 3, 0.75, 1, 2, -2, 5]),
])
def test_wilcoxon_equals_scipy(a, b):
    got = wilcoxon_signed_rank(a, b)
    want = stats.wilcoxon(np.asarray(b, float) - np.asarray(a, float))
    assert got.statistic == pytest.approx(want.statistic)
    assert got.pvalue == pytest.approx(want.pvalue, rel=1e-9)
    assert got.median_difference == pytest.approx(np.median(np.subtract(b, a)))


def test_wilcoxon_large_sample_and_floor_at_five_splits():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=60), rng.normal(0.3, 1, size=60)
    got, want = wilcoxon_signed_rank(a, b), stats.wilcoxon(b - a)
    assert got.method == "normal"
    assert got.pvalue == pytest.approx(want.pvalue, rel=1e-9)
    # five splits, B better on every one: the smallest two-sided p-value, 2 / 2^5
    best = wilcoxon_signed_rank([0.1, 0.2, 0.3, 0.4, 0.5], [0.2, 0.4, 0.6, 0.8, 1.0])
    assert best.pvalue == pytest.approx(0.0625) and best.method == "exact"


def test_scene_interval_is_a_property_of_the_data_not_of_precision_or_order():
    """The scene-level interval depends on the scores and their scenes only: float32
    predictions (what the network outputs) give the float64 interval to 1e-5, and listing
    the pairs in another order gives the same interval (scenes are resampled by label)."""
    rng = np.random.default_rng(3)
    target = rng.uniform(0, 80, 120)
    pred = target + rng.normal(0, 12, 120)
    scenes = np.repeat([f"s{i}" for i in range(8)], 15)
    want = bootstrap_metrics(pred, target, scenes, n_resamples=1000, seed=0).confidence_interval
    low_precision = bootstrap_metrics(pred.astype(np.float32), target, scenes,
                                      n_resamples=1000, seed=0).confidence_interval
    order = rng.permutation(120)
    shuffled = bootstrap_metrics(pred[order], target[order], scenes[order],
                                 n_resamples=1000, seed=0).confidence_interval
    for key in ("srocc", "krocc", "plcc", "rmse"):
        scale = max(1.0, abs(want[key].high))
        for got in (low_precision[key], shuffled[key]):
            assert abs(got.low - want[key].low) <= 1e-5 * scale, key
            assert abs(got.high - want[key].high) <= 1e-5 * scale, key


def test_wilcoxon_winner_is_the_sign_of_the_rank_sums_not_the_median_with_zeros():
    """The issue's case: 11 zero and 9 positive differences. The median of all 20
    differences is 0 (the former rule named the baseline), but every non-zero difference
    favours b: R+ = 45, R- = 0, exact p = 2 / 2^9."""
    a = np.zeros(20)
    b = np.r_[np.zeros(11), np.arange(1, 10) * 0.01]
    got = wilcoxon_signed_rank(a, b)
    assert got.median_difference == 0.0
    assert (got.r_plus, got.r_minus, got.direction) == (45.0, 0.0, 1)
    assert got.pvalue == pytest.approx(2 / 2 ** 9) and round(got.pvalue, 4) == 0.0039
    # zeros dropped first, then scipy's exact test: the same p; scipy's default on all 20
    # differences (zeros present, len(d) = 20 > 13) takes the normal approximation instead
    assert got.pvalue == pytest.approx(stats.wilcoxon(b[b != 0]).pvalue, rel=1e-12)
    assert stats.wilcoxon(b - a).pvalue == pytest.approx(0.00769, abs=1e-4)
    assert wilcoxon_signed_rank(b, a).direction == -1


def test_minimum_wilcoxon_pvalue_by_number_of_splits():
    assert min_wilcoxon_pvalue(3) == 0.25
    assert min_wilcoxon_pvalue(5) == 0.0625
    for n in (3, 6, 8):  # attained when all differences have one sign (exact distribution)
        got = wilcoxon_signed_rank(np.zeros(n), np.arange(1, n + 1) * 0.1)
        assert got.pvalue == pytest.approx(min_wilcoxon_pvalue(n))
        assert got.pvalue == pytest.approx(stats.wilcoxon(np.arange(1, n + 1) * 0.1).pvalue)


def test_holm_by_hand():
    # sorted 0.01, 0.02, 0.03, 0.04 -> 4 x 0.01, 3 x 0.02, 2 x 0.03, 1 x 0.04, running max
    got = holm([0.03, 0.01, 0.04, 0.02])
    assert got == pytest.approx([0.06, 0.04, 0.06, 0.06])
    # a NaN is not part of the family; capped at 1
    got = holm([0.5, np.nan, 0.01])
    assert np.isnan(got[1]) and got[0] == pytest.approx(0.5) and got[2] == pytest.approx(0.02)
    assert holm([0.04, 0.3]) == pytest.approx([0.08, 0.3])
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])  # 2 x 0.8 capped at 1, then the running max
    assert np.isnan(holm([np.nan])).all()


def test_pitman_morgan_equals_the_correlation_test_of_sum_and_difference():
    rng = np.random.default_rng(11)
    shared = rng.normal(size=40)  # paired residuals: strongly correlated
    ra = shared + rng.normal(0, 0.6, 40)
    rb = shared + rng.normal(0, 0.3, 40)
    res = pitman_morgan(ra, rb)
    want = stats.pearsonr(ra + rb, ra - rb)
    assert res.pvalue == pytest.approx(want.pvalue, rel=1e-9)
    assert res.df == 38 and res.statistic > 0  # a varies more
    assert res.var_a == pytest.approx(np.var(ra, ddof=1))
    # the unpaired F-test on the same residuals cannot see the difference as clearly
    f = np.var(ra, ddof=1) / np.var(rb, ddof=1)
    assert res.pvalue < 2 * min(stats.f.cdf(f, 39, 39), stats.f.sf(f, 39, 39))
    swapped = pitman_morgan(rb, ra)
    assert swapped.statistic == pytest.approx(-res.statistic)
    assert swapped.pvalue == pytest.approx(res.pvalue)
    with pytest.raises(ValueError):
        pitman_morgan([1.0, 2.0], [1.0, 3.0])


def test_constant_predictions_use_one_tolerance_in_metrics_and_bootstrap():
    """Predictions that differ only by round-off (relative spread 1e-13) are constant for
    the metrics and for every bootstrap resample, the rank correlations included; a
    relative spread of 1e-6 is not constant for either."""
    from siqa.evaluation.metrics import evaluate_scores

    target = np.linspace(0, 50, 40)
    scenes = [f"s{i % 8}" for i in range(40)]
    flat = 1000.0 + np.arange(40) * 1e-11
    assert not np.all(flat == flat[0])
    got = evaluate_scores(flat, target)
    assert got["srocc"] is None and got["plcc"] is None and got["krocc"] is None
    res = bootstrap_metrics(flat, target, scenes, n_resamples=200, seed=0)
    assert all(res.undefined[k] == 200 for k in ("srocc", "krocc", "plcc"))
    assert res.confidence_interval["srocc"].low is None
    varied = 1000.0 + np.arange(40) * 1e-3
    assert evaluate_scores(varied, target)["srocc"] == pytest.approx(1.0)
    res = bootstrap_metrics(varied, target, scenes, n_resamples=200, seed=0)
    assert res.undefined["srocc"] == 0 and res.confidence_interval["srocc"].low == pytest.approx(1.0)


# ---------------------------------------------------------------- corrected resampled t
def test_corrected_t_without_the_correction_is_scipys_paired_t():
    from siqa.evaluation.stats import corrected_resampled_t

    rng = np.random.default_rng(4)
    a, b = rng.normal(0.7, 0.05, 10), rng.normal(0.72, 0.05, 10)
    res = corrected_resampled_t(a, b, 0.0)
    want = stats.ttest_rel(b, a)
    assert res.statistic == pytest.approx(want.statistic) and res.pvalue == pytest.approx(want.pvalue)
    assert res.df == 9 and res.direction == int(np.sign(np.mean(b - a)))


def test_corrected_t_by_hand_and_never_smaller_than_the_plain_test():
    """d = 1, 2, 3, 4: mean 2.5, variance 5/3; with n_test/n_train = 1/4 the variance factor
    is 1/4 + 1/4 = 1/2, t = 2.5 / sqrt(5/6) = 2.7386, 3 df."""
    from siqa.evaluation.stats import corrected_resampled_t

    res = corrected_resampled_t([0, 0, 0, 0], [1, 2, 3, 4], 0.25)
    t = 2.5 / np.sqrt(5 / 6)
    assert res.statistic == pytest.approx(t) and res.statistic == pytest.approx(2.7386, abs=1e-4)
    assert res.pvalue == pytest.approx(2 * stats.t.sf(t, 3)) and res.mean_difference == 2.5
    plain = corrected_resampled_t([0, 0, 0, 0], [1, 2, 3, 4], 0.0).pvalue
    assert plain < res.pvalue < corrected_resampled_t([0, 0, 0, 0], [1, 2, 3, 4], 1.0).pvalue


def test_corrected_t_edge_cases():
    from siqa.evaluation.stats import corrected_resampled_t

    assert np.isnan(corrected_resampled_t([0.5], [0.6], 0.25).pvalue)
    same = corrected_resampled_t([0.5, 0.6], [0.5, 0.6], 0.25)
    assert same.pvalue == 1.0 and same.direction == 0
    shifted = corrected_resampled_t([0.5, 0.6], [0.4, 0.5], 0.25)  # every difference -0.1
    assert shifted.pvalue == 0.0 and shifted.direction == -1
    with pytest.raises(ValueError):
        corrected_resampled_t([1, 2], [1, 2, 3], 0.25)
    with pytest.raises(ValueError):
        corrected_resampled_t([1, 2], [1, 3], -0.5)


def test_corrected_t_does_not_move_with_split_order_or_float32():
    from siqa.evaluation.stats import corrected_resampled_t

    rng = np.random.default_rng(9)
    a, b = rng.normal(0.7, 0.05, 10), rng.normal(0.73, 0.05, 10)
    ref = corrected_resampled_t(a, b, 0.375)
    order = rng.permutation(10)
    shuffled = corrected_resampled_t(a[order], b[order], 0.375)
    single = corrected_resampled_t(a.astype(np.float32), b.astype(np.float32), 0.375)
    for other, tol in ((shuffled, 1e-12), (single, 1e-5)):
        assert other.statistic == pytest.approx(ref.statistic, rel=tol)
        assert other.pvalue == pytest.approx(ref.pvalue, rel=tol)
        assert other.direction == ref.direction and other.df == ref.df
