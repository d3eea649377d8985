"""The 108 naturalness targets of one stereo pair (SPEC section 1), batched in PyTorch.

Pipeline per view: grey uint8 -> float64 / 225 -> standardisation (per column by default)
-> DT-CWT, 3 levels (near_sym_b, qshift_b) -> magnitudes of the 18 subbands (level 1..3,
orientation 0..5: s = 6*(level-1) + k). Per subband, a Gaussian copula with Gamma marginals
between the right (column 0) and left (column 1) magnitudes at the same positions.

Numerical decisions (documented here because they change numbers):
- The uint8 -> float cast is exact; the division by 225 and the standardisation run in
  float64 (SPEC casts to float32 first; the difference is float32 round-off).
- Zero-std guard: a constant column (max == min, i.e. population std exactly 0; e.g. the
  black border of a rectified view) becomes all zeros instead of 0/0. In "global" mode the
  same rule applies to a constant image.
- marginal "mle0" (default): 2-parameter Gamma MLE with loc = 0 on the magnitudes floored at
  MAG_FLOOR (1e-12, far below the coefficient scale of a standardised image; only exactly
  flat regions reach it). The shape solves log a - digamma(a) = log mean(x) - mean(log x)
  (Newton steps on 1/a, float64), scale = mean(x) / a. When the right-hand side is below
  1e-12 (all magnitudes equal, e.g. a constant image) it is taken as 1e-12, which caps the
  shape near 5e11 instead of infinity.
- marginal "scipy_free_loc": exactly `scipy.stats.gamma.fit(x)` (3 parameters, loc free) on
  the unfloored magnitudes, as the original code; slow.
- Normal scores: u = GammaCDF((x - loc) / scale; a) clipped to [eps, 1 - eps] with eps the
  float32 machine epsilon, z = Phi^-1(u).
- Sigma: sample covariance (ddof = 1) of (z_R, z_L); if cond(Sigma) > 1 / float64 eps (or
  Sigma is singular) eps64 * I is added.
- Output, parameter-major (index = 18*p + s): a_R, scale_R, Sigma_RR, Sigma_RL, Sigma_LR,
  Sigma_LL.

Too small: both sides must be at least 2**(levels + 2) = 32 pixels, so that every level-3
subband has at least 4 x 4 = 16 coefficients for its two Gamma fits and its 2 x 2
covariance (SIZE_RULE below; at 8 pixels a level-3 subband would be a single coefficient).
"""
import math

import numpy as np
import torch

from siqa.nss.transform import dtcwt_magnitudes_torch

LEVELS = 3
N_SUBBANDS = 6 * LEVELS
N_FEATURES = 6 * N_SUBBANDS
MARGINALS = ("mle0", "scipy_free_loc")
PREPROCESS = ("reference", "global")
MAG_FLOOR = 1e-12
S_FLOOR = 1e-12
INTERP_NODES = 1024
INTERP_TOL = 1e-9
CUDA_CHUNK = 16
EPS32 = float(np.finfo(np.float32).eps)
EPS64 = float(np.finfo(np.float64).eps)
MIN_SIDE = 2 ** (LEVELS + 2)
SIZE_RULE = (f"both sides must be at least {MIN_SIDE} pixels (2**(levels+2), levels={LEVELS}: "
             f"16 coefficients per level-{LEVELS} subband)")
PARAMETERS = ("a_R", "scale_R", "Sigma_RR", "Sigma_RL", "Sigma_LR", "Sigma_LL")


def _check_settings(marginal, preprocess):
    if marginal not in MARGINALS:
        raise ValueError(f"unknown marginal {marginal!r}: use one of {', '.join(MARGINALS)}")
    if preprocess not in PREPROCESS:
        raise ValueError(f"unknown preprocess {preprocess!r}: use one of {', '.join(PREPROCESS)}")


def check_pair_shapes(left_shape, right_shape):
    """ValueError naming the sizes (width x height) if a pair cannot be transformed."""
    if tuple(left_shape) != tuple(right_shape):
        raise ValueError(
            f"left and right views differ in size: left is {left_shape[1]}x{left_shape[0]}, "
            f"right is {right_shape[1]}x{right_shape[0]} (width x height)")
    if len(left_shape) != 2:
        raise ValueError(f"expected grey images (H x W), got shape {tuple(left_shape)}")
    h, w = left_shape
    if h < MIN_SIDE or w < MIN_SIDE:
        raise ValueError(f"image too small for {LEVELS} DT-CWT levels: {w}x{h} (width x height); "
                         f"{SIZE_RULE}")


def preprocess_views(views: torch.Tensor, mode: str = "reference") -> torch.Tensor:
    """(N, H, W) grey values -> float64 standardised views (see the module's zero-std guard)."""
    x = views.to(torch.float64).div_(225.0)
    if mode == "reference":
        dims = (1,)
    elif mode == "global":
        dims = (1, 2)
    else:
        raise ValueError(f"unknown preprocess {mode!r}")
    mean = x.mean(dim=dims, keepdim=True)
    std = x.std(dim=dims, keepdim=True, unbiased=False)
    const = x.amax(dim=dims, keepdim=True) == x.amin(dim=dims, keepdim=True)
    x.sub_(mean).div_(torch.where(const, torch.ones_like(std), std))
    return x.masked_fill_(const, 0.0)


def subband_magnitudes(views: torch.Tensor, mode: str = "reference"):
    """List of LEVELS tensors (N, 6, H_l * W_l): |coefficients| per orientation."""
    return [m.flatten(2) for m in dtcwt_magnitudes_torch(preprocess_views(views, mode), LEVELS)]


def gamma_mle0(mean_x: torch.Tensor, mean_log: torch.Tensor, steps: int = 30):
    """Shape and scale of the loc = 0 Gamma MLE from mean(x) and mean(log x) (float64)."""
    s = torch.clamp(torch.log(mean_x) - mean_log, min=S_FLOOR)
    # Minka's closed-form start, within ~1.5% of the root, then Newton steps on 1/a
    a = (3.0 - s + torch.sqrt((s - 3.0) ** 2 + 24.0 * s)) / (12.0 * s)
    for _ in range(steps):
        f = torch.log(a) - torch.special.digamma(a) - s
        df = 1.0 / a - torch.special.polygamma(1, a)
        inv = 1.0 / a + f / (a * a * df)
        new = 1.0 / inv
        new = torch.where(torch.isfinite(new) & (new > 0), new, a)
        done = bool(torch.all(torch.abs(new - a) <= 1e-15 * a))
        a = new
        if done:
            break
    return a, mean_x / a


def _scores_direct(a, y):
    """z = Phi^-1(clip(P(a, y), eps, 1 - eps)) evaluated element by element."""
    u = torch.clamp(torch.special.gammainc(a, y), EPS32, 1.0 - EPS32)
    return torch.special.ndtri(u)


def _normal_scores(x, a, loc, scale):
    """Normal scores of each row of x (M, P) under Gamma(a, loc, scale) per row, directly."""
    y = torch.clamp((x - loc[..., None]) / scale[..., None], min=0.0)
    return _scores_direct(a[..., None], y)


def _normal_scores_tabulated(log_x, a, scale, nodes=INTERP_NODES, tol=INTERP_TOL):
    """The same normal scores for loc = 0, evaluated through a per-row table.

    g(t) = Phi^-1(clip(P(a, exp(t)), eps, 1 - eps)) with t = log(x / scale) is smooth in t
    except where the clip starts. Per row, g and dg/dt = y f(y) / phi(z) are computed
    exactly (torch.special.gammainc / ndtri) at `nodes` equispaced t covering the row's data,
    and every element is evaluated by the cubic Hermite interpolant of its interval. Checks:
    g is also computed exactly at every interval midpoint; a row whose interpolant misses
    one of them by more than `tol` is evaluated directly instead, and so are the elements of
    intervals where the clip starts (one end clipped, the other not). The result equals the
    direct evaluation to about `tol` (1e-9), at a fraction of its cost (gammainc costs
    ~150 ns per element on a CPU core).
    """
    rows, count = log_x.shape
    t = log_x - torch.log(scale)[:, None]
    t_lo = t.amin(dim=1)
    t_hi = t.amax(dim=1)
    span = t_hi - t_lo
    step = torch.where(span > 0, span / (nodes - 1), torch.ones_like(span))
    grid = torch.arange(nodes, dtype=t.dtype, device=t.device)
    a_col = a[:, None]

    def exact(tt):
        y = torch.exp(tt)
        u = torch.special.gammainc(a_col, y)
        clipped_lo = u <= EPS32
        clipped_hi = u >= 1.0 - EPS32
        z = torch.special.ndtri(torch.clamp(u, EPS32, 1.0 - EPS32))
        # dz/dt = y f(y) / phi(z), in logs: a t - y - lgamma(a) + z^2/2 + log(sqrt(2 pi))
        log_d = a_col * tt - y - torch.lgamma(a_col) + 0.5 * z * z + 0.5 * math.log(2 * math.pi)
        d = torch.where(clipped_lo | clipped_hi, torch.zeros_like(z), torch.exp(log_d))
        state = clipped_hi.to(torch.int8) - clipped_lo.to(torch.int8)
        return z, d, state

    t_nodes = t_lo[:, None] + step[:, None] * grid
    z_n, d_n, state = exact(t_nodes)
    m0 = d_n[:, :-1] * step[:, None]
    m1 = d_n[:, 1:] * step[:, None]
    z0, z1 = z_n[:, :-1], z_n[:, 1:]
    coef = torch.stack((z0, m0, 3.0 * (z1 - z0) - 2.0 * m0 - m1, 2.0 * (z0 - z1) + m0 + m1), dim=-1)
    kink = state[:, :-1] != state[:, 1:]

    # midpoint check of the interpolant on the smooth intervals
    z_mid, _, _ = exact(t_nodes[:, :-1] + 0.5 * step[:, None])
    c = coef
    interp_mid = c[..., 0] + 0.5 * (c[..., 1] + 0.5 * (c[..., 2] + 0.5 * c[..., 3]))
    miss = torch.where(kink, torch.zeros_like(z_mid), (interp_mid - z_mid).abs()).amax(dim=1)
    bad_rows = miss > tol

    # s = (t - t_lo) / step, element index and fraction, with few full-size temporaries
    sidx = t.sub_(t_lo[:, None]).div_(step[:, None])
    idx = torch.clamp_(sidx.floor(), 0, nodes - 2)
    frac = sidx.sub_(idx)
    idx = idx.long()
    tables = coef.permute(2, 0, 1).contiguous()  # (4, rows, nodes - 1)
    z = torch.gather(tables[3], 1, idx).mul_(frac)
    for k in (2, 1, 0):
        z.add_(torch.gather(tables[k], 1, idx))
        if k:
            z.mul_(frac)
    redo = torch.gather(kink, 1, idx)
    redo |= bad_rows[:, None]
    if bool(redo.any()):
        r, p = redo.nonzero(as_tuple=True)
        z[r, p] = _scores_direct(a[r], torch.exp(log_x[r, p] - torch.log(scale[r])))
    return z


def _sigma(zr, zl):
    """Sample covariance (ddof=1) of each (z_R, z_L) column pair, with the singular guard."""
    n = zr.shape[-1]
    zr = zr - zr.mean(dim=-1, keepdim=True)
    zl = zl - zl.mean(dim=-1, keepdim=True)
    srr = (zr * zr).sum(-1) / (n - 1)
    sll = (zl * zl).sum(-1) / (n - 1)
    srl = (zr * zl).sum(-1) / (n - 1)
    # 2-norm condition number of the symmetric 2x2 matrix from its eigenvalues
    half_tr = 0.5 * (srr + sll)
    rad = torch.sqrt((0.5 * (srr - sll)) ** 2 + srl ** 2)
    lmax, lmin = half_tr + rad, half_tr - rad
    singular = (lmin <= 0) | (lmax > lmin / EPS64)
    add = torch.where(singular, torch.full_like(srr, EPS64), torch.zeros_like(srr))
    return srr + add, srl, srl.clone(), sll + add


def _fit_scipy_free_loc(x: torch.Tensor):
    """The original fit: scipy.stats.gamma.fit(x) per column. x (M, n) -> (a, loc, scale)."""
    import scipy.stats

    params = [scipy.stats.gamma.fit(col) for col in x.detach().cpu().numpy()]
    a, loc, scale = (torch.tensor(v, dtype=torch.float64, device=x.device) for v in zip(*params))
    return a, loc, scale


def nss_features_torch(left: torch.Tensor, right: torch.Tensor, marginal: str = "mle0",
                       preprocess: str = "reference", scores: str = "tabulated") -> torch.Tensor:
    """Batched targets: left, right (N, H, W) grey tensors -> (N, 108) float64 (same device).

    scores (mle0 only): "tabulated" (default, see `_normal_scores_tabulated`, equal to
    "direct" to ~1e-9; used for subbands of at least 4 * INTERP_NODES coefficients, smaller
    ones are evaluated directly) or "direct" (gammainc + ndtri on every magnitude)."""
    _check_settings(marginal, preprocess)
    if scores not in ("tabulated", "direct"):
        raise ValueError(f"unknown scores {scores!r}: use tabulated or direct")
    if left.dim() != 3 or right.dim() != 3:
        raise ValueError(f"expected batches (N, H, W), got {tuple(left.shape)} and {tuple(right.shape)}")
    check_pair_shapes(tuple(left.shape[1:]), tuple(right.shape[1:]))
    n = left.shape[0]
    views = torch.cat((right, left), dim=0)  # right views first: column 0 = right
    out = torch.empty((n, 6, N_SUBBANDS), dtype=torch.float64, device=views.device)
    for level, mags in enumerate(subband_magnitudes(views, preprocess)):
        # mags: (2N, 6, P); one Gamma fit per (view, orientation) row
        if marginal == "mle0":
            x = torch.clamp(mags, min=MAG_FLOOR)
            log_x = torch.log(x)
            a, scale = gamma_mle0(x.mean(-1), log_x.mean(-1))
            if scores == "tabulated" and x.shape[-1] >= 4 * INTERP_NODES:
                z = _normal_scores_tabulated(log_x.flatten(0, 1), a.flatten(), scale.flatten())
                z = z.reshape(x.shape)
            else:
                z = _normal_scores(x, a, torch.zeros_like(a), scale)
        else:
            x = mags
            a, loc, scale = _fit_scipy_free_loc(x.reshape(-1, x.shape[-1]))
            a, loc, scale = (v.reshape(x.shape[:2]) for v in (a, loc, scale))
            z = _normal_scores(x, a, loc, scale)
        srr, srl, slr, sll = _sigma(z[:n], z[n:])
        cols = slice(6 * level, 6 * level + 6)
        out[:, 0, cols] = a[:n]
        out[:, 1, cols] = scale[:n]
        out[:, 2, cols] = srr
        out[:, 3, cols] = srl
        out[:, 4, cols] = slr
        out[:, 5, cols] = sll
    return out.reshape(n, N_FEATURES)


def _as_view(image, name):
    arr = np.asarray(image)
    if arr.ndim != 2:
        raise ValueError(f"{name} view must be a grey H x W image, got shape {arr.shape}")
    return arr


def nss_features_batch(lefts, rights, marginal: str = "mle0", preprocess: str = "reference",
                       device="cpu") -> np.ndarray:
    """Targets of several pairs of equal size at once: sequences of grey H x W images ->
    (N, 108) float64."""
    _check_settings(marginal, preprocess)
    lefts = [_as_view(v, "left") for v in lefts]
    rights = [_as_view(v, "right") for v in rights]
    if len(lefts) != len(rights):
        raise ValueError(f"{len(lefts)} left views but {len(rights)} right views")
    if not lefts:
        return np.zeros((0, N_FEATURES))
    for lv, rv in zip(lefts, rights):
        check_pair_shapes(lv.shape, rv.shape)
        if lv.shape != lefts[0].shape:
            raise ValueError(f"a batch needs pairs of one size: {lv.shape[1]}x{lv.shape[0]} and "
                             f"{lefts[0].shape[1]}x{lefts[0].shape[0]} (width x height)")
    # on a CPU one pair at a time is fastest (the working set stays in cache); a GPU takes
    # CUDA_CHUNK pairs per call
    chunk = CUDA_CHUNK if torch.device(device).type == "cuda" else 1
    out = []
    with torch.no_grad():
        for start in range(0, len(lefts), chunk):
            lt = torch.from_numpy(np.stack(lefts[start:start + chunk])).to(device)
            rt = torch.from_numpy(np.stack(rights[start:start + chunk])).to(device)
            out.append(nss_features_torch(lt, rt, marginal, preprocess).cpu().numpy())
    return np.concatenate(out)


def nss_features(left, right, marginal: str = "mle0", preprocess: str = "reference",
                 device="cpu") -> np.ndarray:
    """The 108 targets (float64) of one pair of grey uint8 H x W views of equal size."""
    _check_settings(marginal, preprocess)
    left, right = _as_view(left, "left"), _as_view(right, "right")
    check_pair_shapes(left.shape, right.shape)
    return nss_features_batch([left], [right], marginal, preprocess, device)[0]
