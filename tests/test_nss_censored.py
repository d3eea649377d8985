"""NSS version 2: the left-censored Gamma marginals make the 108 targets a property of the
image, not of the arithmetic (float32 vs float64 standardisation and DT-CWT), and equal an
independent scipy.optimize implementation of the definition in siqa.nss.features."""
import nss_reference as ref
import numpy as np
import pytest
import torch

from siqa.nss import nss_features
from siqa.nss.features import gamma_mle0, gamma_mle0_censored

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _pair(kind, scene="stairs", width=640, height=360):
    left, right = ref.natural_pair(scene, width, height)
    if kind == "natural":
        return left, right
    if kind.startswith("jpeg"):
        q = int(kind[4:])
        return ref.jpeg(left, q), ref.jpeg(right, q)
    if kind == "saturated":  # one view with 15 % of its pixels at 0 or 255
        return ref.saturate(left, 0.15), right
    raise ValueError(kind)


KINDS = ["jpeg5", "jpeg10", "jpeg20", "saturated", "natural"]


def _rel(a, b):
    return float(np.max(np.abs(a - b) / np.maximum(1.0, np.abs(b))))


@pytest.mark.parametrize("kind", KINDS)
def test_targets_do_not_depend_on_the_working_precision(kind):
    left, right = _pair(kind)
    t64 = nss_features(left, right)
    t32 = nss_features(left, right, standardise_dtype="float32")
    assert np.array_equal(t64, nss_features(left, right, standardise_dtype="float64"))
    assert _rel(t32, t64) <= 1e-4


@pytest.mark.parametrize("kind", ["jpeg5", "jpeg10", "jpeg20"])
def test_uncensored_definition_fails_the_bound_on_jpeg(kind):
    """The version-1 definition (censor_k=0: magnitudes floored at 1e-12) moves by far more
    than 1e-4 between the two precisions: the check above can fail."""
    left, right = _pair(kind)
    old64 = nss_features(left, right, censor_k=0.0)
    old32 = nss_features(left, right, standardise_dtype="float32", censor_k=0.0)
    assert _rel(old32, old64) > 1e-2


@pytest.mark.parametrize("kind", KINDS)
def test_censored_targets_equal_scipy_optimize(kind):
    # 320x240 crops keep the 36 Nelder-Mead fits of the reference short
    left, right = _pair(kind, "cycles", 320, 240)
    ours = nss_features(left, right)
    expected = ref.nss_reference(left, right, "mle0")
    assert _rel(ours, expected) <= 1e-4


def test_censored_fit_maximises_the_censored_likelihood():
    """Against scipy.optimize on synthetic data: heavy censoring (99 %), small and large
    shapes, and a row with a censored fraction well above the model's."""
    rng = np.random.default_rng(5)
    rows, expected = [], []
    for shape, frac, k in [(0.1, 0.3, 1e-3), (0.5, 0.02, 3e-3), (0.3, 0.99, 1e-2), (2.0, 0.001, 3e-3),
                           (1.0, 0.5, 0.1), (6.0, 0.05, 1e-2)]:
        x = rng.gamma(shape, 1.5, 5000)
        x[rng.random(x.size) < frac] = 1e-17
        delta = k * np.sqrt(np.mean(x ** 2))
        obs = x[x >= delta]
        rows.append((obs.size, obs.mean(), np.log(obs).mean(), x.size - obs.size, delta))
        expected.append(ref.censored_gamma_fit(x, delta))
    cols = [torch.tensor([r[i] for r in rows], dtype=torch.float64) for i in range(5)]
    a, scale = gamma_mle0_censored(*cols)
    np.testing.assert_allclose(a.numpy(), [e[0] for e in expected], rtol=1e-5)
    np.testing.assert_allclose(scale.numpy(), [e[1] for e in expected], rtol=1e-5)


def test_no_censored_value_gives_the_plain_mle():
    """A subband without magnitudes below delta is fitted by the uncensored loc = 0 MLE:
    white noise has none below 3e-3 x RMS in level 3, so its level-3 targets are those of the
    version-1 definition."""
    rng = np.random.default_rng(11)
    left = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    right = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    new, old = nss_features(left, right), nss_features(left, right, censor_k=0.0)
    level3 = [18 * p + s for p in range(6) for s in range(12, 18)]
    mags = ref.magnitudes(right)[12:]
    assert all(np.all(m >= 3e-3 * np.sqrt(np.mean(m ** 2))) for m in mags)
    np.testing.assert_allclose(new[level3], old[level3], rtol=1e-12, atol=1e-12)
    x = torch.from_numpy(rng.gamma(0.7, 2.0, 4000))
    a, _ = gamma_mle0(x.mean()[None], torch.log(x).mean()[None])
    assert a.item() == pytest.approx(ref.censored_gamma_fit(x.numpy(), 0.0)[0], rel=1e-6)


def test_unknown_precision_raises():
    img = np.zeros((64, 64), np.uint8)
    with pytest.raises(ValueError, match="standardise_dtype"):
        nss_features(img, img, standardise_dtype="float16")
