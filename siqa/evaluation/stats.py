"""Uncertainty and significance for IQA results: bootstrap intervals, Wilcoxon, Holm,
paired variance tests.

    test pairs (pred, target, scene)            N repeated splits of runs A and B
            |                                              |
    resample scenes with replacement           paired differences d = B - A per split
    (B x k multinomial counts -> weights              |
     on pairs, one matrix for all resamples)   Wilcoxon signed-rank: statistic, p-value,
            |                                  direction = sign(R+ - R-); Holm per family
    SROCC, KROCC, PLCC, RMSE of every                  |
    resample at once (weighted statistics)     per split: Pitman-Morgan test of the paired
            |                                  residuals after each run's logistic
    percentile interval [2.5 %, 97.5 %]

Results are named, as in `scipy.stats`: `.statistic`, `.pvalue`, `.confidence_interval`.

Bootstrap. A resample of the test set draws its k scenes (or, for the pair-level interval,
its n pairs) with replacement; a scene drawn twice contributes all its pairs twice. A
resample is therefore a vector of integer weights on the pairs, and all resamples are one
(B, n) matrix, so that every statistic is computed for all B resamples in a few matrix
operations (no Python loop per resample):
- PLCC: the weighted Pearson correlation (weights = multiplicities);
- SROCC: the Pearson correlation of the mid-ranks of the resampled multiset. The order of
  the values does not change between resamples, so x and y are sorted once; the mid-rank of
  a tie group is (weight of the smaller values) + (weight of the group + 1) / 2;
- KROCC: Kendall's tau-b of the multiset, sum_ij w_i w_j sign(dx_ij) sign(dy_ij) /
  sqrt((W^2 - sum_g Wx_g^2)(W^2 - sum_g Wy_g^2)) over tie groups g: one (B, n) x (n, n)
  product (n <= KENDALL_MAX_ITEMS, otherwise no KROCC interval);
- RMSE: sqrt(weighted mean squared error) of the raw predictions.
Each equals the scipy statistic of the expanded resample (tested). PLCC and RMSE after the
logistic get no interval: refitting the logistic in every resample would be a Python loop of
curve_fit calls. The scene is the independent unit (pairs of one scene share their content,
and test sets hold few scenes): the scene-level interval is the one to quote; the
pair-level interval is reported beside it, labelled, for comparison with papers that
resample pairs. Percentile intervals; resamples where a statistic is undefined (constant
predictions or targets) are left out and counted.

Wilcoxon signed-rank test (paired, two-sided). Zero differences are dropped (scipy's
"wilcox" zero method); statistic = min(R+, R-); the direction of the difference is the sign
of R+ - R- (`.direction`), never the median of all differences, which with many zeros can
point the other way. The p-value is chosen by this project's rule, on n = the number of
non-zero differences: exact null distribution when n <= 50 without ties or zeros; with
ties or zeros and n <= 13, the exact distribution over the 2^n sign flips of the
mid-ranks; otherwise the normal approximation with the tie correction and no continuity
correction. scipy.stats.wilcoxon's default (method="auto") decides on len(d) *with* the
zeros: with zeros or ties it flips signs only when len(d) <= 13, so with 14-19 differences
of which some are zero, scipy uses the normal approximation where this rule is exact (p
differs by up to about 0.1); without zeros and ties the two agree. Assumes independent,
symmetrically distributed differences (one per split; overlapping splits are not
independent: see docs/statistics.md). With n differences the smallest two-sided p is
2 / 2^n (`min_wilcoxon_pvalue`): 0.25 with 3 splits, 0.0625 with 5; at least 6 are needed
for p < 0.05.

Corrected resampled t-test (`corrected_resampled_t`; Nadeau & Bengio 2003, Machine Learning
52; for repeated k-fold, Bouckaert & Frank 2004): the J per-split differences d = b - a of
one metric, t = mean(d) / sqrt((1/J + n_test/n_train) var(d)) with var of ddof 1, J - 1
degrees of freedom, two-sided. The splits' training sets overlap, so their differences are
correlated and the plain paired t-test (the same without the n_test/n_train term) and the
Wilcoxon test over splits are anti-conservative; the term widens the variance by the
correlation that Nadeau and Bengio derive for random resampling. A heuristic correction
(it assumes that correlation), reported beside the Wilcoxon test; the scene test stays the
one to quote for a k-fold comparison.

Holm's step-down correction (`holm`) adjusts the p-values of one family of tests (the
metrics of one comparison; the per-split variance tests of one comparison); winners are
named on the adjusted p only.

Pitman-Morgan test of equal variances of two *paired* samples (`pitman_morgan`): on the
same test items, var(a) = var(b) exactly when a + b and a - b are uncorrelated, and the
Pearson correlation of (a + b, a - b) is tested with t = r sqrt(n - 2) / sqrt(1 - r^2),
n - 2 degrees of freedom (Pitman 1939, Morgan 1939). Used on the residuals of two runs after
their logistics, it respects the pairing that the F-test ignores. Assumes bivariate normal
residuals and independent items: pairs of one scene are not independent, so on test sets of
a few scenes its level is not guaranteed (it is a per-split, descriptive test; the
scene-level tests below are the ones to quote).

Paired scene permutation test (`paired_scene_test`): two runs' predictions on the same
pairs (e.g. the pooled out-of-fold predictions of the k-fold design), the difference
D = metric(B) - metric(A) over all pairs. Under the null hypothesis that within every scene
the two runs' predictions are exchangeable, swapping them on any subset of scenes leaves the
distribution of D unchanged; the p-value is the share of the 2^k scene swaps (all of them
for k <= EXACT_SWAP_MAX_SCENES, else `n_resamples` random ones plus the observed one) with
|D*| >= |D|. The scene is the unit, so scene-to-scene variation cannot inflate the level
(simulated in docs/statistics.md); it needs no independence between the pairs of a scene.
With k scenes the smallest p is 2 / 2^k: 0.031 with 6 scenes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import special
from scipy import stats as scipy_stats

from siqa.evaluation.metrics import CONSTANT_RTOL

BOOTSTRAP_METRICS = ("srocc", "krocc", "plcc", "rmse")
DEFAULT_RESAMPLES = 2000
KENDALL_MAX_ITEMS = 3000  # the (n, n) sign matrix of KROCC: 72 MB at this size
CHUNK_ELEMENTS = 4_000_000  # resamples x pairs per block of the bootstrap (32 MB per matrix)
EXACT_WILCOXON_MAX = 50
# No scene-level interval below this many scenes: the simulated coverage of the nominal 95 %
# percentile scene bootstrap (benchmarks/scene_statistics.py, 400 simulations, seed 0) is
# 29-44 % with 2 scenes, 64-77 % with 4, 70-80 % with 6, 81-86 % with 8, 79-85 % with 12
# and 88-91 % with 20 (SROCC, KROCC, PLCC, RMSE): from 8 scenes on it is reported, with
# that coverage stated; below, the per-scene values instead.
MIN_SCENES_FOR_INTERVAL = 8
SCENE_INTERVAL_COVERAGE = ("nominal 95 %; simulated coverage 81-86 % at 8 scenes, 79-85 % at "
                           "12, 88-91 % at 20 (docs/statistics.md)")
EXACT_SWAP_MAX_SCENES = 12  # paired_scene_test: all 2^k scene swaps up to here
PAIRED_TEST_METRICS = ("srocc", "plcc", "rmse")
SIGN_FLIP_MAX = 13


@dataclass(frozen=True)
class ConfidenceInterval:
    low: float | None
    high: float | None

    def as_list(self):
        return [self.low, self.high]


@dataclass
class BootstrapResult:
    """confidence_interval[metric] (ConfidenceInterval); bootstrap_distribution[metric]
    (the B resampled values, NaN where undefined); unit: 'scene' or 'pair'."""

    confidence_interval: dict
    bootstrap_distribution: dict = field(repr=False)
    unit: str
    n_units: int
    n_resamples: int
    confidence_level: float
    undefined: dict


@dataclass(frozen=True)
class WilcoxonResult:
    statistic: float  # min(R+, R-)
    pvalue: float
    n: int  # differences left after dropping zeros
    method: str  # 'exact', 'sign-flip' or 'normal'
    median_difference: float  # median of b - a (all pairs, zeros included): descriptive only
    r_plus: float = math.nan  # rank sum of the positive differences b - a
    r_minus: float = math.nan
    direction: int = 0  # sign(R+ - R-): +1 when b tends to exceed a; the winner's sign


@dataclass(frozen=True)
class CorrectedTResult:
    statistic: float  # t
    pvalue: float  # two-sided
    df: int  # splits - 1
    mean_difference: float  # mean of b - a
    test_train_ratio: float  # n_test / n_train of the splits
    direction: int  # sign of the mean difference: +1 when b tends to exceed a


@dataclass(frozen=True)
class PitmanMorganResult:
    statistic: float  # t of the correlation of (a + b, a - b)
    pvalue: float  # two-sided
    df: int  # n - 2
    var_a: float
    var_b: float
    correlation: float  # Pearson r of (a, b)


@dataclass(frozen=True)
class PairedSceneTestResult:
    statistic: float  # metric(B) - metric(A) on all pairs
    pvalue: float  # two-sided
    n_scenes: int
    n_swaps: int  # scene swaps evaluated (2^k when exact)
    method: str  # 'exact' or 'monte-carlo'
    metric: str


def _rng(seed):
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def resample_weights(groups, n_resamples=DEFAULT_RESAMPLES, seed=0):
    """(B, n) integer weights: each row resamples the distinct `groups` with replacement
    (every pair its own group for a pair-level bootstrap) and counts how often each pair is
    drawn. `groups` holds one label per pair."""
    labels, index = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    k = labels.size
    counts = _rng(seed).multinomial(k, np.full(k, 1.0 / k), size=int(n_resamples))
    return counts[:, index].astype(np.float64)


def _weighted_pearson(x, y, w):
    """Row-wise weighted Pearson correlation; x, y: (n,) or (B, n); w: (B, n). NaN where
    undefined."""
    total = w.sum(axis=1, keepdims=True)
    mx = (w * x).sum(axis=1, keepdims=True) / total
    my = (w * y).sum(axis=1, keepdims=True) / total
    dx, dy = x - mx, y - my
    sxy = (w * dx * dy).sum(axis=1)
    sxx = (w * dx * dx).sum(axis=1)
    syy = (w * dy * dy).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = sxy / np.sqrt(sxx * syy)
    # a constant resample leaves only round-off in dx or dy: relative std below
    # CONSTANT_RTOL, the rule of siqa.evaluation.metrics (var <= rtol^2 mean^2, var = sxx / total)
    tol = CONSTANT_RTOL ** 2
    bad = ((sxx <= tol * total[:, 0] * mx[:, 0] ** 2) | ~(sxx > 0)
           | (syy <= tol * total[:, 0] * my[:, 0] ** 2) | ~(syy > 0))
    r = np.clip(r, -1.0, 1.0)
    r[bad] = np.nan
    return r


def _constant_rows(v, w):
    """Rows of weights w under which v is constant: weighted std <= CONSTANT_RTOL |mean|."""
    total = w.sum(axis=1)
    mean = (w * v).sum(axis=1) / total
    var = (w * (v - mean[:, None]) ** 2).sum(axis=1) / total
    return ~(var > CONSTANT_RTOL ** 2 * mean ** 2)


def _tie_groups(v):
    """Sorting order of v, start of each tie group in that order, group of every item."""
    order = np.argsort(v, kind="stable")
    sv = v[order]
    starts = np.flatnonzero(np.r_[True, sv[1:] != sv[:-1]])
    group_sorted = np.cumsum(np.r_[True, sv[1:] != sv[:-1]]) - 1
    group = np.empty(v.size, dtype=np.int64)
    group[order] = group_sorted
    return order, starts, group


def _weighted_midranks(v, w):
    """(B, n) mid-ranks of v in each resampled multiset (weights w)."""
    order, starts, group = _tie_groups(v)
    group_weight = np.add.reduceat(w[:, order], starts, axis=1)  # (B, G)
    before = np.cumsum(group_weight, axis=1) - group_weight
    midrank = before + (group_weight + 1.0) / 2.0
    return midrank[:, group], group_weight


def _weighted_kendall(x, y, w, gx_weight, gy_weight):
    sign = np.sign(x[:, None] - x[None, :]) * np.sign(y[:, None] - y[None, :])
    s = np.einsum("bi,bi->b", w @ sign, w)
    total = w.sum(axis=1)
    nx = total ** 2 - (gx_weight ** 2).sum(axis=1)
    ny = total ** 2 - (gy_weight ** 2).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        tau = s / np.sqrt(nx * ny)
    tau[~((nx > 0) & (ny > 0))] = np.nan
    return np.clip(tau, -1.0, 1.0)


def resample_metrics(pred, target, weights) -> dict:
    """SROCC, KROCC, PLCC, RMSE of every resample: {metric: (B,) array, NaN where
    undefined}. `weights` (B, n) are the multiplicities of the pairs in each resample."""
    x = np.asarray(pred, dtype=np.float64).reshape(-1)
    y = np.asarray(target, dtype=np.float64).reshape(-1)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    rank_x, gx = _weighted_midranks(x, w)
    rank_y, gy = _weighted_midranks(y, w)
    out = {
        "srocc": _weighted_pearson(rank_x, rank_y, w),
        "plcc": _weighted_pearson(x, y, w),
        "rmse": np.sqrt((w * (x - y) ** 2).sum(axis=1) / w.sum(axis=1)),
    }
    if x.size <= KENDALL_MAX_ITEMS:
        out["krocc"] = _weighted_kendall(x, y, w, gx, gy)
    else:
        out["krocc"] = np.full(w.shape[0], np.nan)
    # fewer than 3 distinct items drawn, or raw predictions or targets constant up to
    # round-off (siqa.evaluation.metrics' rule, also for the rank correlations): undefined
    few = ((w > 0).sum(axis=1) < 3) | _constant_rows(x, w) | _constant_rows(y, w)
    for key in ("srocc", "plcc", "krocc"):
        out[key][few] = np.nan
    return out


def bootstrap_metrics(pred, target, groups=None, *, n_resamples=DEFAULT_RESAMPLES,
                      confidence_level=0.95, seed=0) -> BootstrapResult:
    """Percentile bootstrap intervals of SROCC, KROCC, PLCC and RMSE (raw predictions).

    groups: the scene of every pair (scene-level bootstrap), or None to resample pairs.
    seed: an int or a numpy Generator; the same seed gives the same interval.
    """
    x = np.asarray(pred, dtype=np.float64).reshape(-1)
    y = np.asarray(target, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"pred and target differ in length: {x.size} vs {y.size}")
    unit = "pair" if groups is None else "scene"
    labels = np.arange(x.size) if groups is None else groups
    if len(labels) != x.size:
        raise ValueError(f"groups has {len(labels)} labels for {x.size} scores")
    weights = resample_weights(labels, n_resamples, seed)
    chunk = max(64, CHUNK_ELEMENTS // max(1, x.size))  # bounds memory on large test sets
    parts = [resample_metrics(x, y, weights[i:i + chunk]) for i in range(0, len(weights), chunk)]
    dist = {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}
    tail = 100 * (1 - confidence_level) / 2
    intervals, undefined = {}, {}
    for key in BOOTSTRAP_METRICS:
        values = dist[key]
        finite = values[np.isfinite(values)]
        undefined[key] = int(values.size - finite.size)
        if finite.size < max(2, values.size // 2):  # mostly undefined: no interval
            intervals[key] = ConfidenceInterval(None, None)
            continue
        low, high = np.percentile(finite, [tail, 100 - tail])
        intervals[key] = ConfidenceInterval(float(low), float(high))
    n_units = len(set(np.asarray(labels, dtype=object).astype(str).tolist()))
    return BootstrapResult(intervals, dist, unit, n_units, int(n_resamples),
                           float(confidence_level), undefined)


def median_interval(values, confidence_level=0.95):
    """Distribution-free interval of the median of `values`: the order statistics
    [x_(j), x_(n+1-j)] with the largest j whose coverage 1 - 2 P(Bin(n, 1/2) < j) is at
    least `confidence_level`; with too few values for that, [min, max] and its (smaller)
    coverage. Returns (low, high, coverage); (None, None, None) below 2 values."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    n = x.size
    if n < 2:
        return None, None, None
    cdf = np.cumsum([math.comb(n, i) for i in range(n + 1)]) / 2.0 ** n  # P(Bin <= i)
    j = 1
    while j + 1 <= n // 2 and 1 - 2 * cdf[j] >= confidence_level:
        j += 1  # x_(j+1) .. x_(n-j) still covers
    coverage = 1 - 2 * cdf[j - 1]  # P(j <= Bin(n, 1/2) <= n - j)
    return float(x[j - 1]), float(x[n - j]), float(coverage)


# ----------------------------------------------------------------------------- tests
def _midranks(v):
    order, starts, group = _tie_groups(v)
    ends = np.r_[starts[1:], v.size]
    return ((starts + ends + 1) / 2.0)[group]


def _wilcoxon_counts(n):
    """Number of subsets of {1..n} with each rank sum 0..n(n+1)/2 (exact null of R+)."""
    counts = np.zeros(n * (n + 1) // 2 + 1, dtype=np.float64)
    counts[0] = 1
    for k in range(1, n + 1):
        counts[k:] = counts[k:] + counts[:-k].copy()
    return counts


def wilcoxon_signed_rank(a, b) -> WilcoxonResult:
    """Two-sided Wilcoxon signed-rank test of the paired differences b - a. The conventions
    (zeros dropped, this project's exact / sign-flip / normal rule, which differs from
    scipy's default when there are zeros) are in the module docstring."""
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.size} vs {b.size}")
    d_all = b - a
    median_diff = float(np.median(d_all)) if d_all.size else math.nan
    d = d_all[d_all != 0]
    n = d.size
    if n == 0:
        return WilcoxonResult(math.nan, math.nan, 0, "none", median_diff)
    r = _midranks(np.abs(d))
    r_plus, r_minus = float(r[d > 0].sum()), float(r[d < 0].sum())
    stat = min(r_plus, r_minus)
    ties = np.unique(np.abs(d)).size < n
    zeros = d.size < d_all.size
    if n <= EXACT_WILCOXON_MAX and not ties and not zeros:
        counts = _wilcoxon_counts(n)
        p = 2 * counts[: int(math.floor(stat)) + 1].sum() / 2.0 ** n
        method = "exact"
    elif n <= SIGN_FLIP_MAX:
        signs = ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1).astype(bool)
        plus = (signs * r).sum(axis=1)
        p = 2 * min(np.mean(plus <= r_plus + 1e-9), np.mean(plus >= r_plus - 1e-9))
        method = "sign-flip"
    else:
        mean = n * (n + 1) / 4.0
        _, tie_counts = np.unique(np.abs(d), return_counts=True)
        var = (n * (n + 1) * (2 * n + 1) - np.sum(tie_counts ** 3 - tie_counts) / 2.0) / 24.0
        z = (r_plus - mean) / math.sqrt(var)
        p = 2 * special.ndtr(-abs(z))
        method = "normal"
    direction = int(np.sign(r_plus - r_minus))
    return WilcoxonResult(stat, float(min(1.0, p)), int(n), method, median_diff,
                          r_plus, r_minus, direction)


def min_wilcoxon_pvalue(n):
    """The smallest two-sided p-value of the signed-rank test on n non-zero differences,
    all of one sign and no ties: 2 / 2^n (1 for n = 0)."""
    return min(1.0, 2.0 / 2.0 ** int(n))


def corrected_resampled_t(a, b, test_train_ratio) -> CorrectedTResult:
    """Nadeau and Bengio's corrected resampled t-test of the paired per-split values b - a
    (module docstring); `test_train_ratio` = n_test / n_train of the splits (0 gives the
    plain paired t-test). Fewer than 2 splits: NaN. All differences equal: p = 1 when they
    are 0, else p = 0 (the limit of t)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.size} vs {b.size}")
    if not test_train_ratio >= 0:
        raise ValueError(f"test_train_ratio must be >= 0, not {test_train_ratio}")
    d = b - a
    n = d.size
    mean = float(d.mean()) if n else math.nan
    if n < 2:
        return CorrectedTResult(math.nan, math.nan, max(0, n - 1), mean, test_train_ratio, 0)
    var = float(d.var(ddof=1))
    direction = int(np.sign(mean))
    if var == 0:
        t = 0.0 if mean == 0 else math.copysign(math.inf, mean)
        return CorrectedTResult(t, 1.0 if mean == 0 else 0.0, n - 1, mean, test_train_ratio,
                                direction)
    t = mean / math.sqrt((1.0 / n + test_train_ratio) * var)
    p = float(2 * scipy_stats.t.sf(abs(t), n - 1))
    return CorrectedTResult(t, min(1.0, p), n - 1, mean, test_train_ratio, direction)


def holm(pvalues):
    """Holm's step-down adjusted p-values of one family of tests (same order as given).
    NaN (undefined tests) stay NaN and do not count in the family. Adjusted p_(i) =
    max over j <= i of min(1, (m - j + 1) p_(j)) for the ascending p_(1) <= ... <= p_(m)."""
    p = np.asarray(pvalues, dtype=np.float64).reshape(-1)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adjusted = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(adjusted)
    return out


def pitman_morgan(a, b) -> PitmanMorganResult:
    """Pitman-Morgan test of var(a) = var(b) for paired samples (see the module
    docstring for its assumptions), two-sided."""
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.size} vs {b.size}")
    n = a.size
    if n < 3:
        raise ValueError("the Pitman-Morgan test needs at least 3 paired values")
    va, vb = float(np.var(a, ddof=1)), float(np.var(b, ddof=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r_ab = float(np.corrcoef(a, b)[0, 1]) if va > 0 and vb > 0 else math.nan
    s, d = a + b, a - b
    if np.var(s) == 0 or np.var(d) == 0:
        return PitmanMorganResult(math.nan, math.nan, n - 2, va, vb, r_ab)
    r = float(np.clip(np.corrcoef(s, d)[0, 1], -1.0, 1.0))
    if abs(r) == 1.0:
        return PitmanMorganResult(math.copysign(math.inf, r), 0.0, n - 2, va, vb, r_ab)
    t = r * math.sqrt((n - 2) / (1.0 - r * r))
    p = 2 * special.stdtr(n - 2, -abs(t))
    return PitmanMorganResult(t, float(min(1.0, p)), n - 2, va, vb, r_ab)


def _row_ranks(x):
    """Mid-ranks along the rows of x (B, n); a plain double argsort where no row has ties."""
    order = np.argsort(x, axis=1, kind="stable")
    sx = np.take_along_axis(x, order, axis=1)
    if np.any(sx[:, 1:] == sx[:, :-1]):
        from scipy.stats import rankdata

        return rankdata(x, axis=1)
    ranks = np.empty_like(x)
    np.put_along_axis(ranks, order, np.arange(1, x.shape[1] + 1, dtype=np.float64)[None], axis=1)
    return ranks


def _rowwise_metric(x, y, metric):
    """metric(x[b], y) for every row b of x (B, n); y (n,)."""
    if metric == "rmse":
        return np.sqrt(np.mean((x - y) ** 2, axis=1))
    if metric == "srocc":
        x, y = _row_ranks(x), _row_ranks(y[None])[0]
    elif metric != "plcc":
        raise ValueError(f"paired_scene_test: metric {metric!r} is not one of {PAIRED_TEST_METRICS}")
    dx = x - x.mean(axis=1, keepdims=True)
    dy = y - y.mean()
    with np.errstate(invalid="ignore", divide="ignore"):
        return (dx @ dy) / np.sqrt((dx * dx).sum(axis=1) * (dy @ dy))


def paired_scene_test(pred_a, pred_b, target, scenes, metric="srocc", *,
                      n_resamples=9999, seed=0) -> PairedSceneTestResult:
    """Two-sided paired permutation test over scenes of metric(B) - metric(A) (see the
    module docstring). metric: 'srocc', 'plcc' or 'rmse' (raw predictions). seed: an int or
    a numpy Generator (used only when the swaps are sampled)."""
    a = np.asarray(pred_a, dtype=np.float64).reshape(-1)
    b = np.asarray(pred_b, dtype=np.float64).reshape(-1)
    y = np.asarray(target, dtype=np.float64).reshape(-1)
    if not a.shape == b.shape == y.shape or len(scenes) != a.size:
        raise ValueError("pred_a, pred_b, target and scenes must have one entry per pair")
    labels, index = np.unique(np.asarray(scenes, dtype=object).astype(str), return_inverse=True)
    k = labels.size
    observed = float(_rowwise_metric(b[None], y, metric)[0] - _rowwise_metric(a[None], y, metric)[0])
    if k <= EXACT_SWAP_MAX_SCENES:
        swaps = ((np.arange(2 ** k)[:, None] >> np.arange(k)) & 1).astype(bool)
        method = "exact"
    else:
        drawn = _rng(seed).integers(0, 2, size=(int(n_resamples), k)).astype(bool)
        swaps = np.vstack([np.zeros((1, k), dtype=bool), drawn])  # the observed assignment
        method = "monte-carlo"
    null = np.empty(len(swaps))
    chunk = max(1, CHUNK_ELEMENTS // max(1, a.size))
    for i in range(0, len(swaps), chunk):
        swap = swaps[i:i + chunk][:, index]
        xa, xb = np.where(swap, b, a), np.where(swap, a, b)
        null[i:i + chunk] = _rowwise_metric(xb, y, metric) - _rowwise_metric(xa, y, metric)
    if not np.isfinite(observed):
        return PairedSceneTestResult(observed, math.nan, k, len(swaps), method, metric)
    tol = 1e-12 * max(1.0, abs(observed))
    p = float(np.mean(np.abs(null) >= abs(observed) - tol))
    return PairedSceneTestResult(observed, p, k, len(swaps), method, metric)
