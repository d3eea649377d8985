import json
import math
import warnings

import numpy as np
import pytest
from scipy import stats

from siqa.evaluation.metrics import METRIC_KEYS, evaluate_scores, fit_logistic, logistic5, logistic_start, per_group


def _data(n=300, seed=0):
    rng = np.random.default_rng(seed)
    target = rng.uniform(0, 60, n)
    pred = target + rng.normal(0, 10, n)
    return pred, target


def test_keys_and_types():
    pred, target = _data()
    result = evaluate_scores(pred, target)
    assert tuple(result) == METRIC_KEYS
    assert set(result) == {"srocc", "plcc", "krocc", "rmse", "plcc_logistic",
                           "rmse_logistic", "n"}
    assert type(result["n"]) is int and result["n"] == 300
    for key in METRIC_KEYS[:-1]:
        assert type(result[key]) is float
    json.dumps(result)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_raw_metrics_equal_scipy_and_hand_rmse(seed):
    pred, target = _data(seed=seed)
    rng = np.random.default_rng(seed + 10)
    pred = np.round(pred / 3) * 3  # ties, so that the tie handling is exercised too
    pred[rng.integers(0, pred.size, 20)] += rng.normal(0, 30, 20)
    result = evaluate_scores(pred, target)
    assert result["srocc"] == pytest.approx(stats.spearmanr(pred, target).statistic, abs=1e-12)
    assert result["plcc"] == pytest.approx(stats.pearsonr(pred, target).statistic, abs=1e-12)
    assert result["krocc"] == pytest.approx(stats.kendalltau(pred, target).statistic,
                                            abs=1e-12)
    by_hand = math.sqrt(sum((p - t) ** 2 for p, t in zip(pred, target)) / len(pred))
    assert result["rmse"] == pytest.approx(by_hand, rel=1e-12)


def test_accepts_lists_and_torch_tensors():
    torch = pytest.importorskip("torch")
    pred, target = _data(50)
    expected = evaluate_scores(pred, target)
    assert evaluate_scores(list(pred), list(target)) == expected
    from_torch = evaluate_scores(torch.tensor(pred), torch.tensor(target))
    assert from_torch == expected
    bf16 = evaluate_scores(torch.tensor(pred).bfloat16(), torch.tensor(target))
    assert bf16["srocc"] == pytest.approx(expected["srocc"], abs=0.02)


def test_exact_logistic_data_is_recovered():
    rng = np.random.default_rng(3)
    x = np.sort(rng.uniform(-3, 3, 200))
    true = (40.0, 1.7, 0.4, 1.5, 20.0)
    y = logistic5(x, *true)
    fit = fit_logistic(x, y)
    assert fit.kind == "logistic" and fit.reason == ""
    np.testing.assert_allclose(fit.params, true, rtol=1e-6, atol=1e-6)
    result = evaluate_scores(x, y)
    assert result["plcc_logistic"] == pytest.approx(1.0, abs=1e-9)
    assert result["rmse_logistic"] == pytest.approx(0.0, abs=1e-6)
    assert result["plcc"] < 0.99  # the raw relation is visibly nonlinear


def test_logistic_by_hand():
    # b1 (0.5 - 1/(1+exp(b2 (x - b3)))) + b4 x + b5 at x = b3 is b4 b3 + b5, and far from
    # b3 it approaches +-b1/2 + b4 x + b5
    assert logistic5(2.0, 10.0, 3.0, 2.0, 0.5, 1.0) == pytest.approx(2.0)
    assert logistic5(1e6, 10.0, 3.0, 2.0, 0.0, 1.0) == pytest.approx(6.0)
    assert logistic5(-1e6, 10.0, 3.0, 2.0, 0.0, 1.0) == pytest.approx(-4.0)
    x = 2.7
    expected = 10.0 * (0.5 - 1.0 / (1.0 + math.exp(3.0 * (x - 2.0)))) + 0.5 * x + 1.0
    assert logistic5(x, 10.0, 3.0, 2.0, 0.5, 1.0) == pytest.approx(expected, rel=1e-14)


def test_monotone_nonlinear_relation_logistic_beats_raw_plcc():
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 1, 250)
    y = 80 / (1 + np.exp(-12 * (x - 0.5))) + rng.normal(0, 2, x.size)
    result = evaluate_scores(x, y)
    assert result["plcc_logistic"] > result["plcc"] + 0.02
    assert result["rmse_logistic"] < 3.0


def test_start_is_data_driven():
    x = np.array([1.0, 2.0, 3.0, 4.0, 10.0])
    y = np.array([5.0, 7.0, 6.0, 9.0, 20.0])
    b1, b2, b3, b4, b5 = logistic_start(x, y)
    assert b1 == pytest.approx(15.0)
    assert b2 == pytest.approx(1 / np.std(x))
    assert b3 == pytest.approx(3.0)
    assert b4 == 0.0 and b5 == pytest.approx(np.mean(y))


def test_deterministic():
    pred, target = _data(seed=7)
    first = evaluate_scores(pred, target)
    for _ in range(3):
        assert evaluate_scores(pred.copy(), target.copy()) == first
    assert fit_logistic(pred, target) == fit_logistic(pred, target)


def test_constant_predictions_do_not_crash_or_warn():
    target = np.linspace(0, 50, 40)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = evaluate_scores(np.full(40, 3.0), target, fit_info=True)
    assert result["srocc"] is None and result["plcc"] is None and result["krocc"] is None
    assert result["plcc_logistic"] is None
    assert result["rmse"] == pytest.approx(np.sqrt(np.mean((target - 3.0) ** 2)))
    assert result["rmse_logistic"] == pytest.approx(np.std(target))
    assert result["mapping"]["kind"] == "constant"
    json.dumps(result)


def test_constant_target_and_tiny_inputs():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        flat = evaluate_scores(np.arange(10.0), np.full(10, 2.0))
        empty = evaluate_scores([], [])
        two = evaluate_scores([1.0, 2.0], [3.0, 1.0], fit_info=True)
    assert flat["plcc"] is None and flat["srocc"] is None
    assert flat["rmse_logistic"] is None and flat["plcc_logistic"] is None  # nothing to map onto
    assert empty == {"srocc": None, "plcc": None, "krocc": None, "rmse": None,
                     "plcc_logistic": None, "rmse_logistic": None, "n": 0}
    assert two["plcc"] is None and two["n"] == 2
    assert two["mapping"]["kind"] == "linear" and "fewer than 20" in two["mapping"]["reason"]


def test_few_items_get_the_straight_line_whose_plcc_is_the_raw_one():
    """12 unrelated items (the size of the demo's per-distortion groups): no 5-parameter fit,
    which would flatter them (median PLCC 0.45 where the raw |PLCC| is 0.21), but the line."""
    rng = np.random.default_rng(12)
    for _ in range(20):
        x, y = rng.normal(size=12), 40 + 10 * rng.normal(size=12)
        result = evaluate_scores(x, y, fit_info=True)
        mapping = result["mapping"]
        assert mapping["kind"] == "linear"
        if result["srocc"] < 0:  # a backwards ranking is flat, whatever the count
            assert "rank backwards" in mapping["reason"] and result["plcc_logistic"] is None
            continue
        assert "fewer than 20 items" in mapping["reason"]
        if result["plcc"] > 0:
            assert result["plcc_logistic"] == pytest.approx(result["plcc"], abs=1e-9)
        else:
            assert result["plcc_logistic"] is None
    assert fit_logistic(x[:0].tolist() + list(range(20)), [v ** 3 for v in range(20)]).kind == "logistic"


def test_fallback_to_linear_is_reported():
    # 4 items: too few for 5 parameters -> least-squares line, said so
    fit = fit_logistic([1.0, 2.0, 3.0, 5.0], [2.0, 4.1, 5.9, 10.0])
    assert fit.kind == "linear" and fit.reason
    slope, intercept = np.polyfit([1.0, 2.0, 3.0, 5.0], [2.0, 4.1, 5.9, 10.0], 1)
    assert fit.params == pytest.approx((slope, intercept))


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="length"):
        evaluate_scores([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="NaN"):
        evaluate_scores([1.0, float("nan"), 3.0], [1.0, 2.0, 3.0])


def test_per_group():
    rng = np.random.default_rng(8)
    pred, target = _data(120, seed=8)
    groups = np.array(["wn", "jpeg", "blur"])[rng.integers(0, 3, 120)]
    groups[:2] = "ff"  # a group of 2
    groups[2] = "jp2k"
    groups[3:8] = "solo"
    groups[5] = "jp2k"  # jp2k: 2 items
    result = per_group(pred, target, groups)
    assert list(result) == sorted(set(groups.tolist()))
    for name, metrics in result.items():
        mask = groups == name
        assert metrics == evaluate_scores(pred[mask], target[mask])
        assert metrics["n"] == int(mask.sum())
    assert result["ff"]["srocc"] is None and result["ff"]["plcc"] is None
    assert result["ff"]["rmse"] is not None
    assert result["wn"]["srocc"] is not None
    text = json.dumps(result)
    assert "NaN" not in text
    assert sum(m["n"] for m in result.values()) == 120


def test_per_group_numpy_integer_labels_are_json_safe():
    pred, target = _data(30, seed=9)
    groups = np.repeat(np.array([3, 1, 2], dtype=np.int64), 10)
    result = per_group(pred, target, groups)
    assert list(result) == [1, 2, 3]
    assert all(type(k) is int for k in result)
    json.dumps(result)
    with pytest.raises(ValueError):
        per_group(pred, target, groups[:-1])
