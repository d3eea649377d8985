"""Quality-assessment metrics: SROCC, PLCC, KROCC, RMSE, raw and after the 5-parameter
logistic of Sheikh, Sabir & Bovik (IEEE TIP 2006).

`evaluate_scores(pred, target)` returns a dict with exactly the keys
"srocc", "plcc", "krocc", "rmse", "plcc_logistic", "rmse_logistic" (float or None) and
"n" (int). Every value is a plain Python float/int/None, so the dict is JSON-serialisable.

Conventions
-----------
- SROCC: Pearson correlation of the average ranks (ties share their mean rank), as
  `scipy.stats.spearmanr`. PLCC: Pearson correlation. KROCC: Kendall's tau-b, as
  `scipy.stats.kendalltau` (its default variant). RMSE: sqrt(mean((pred - target)^2)),
  meaningful only when the predictions are on the subjective scale.
- Undefined values are None (never NaN): the three correlations when there are fewer than
  3 items (with 2 points any correlation is +-1 and says nothing) or when either the
  predictions or the targets are constant; the RMSEs when there are no items.
- "plcc_logistic" / "rmse_logistic": PLCC and RMSE between the target and the prediction
  mapped by the 5-parameter logistic of docs/method.md#evaluation,
      q(x) = b1 * (0.5 - 1 / (1 + exp(b2 * (x - b3)))) + b4 * x + b5,
  fitted by least squares once, from one deterministic data-driven start (see
  `fit_logistic`), under the constraint b1, b2, b4 >= 0: the map never decreases. Every
  network here predicts on its database's own scale, so a good predictor increases with
  the score; a decreasing or non-monotone map would make a predictor that ranks backwards
  look good (a step plus a steep line sloping the other way can turn SROCC -0.22 into a
  PLCC of 0.778 after the map). There is no search over several starts and nothing is chosen
  by its PLCC. When the predictions rank backwards (SROCC < 0) no increasing map can
  linearise them: the mapping is flat, mean(target). It falls back to the least-squares
  straight line with a non-negative slope (flat where the unconstrained slope is negative)
  when there are fewer than 5 items, when the fit fails or gives non-finite values, or when
  it stops at a worse optimum than that line; when the predictions are constant the mapping
  is the constant mean(target). A flat mapping leaves plcc_logistic undefined (None). When
  the targets are constant (a group of pristine pairs, all scored 0) no map says anything:
  plcc_logistic and rmse_logistic are None (a flat line through them would give an RMSE of
  0, a perfect fit of nothing). Which
  mapping was used is returned by `fit_logistic` (`LogisticFit.kind`, `.reason`) and by
  `evaluate_scores(..., fit_info=True)` under the extra key "mapping"; the protocol card
  records it.
"""
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special, stats

METRIC_KEYS = ("srocc", "plcc", "krocc", "rmse", "plcc_logistic", "rmse_logistic", "n")
METRIC_ALIASES = {"srcc": "srocc", "krcc": "krocc"}  # spellings other papers and tools use
LOWER_IS_BETTER = {"rmse", "rmse_logistic"}
MIN_CORRELATION_ITEMS = 3
# The 5-parameter logistic only from 20 items on (15 residual degrees of freedom): fitted to
# unrelated predictions and scores it reaches a median PLCC of 0.75 at 5 items and 0.45 at
# 12 (raw |PLCC| 0.39, 0.21), 0.38 at 20 (benchmarks/logistic_null.py, docs/statistics.md).
# Below that the map is the straight line, whose PLCC is the raw one.
MIN_LOGISTIC_ITEMS = 20
LOGISTIC_MAXFEV = 20000


def _as_vector(values, name):
    if hasattr(values, "detach"):  # torch tensor (any float dtype, bf16 included)
        values = values.detach().cpu().double().numpy()
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def score_arrays(pred, target):
    """(pred, target) as equal-length float64 vectors; ValueError on NaN/inf or a length
    mismatch. Accepts lists, numpy arrays and torch tensors."""
    x = _as_vector(pred, "pred")
    y = _as_vector(target, "target")
    if x.shape != y.shape:
        raise ValueError(f"pred and target differ in length: {x.size} vs {y.size}")
    return x, y


CONSTANT_RTOL = 1e-12  # constant: std <= CONSTANT_RTOL * |mean| (the bootstrap's rule too)


def _is_constant(v):
    """Constant up to round-off, with the same tolerance as siqa.evaluation.stats' bootstrap."""
    if v.size == 0 or bool(np.all(v == v[0])):
        return True
    return bool(np.std(v) <= CONSTANT_RTOL * abs(np.mean(v)))


def _pearson(x, y):
    """Pearson correlation, or None when undefined (too few items or constant input)."""
    if x.size < MIN_CORRELATION_ITEMS or _is_constant(x) or _is_constant(y):
        return None
    xc = x - x.mean()
    yc = y - y.mean()
    denom = np.sqrt(np.dot(xc, xc) * np.dot(yc, yc))
    if not denom > 0:  # variance underflowed to zero
        return None
    return float(np.clip(np.dot(xc, yc) / denom, -1.0, 1.0))


def srocc(pred, target):
    x, y = score_arrays(pred, target)
    if x.size < MIN_CORRELATION_ITEMS or _is_constant(x) or _is_constant(y):
        return None
    return _pearson(stats.rankdata(x), stats.rankdata(y))


def plcc(pred, target):
    return _pearson(*score_arrays(pred, target))


def krocc(pred, target):
    x, y = score_arrays(pred, target)
    if x.size < MIN_CORRELATION_ITEMS or _is_constant(x) or _is_constant(y):
        return None
    tau = stats.kendalltau(x, y).statistic  # tau-b
    return float(tau) if np.isfinite(tau) else None


def rmse(pred, target):
    x, y = score_arrays(pred, target)
    if x.size == 0:
        return None
    return float(np.sqrt(np.mean((x - y) ** 2)))


def logistic5(x, b1, b2, b3, b4, b5):
    """q(x) = b1 * (0.5 - 1 / (1 + exp(b2 * (x - b3)))) + b4 * x + b5 (overflow-free)."""
    x = np.asarray(x, dtype=np.float64)
    # 1 / (1 + exp(z)) == expit(-z), which never overflows
    return b1 * (0.5 - special.expit(-b2 * (x - b3))) + b4 * x + b5


@dataclass(frozen=True)
class LogisticFit:
    """The pred -> target mapping used before "plcc_logistic" / "rmse_logistic".

    kind: "logistic" (the non-decreasing 5-parameter fit), "linear" (fallback: the
    least-squares line with a non-negative slope, or flat),
    "constant" (constant predictions: mean(target)) or "none" (no items).
    params: (b1, b2, b3, b4, b5) in the original units for "logistic"; (slope, intercept)
    for "linear"; (mean,) for "constant"; () for "none".
    reason: why a fallback was used ("" for the logistic).
    """

    kind: str
    params: tuple
    reason: str = ""

    def __call__(self, x):
        x = np.asarray(x, dtype=np.float64)
        if self.kind == "logistic":
            return logistic5(x, *self.params)
        if self.kind == "linear":
            return self.params[0] * x + self.params[1]
        if self.kind == "constant":
            return np.full_like(x, self.params[0])
        raise ValueError("an empty fit cannot map predictions")


def logistic_start(x, y):
    """The documented data-driven start of the logistic fit, in the original units.

    b1 = max(y) - min(y)   full subjective range (b1 >= 0: an increasing step)
    b2 = 1 / std(x)        the sigmoid's transition spans about the data spread
    b3 = median(x)         centred on the predictions
    b4 = 0                 no linear term
    b5 = mean(y)           centred on the subjective scores
    """
    sx = float(np.std(x))
    return (float(np.ptp(y)), 1.0 / sx if sx > 0 else 1.0,
            float(np.median(x)), 0.0, float(np.mean(y)))


def _linear_fit(x, y, reason):
    """The least-squares line with a non-negative slope (flat at mean(y) where the
    unconstrained slope is negative)."""
    slope, intercept = np.polyfit(x, y, 1)
    if slope < 0:
        return LogisticFit("linear", (0.0, float(np.mean(y))),
                           reason + "; the predictions do not increase with the target: flat")
    return LogisticFit("linear", (float(slope), float(intercept)), reason)


def fit_logistic(pred, target):
    """Fit the non-decreasing 5-parameter logistic pred -> target once (see the module
    docstring).

    The fit runs on standardised data (x and y shifted to mean 0 and scaled to std 1) for
    conditioning, from `logistic_start` expressed in those units, with
    `scipy.optimize.curve_fit` bounded to b1, b2, b4 >= 0 (trust-region reflective); the
    parameters are then converted back to the original units (positive scalings: the
    bounds hold there too). Deterministic: the same input gives the same fit.
    """
    x, y = score_arrays(pred, target)
    if x.size == 0:
        return LogisticFit("none", (), "no items")
    if _is_constant(x):
        return LogisticFit("constant", (float(np.mean(y)),), "constant predictions")
    if _is_constant(y):
        return _linear_fit(x, y, "constant targets")
    rho = srocc(x, y)
    if rho is not None and rho < 0:  # no increasing map fits a backwards ranking: flat
        return LogisticFit("linear", (0.0, float(np.mean(y))),
                           f"the predictions rank backwards (SROCC {rho:.3f} < 0): flat")
    if x.size < MIN_LOGISTIC_ITEMS:
        return _linear_fit(x, y, f"fewer than {MIN_LOGISTIC_ITEMS} items")

    mx, sx = float(np.mean(x)), float(np.std(x))
    my, sy = float(np.mean(y)), float(np.std(y))
    if not (sx > 0 and sy > 0):  # the spread underflowed
        return _linear_fit(x, y, "no measurable spread")
    xs, ys = (x - mx) / sx, (y - my) / sy
    b1, b2, b3, b4, b5 = logistic_start(x, y)
    start = (b1 / sy, b2 * sx, (b3 - mx) / sx, b4 * sx / sy, (b5 - my) / sy)
    # b1, b2, b4 >= 0: non-decreasing. b1 and b2 are also bounded above (in standardised
    # units: a step of 10 target ranges, a transition over 1e-4 standard deviations), so
    # that a straight line, the limit b2 -> 0 with b1 * b2 fixed, is reached at a finite point
    lower = (0.0, 0.0, -np.inf, 0.0, -np.inf)
    upper = (10.0 * float(np.ptp(ys)), 1e4, np.inf, np.inf, np.inf)
    try:
        with warnings.catch_warnings():
            # the covariance of the parameters is not used; its warning is noise
            warnings.simplefilter("ignore", optimize.OptimizeWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            c, _ = optimize.curve_fit(logistic5, xs, ys, p0=start, maxfev=LOGISTIC_MAXFEV,
                                      bounds=(lower, upper), method="trf")
    except (RuntimeError, ValueError, FloatingPointError, np.linalg.LinAlgError) as err:
        return _linear_fit(x, y, f"logistic fit did not converge ({type(err).__name__})")
    c1, c2, c3, c4, c5 = (float(v) for v in c)
    # back to the original units: q(x) = my + sy * qs((x - mx) / sx)
    p4 = sy * c4 / sx
    params = (sy * c1, c2 / sx, mx + sx * c3, p4, sy * c5 + my - p4 * mx)
    if not np.all(np.isfinite(params)):
        return _linear_fit(x, y, "logistic fit gave non-finite parameters")
    fit = LogisticFit("logistic", params)
    with np.errstate(all="ignore"):
        fitted = fit(x)
    if not np.all(np.isfinite(fitted)):
        return _linear_fit(x, y, "logistic fit gave non-finite predictions")
    line = _linear_fit(x, y, "logistic fit stopped at a worse optimum than a straight line")
    if np.cov(fitted, y)[0, 1] <= 0:  # a least-squares optimum cannot anti-correlate
        return LogisticFit("linear", (0.0, my), "the non-decreasing fit explains nothing: flat")
    sse_logistic = float(np.sum((fitted - y) ** 2))
    sse_line = float(np.sum((line(x) - y) ** 2))
    if sse_logistic > sse_line * (1 + 1e-9) + 1e-12:
        return line
    return fit


def evaluate_scores(pred, target, fit_info=False):
    """SROCC, PLCC, KROCC, RMSE raw and PLCC, RMSE after the logistic mapping.

    Returns {"srocc", "plcc", "krocc", "rmse", "plcc_logistic", "rmse_logistic": float or
    None, "n": int}. With fit_info=True one more key, "mapping", holds
    {"kind", "params", "reason"} of the mapping used (see `fit_logistic`).
    Raises ValueError on NaN/inf input or different lengths.
    """
    x, y = score_arrays(pred, target)
    fit = fit_logistic(x, y)
    if fit.kind == "none" or _is_constant(y):  # nothing to map onto (see the module docstring)
        mapped = None
    else:
        mapped = fit(x)
    result = {
        "srocc": srocc(x, y),
        "plcc": plcc(x, y),
        "krocc": krocc(x, y),
        "rmse": rmse(x, y),
        "plcc_logistic": None if mapped is None else _pearson(mapped, y),
        "rmse_logistic": None if mapped is None else rmse(mapped, y),
        "n": int(x.size),
    }
    if fit_info:
        result["mapping"] = {"kind": fit.kind, "params": [float(p) for p in fit.params],
                             "reason": fit.reason}
    return result


# --------------------------------------------------------------------------- near-constant
# A network that has not learnt predicts about the same score for every pair (4 epochs of the
# paper's SGD: 0.0458 .. 0.0463 on a 0 .. 64 scale). Its correlations are still defined and
# can look like something (SROCC 0.47: the order of differences in the fourth decimal), so
# the spread is judged against the scale the network should predict on.
NEAR_CONSTANT_FRACTION = 0.01
NEAR_CONSTANT_RULE = ("near constant: max(pred) - min(pred) < 1 % of the database's score "
                      "range (score_max - score_min)")


def prediction_spread(pred, score_min, score_max) -> dict:
    """How far the predictions spread, against the database's score range (the rule, once):

        spread = max(pred) - min(pred),  range = score_max - score_min
        near_constant = spread < NEAR_CONSTANT_FRACTION * range

    Returns {"min", "max", "spread", "score_range": [score_min, score_max], "fraction":
    spread / range, "near_constant": bool}; "fraction" and "near_constant" are None where the
    rule cannot judge (fewer than 2 predictions, or a database whose scores are all equal).
    """
    x = _as_vector(pred, "pred")
    lo, hi = float(score_min), float(score_max)
    out = {"min": None, "max": None, "spread": None, "score_range": [lo, hi],
           "fraction": None, "near_constant": None}
    if x.size == 0:
        return out
    out.update(min=float(x.min()), max=float(x.max()), spread=float(x.max() - x.min()))
    if x.size >= 2 and hi > lo:
        out["fraction"] = out["spread"] / (hi - lo)
        out["near_constant"] = bool(out["spread"] < NEAR_CONSTANT_FRACTION * (hi - lo))
    return out


def near_constant_message(spread, what) -> str:
    """The one-line warning (without "warning: ") for a `prediction_spread` that is near
    constant; `what` names the predictions ("the test predictions")."""
    lo, hi = spread["score_range"]
    return (f"{what} are near constant: {spread['min']:.4g} .. {spread['max']:.4g}, a "
            f"spread of {100 * spread['fraction']:.2g} % of the score range {lo:.4g} .. {hi:.4g} "
            f"(below {100 * NEAR_CONSTANT_FRACTION:g} %): the model has not learnt to tell the "
            "pairs apart, and its correlations rank differences of round-off size")


def _plain_label(label):
    return label.item() if isinstance(label, np.generic) else label


def per_group(pred, target, groups, fit_info=False):
    """`evaluate_scores` for each group (e.g. distortion type): {group: metrics dict}.

    Groups appear in sorted order (in order of first appearance if the labels cannot be
    sorted). Numpy scalar labels become plain Python values so that the result can go to
    JSON. Small groups get None for what they cannot define (see the module docstring):
    below 3 items the correlations, below 5 items the logistic (a straight line is fitted
    instead).
    """
    x, y = score_arrays(pred, target)
    if hasattr(groups, "detach"):
        groups = groups.detach().cpu().numpy()
    labels = [_plain_label(g) for g in np.asarray(groups, dtype=object).reshape(-1)]
    if len(labels) != x.size:
        raise ValueError(f"groups has {len(labels)} labels for {x.size} scores")
    unique = list(dict.fromkeys(labels))
    try:
        unique = sorted(unique)
    except TypeError:
        pass
    label_array = np.empty(len(labels), dtype=object)
    label_array[:] = labels
    return {g: evaluate_scores(x[label_array == g], y[label_array == g], fit_info=fit_info)
            for g in unique}


def metric_name(name) -> str:
    """The metric key for a user-given name: case-insensitive, aliases `srcc` and `krcc`
    accepted; ValueError for an unknown name."""
    key = str(name).strip().lower().replace("-", "_")
    key = METRIC_ALIASES.get(key, key)
    if key not in METRIC_KEYS or key == "n":
        valid = ", ".join(k for k in METRIC_KEYS if k != "n")
        raise ValueError(f"unknown metric '{name}' (valid: {valid}; aliases: srcc, krcc)")
    return key
