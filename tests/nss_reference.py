"""Plain numpy/scipy implementations of the NSS targets (SPEC section 1), independent of
`siqa.nss`: the `dtcwt` package for the transform and scipy for the fits, CDFs and normal
scores. Used as test oracles and as the baselines of `benchmarks/nss.py`.

`dtcwt` 0.14.0 predates numpy 2 and needs `six`: `np.asfarray` and `np.issubsctype` are given
back before it is imported (`six` is installed from requirements-nodeps.txt).
"""

import numpy as np

if not hasattr(np, "asfarray"):
    def _asfarray(a, dtype=np.float64):
        dtype = np.dtype(dtype)
        return np.asarray(a, dtype=dtype if np.issubdtype(dtype, np.inexact) else np.float64)

    np.asfarray = _asfarray
if not hasattr(np, "issubsctype"):
    np.issubsctype = lambda arg1, arg2: np.issubdtype(np.result_type(arg1), arg2)

import dtcwt  # noqa: E402
import scipy.special  # noqa: E402
import scipy.stats  # noqa: E402

EPS32 = float(np.finfo(np.float32).eps)
EPS64 = float(np.finfo(np.float64).eps)
MAG_FLOOR = 1e-12  # the floor SPEC asks for before logs (same constant as siqa.nss)

_TRANSFORM = None


def transform():
    global _TRANSFORM
    if _TRANSFORM is None:
        _TRANSFORM = dtcwt.Transform2d("near_sym_b", "qshift_b")
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


def nss_reference(left, right, marginal="mle0", preprocess_mode="reference"):
    """The 108-vector, parameter-major (index = 18*p + s), with scipy fits.

    marginal="mle0": `gamma.fit(x, floc=0)` on magnitudes floored at MAG_FLOOR;
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
                x = np.maximum(x, MAG_FLOOR)
                a, loc, scale = scipy.stats.gamma.fit(x, floc=0)
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


def distort(view, kind, seed=0):
    """A distorted copy of a grey uint8 view: pristine, jpeg, blur or noise."""
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
