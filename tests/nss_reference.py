"""Plain numpy/scipy implementations of the NSS targets (docs/method.md#the-nss-targets), independent of
`siqa.nss`: the `dtcwt` package for the transform and scipy for the fits, CDFs and normal
scores. Used as test oracles and as the baselines of `benchmarks/nss.py`.

`dtcwt` 0.14.0 predates numpy 2 and needs `six`: `np.asfarray` and `np.issubsctype` are given
back before it is imported (`six` is installed from requirements-nodeps.txt).
"""

import numpy as np
import scipy.optimize
import scipy.special
import scipy.stats

EPS32 = float(np.finfo(np.float32).eps)
EPS64 = float(np.finfo(np.float64).eps)
MAG_FLOOR = 1e-12  # the floor before logs (docs/method.md#gamma-marginals) (same constant as siqa.nss)
CENSOR_K = 3e-3  # delta = CENSOR_K x RMS of the subband's magnitudes (same constant as siqa.nss)

_TRANSFORM = None


def import_dtcwt():
    """The dtcwt package, imported when a test first needs it: a machine without it (the GPU
    box) still collects the modules that import this file, so `pytest -m cuda` runs there."""
    if not hasattr(np, "asfarray"):
        def _asfarray(a, dtype=np.float64):
            dtype = np.dtype(dtype)
            return np.asarray(a, dtype=dtype if np.issubdtype(dtype, np.inexact) else np.float64)

        np.asfarray = _asfarray
    if not hasattr(np, "issubsctype"):
        np.issubsctype = lambda arg1, arg2: np.issubdtype(np.result_type(arg1), arg2)
    import dtcwt

    return dtcwt


def transform():
    global _TRANSFORM
    if _TRANSFORM is None:
        _TRANSFORM = import_dtcwt().Transform2d("near_sym_b", "qshift_b")
    return _TRANSFORM


def dtcwt_reference(image, levels=3):
    """(lowpass, [highpasses]) from the dtcwt package."""
    pyr = transform().forward(image, nlevels=levels)
    return pyr.lowpass, list(pyr.highpasses)


def preprocess(grey, mode="reference"):
    x = grey.astype(np.float64) / 225.0
    if mode == "reference":
        mean = x.mean(axis=0, keepdims=True)
        std = x.std(axis=0, keepdims=True)
        const = x.max(axis=0, keepdims=True) == x.min(axis=0, keepdims=True)
    else:
        mean, std = x.mean(), x.std()
        const = x.max() == x.min()
    return np.where(const, 0.0, (x - mean) / np.where(const, 1.0, std))


def magnitudes(grey, mode="reference"):
    _, highs = dtcwt_reference(preprocess(grey, mode), 3)
    return [np.abs(h[:, :, k]).ravel() for h in highs for k in range(6)]


def _sigma(zr, zl):
    sigma = np.cov(np.stack([zr, zl]), ddof=1)
    if np.linalg.cond(sigma) > 1.0 / EPS64:
        sigma = sigma + EPS64 * np.eye(2)
    return sigma


def censored_gamma_fit(x, delta):
    """(a, scale) of the loc = 0 Gamma MLE of x with the values below delta left-censored:
    maximises n_c log P(a, delta / scale) + sum over x >= delta of log f(x; a, scale) with
    scipy.optimize (Nelder-Mead on log a, log scale) from the uncensored scipy fit of x with
    the censored values set to delta; the plain `gamma.fit(x, floc=0)` when none is censored."""
    cens = x < delta
    if not cens.any():
        a, _, scale = scipy.stats.gamma.fit(x, floc=0)
        return a, scale
    obs = x[~cens]
    n_c, n_o, sum_x, sum_log = cens.sum(), obs.size, obs.sum(), np.log(obs).sum()

    def minus_loglik(p):
        a, scale = np.exp(p)
        return -(n_c * np.log(scipy.special.gammainc(a, delta / scale)) + (a - 1) * sum_log
                 - sum_x / scale - n_o * (a * np.log(scale) + scipy.special.gammaln(a))) / x.size

    a0, _, scale0 = scipy.stats.gamma.fit(np.maximum(x, delta), floc=0)
    res = scipy.optimize.minimize(minus_loglik, np.log([a0, scale0]), method="Nelder-Mead",
                                  options={"xatol": 1e-10, "fatol": 1e-14, "maxiter": 4000})
    return tuple(np.exp(res.x))


def nss_reference(left, right, marginal="mle0", preprocess_mode="reference", censor_k=CENSOR_K):
    """The 108-vector, parameter-major (index = 18*p + s), with scipy fits.

    marginal="mle0" (NSS version 2, written from the siqa.nss.features docstring): x = the
    magnitudes floored at MAG_FLOOR; delta = censor_k x sqrt(mean |c|^2); x < delta censored
    (`censored_gamma_fit`), their normal score Phi^-1(clip(F(delta) / 2)), the others'
    Phi^-1(clip(F(x))). censor_k=0: the version-1 definition (`gamma.fit(x, floc=0)` on x).
    marginal="scipy_free_loc": the original `gamma.fit(x)` (slow)."""
    mags_r = magnitudes(right, preprocess_mode)
    mags_l = magnitudes(left, preprocess_mode)
    out = np.zeros((6, 18))
    for s in range(18):
        cols = [mags_r[s], mags_l[s]]
        params = []
        zs = []
        for x in cols:
            if marginal == "mle0":
                delta = censor_k * np.sqrt(np.mean(x ** 2))
                x = np.maximum(x, MAG_FLOOR)
                a, scale = censored_gamma_fit(x, delta)
                loc = 0.0
                u = scipy.stats.gamma.cdf(x, a, scale=scale)
                u = np.where(x < delta, 0.5 * scipy.stats.gamma.cdf(delta, a, scale=scale), u)
            else:
                a, loc, scale = scipy.stats.gamma.fit(x)
                u = scipy.stats.gamma.cdf(x, a, loc=loc, scale=scale)
            u = np.clip(u, EPS32, 1 - EPS32)
            zs.append(scipy.stats.norm.ppf(u))
            params.append((a, scale))
        sigma = _sigma(zs[0], zs[1])
        out[:, s] = [params[0][0], params[0][1], sigma[0, 0], sigma[0, 1], sigma[1, 0], sigma[1, 1]]
    return out.ravel()


# ---- natural test pairs: crops of the stereodemo (OAK-D) pairs and distorted copies ----

def stereodemo_dir():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("stereodemo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the stereodemo package (test images) is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "oak-d"


def stereodemo_scenes():
    return sorted(p.name[: -len("_left.png")] for p in stereodemo_dir().glob("*_left.png"))


def natural_pair(scene, width=640, height=360):
    """Grey (cv2, uint8) left and right views of a stereodemo scene, centre-cropped."""
    import cv2

    views = []
    for side in ("left", "right"):
        grey = cv2.imread(str(stereodemo_dir() / f"{scene}_{side}.png"), cv2.IMREAD_GRAYSCALE)
        h, w = grey.shape
        top, left = (h - height) // 2, (w - width) // 2
        views.append(np.ascontiguousarray(grey[top:top + height, left:left + width]))
    return views[0], views[1]


def jpeg(view, quality):
    """A grey uint8 view JPEG-compressed at `quality` (OpenCV's encoder) and decoded."""
    import cv2

    ok, buf = cv2.imencode(".jpg", view, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    return cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)


def saturate(view, fraction=0.15):
    """A copy of a grey uint8 view with `fraction` of its pixels saturated: the darkest
    fraction / 2 of the pixels set to 0 and the brightest fraction / 2 to 255 (by rank)."""
    order = np.argsort(view, axis=None, kind="stable")
    part = int(round(view.size * fraction / 2))
    out = view.copy().ravel()
    out[order[:part]] = 0
    out[order[view.size - part:]] = 255
    return out.reshape(view.shape)


def distort(view, kind, seed=0):
    """A distorted copy of a grey uint8 view: pristine, jpeg (quality 10), blur or noise."""
    import cv2

    if kind == "pristine":
        return view.copy()
    if kind == "jpeg":
        ok, buf = cv2.imencode(".jpg", view, [cv2.IMWRITE_JPEG_QUALITY, 10])
        return cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
    if kind == "blur":
        return cv2.GaussianBlur(view, (0, 0), 2.0)
    if kind == "noise":
        rng = np.random.default_rng(seed)
        return np.clip(view + rng.normal(0, 20, view.shape), 0, 255).astype(np.uint8)
    raise ValueError(kind)
