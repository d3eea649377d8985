"""The 108 naturalness targets of one stereo pair (docs/method.md#the-nss-targets), batched in PyTorch.

Pipeline per view: grey uint8 -> float64 / 225 -> standardisation (per column by default)
-> DT-CWT, 3 levels (near_sym_b, qshift_b) -> magnitudes of the 18 subbands (level 1..3,
orientation 0..5: s = 6*(level-1) + k). Per subband, a Gaussian copula with Gamma marginals
between the right (column 0) and left (column 1) magnitudes at the same positions.

Numerical decisions (documented here because they change numbers):
- The uint8 -> float cast is exact; by default (standardise_dtype "float64") the
  standardisation and the DT-CWT run in float64 (the division by 225 cancels in the
  standardisation and is not carried out). standardise_dtype "float32" is the original's reference
  pipeline: cast to float32, divide by 225, standardise in float32, and transform in
  float32 (as the `dtcwt` package does with a float32 input); fits and scores are float64.
  The two differ by round-off only, and the targets agree to 1e-4 (tests/test_nss_censored.py).
- Zero-std guard: a constant column (max == min, i.e. population std exactly 0; e.g. the
  black border of a rectified view) becomes all zeros instead of 0/0. In "global" mode the
  same rule applies to a constant image.
- marginal "mle0" (default; NSS version 2): a LEFT-CENSORED 2-parameter Gamma MLE, loc = 0.
  Why: flat areas (JPEG blocks, saturated or black regions) give highpass magnitudes that
  are pure round-off (float64: below 1e-15 x RMS; float32: up to ~1e-6 x RMS). Their logs
  dominate mean(log x) of the plain MLE, so version 1 (plain MLE on x floored at MAG_FLOOR)
  moved by 5-15 % between float32 and float64 (level-1 shape of a JPEG q10 pair: 0.096 vs
  0.139) and trained the auxiliary task on numerical noise. Definition, per subband row
  (one view, one orientation, n magnitudes):
    x = max(|c|, MAG_FLOOR);  delta = CENSOR_K * sqrt(mean |c|^2)  (CENSOR_K = 3e-3);
    censored: x < delta (n_c of them); observed: x >= delta (n_o = n - n_c);
    (a, scale) maximise  n_c log P(a, delta / scale) + sum_observed log f(x; a, scale),
    P the regularised lower incomplete gamma, f the Gamma(a, loc 0, scale) density.
  Normal scores (step 7): observed z = Phi^-1(clip(P(a, x / scale), eps, 1 - eps));
  censored z = Phi^-1(clip(P(a, delta / scale) / 2, eps, 1 - eps)), one fixed score per
  row: the normal score of the conditional median of the censored mass. A row with n_c = 0
  is the plain MLE (`gamma_mle0`: log a - digamma(a) = log mean(x) - mean(log x), Newton
  steps on 1/a from Minka's start, scale = mean(x) / a; the right side is floored at 1e-12,
  which caps the shape near 5e11 for rows of equal magnitudes, e.g. a constant image).
  Solver (`gamma_mle0_censored`, numpy on the per-row statistics n_o, n_c, mean and mean
  log of the observed x, delta): for each a the scale equation has one root y = delta /
  scale in [r a, r a (1 + c)] (r = delta / mean, c = n_c / n_o), found by Newton; the
  profile score in a is solved by Newton steps on log a kept inside a bisection bracket
  [A_MIN = 1e-6, a where y would exceed Y_MAX = 40 (at most A_MAX = 1e8)], a root outside
  giving the bound. P and its derivatives in a come from the series P = y^a e^-y S /
  Gamma(a + 1), S = sum_j y^j / ((a+1)...(a+j)). Checked against scipy.optimize
  (Nelder-Mead on the same likelihood, tests/nss_reference.py) to 1e-5 on synthetic rows
  with up to 99 % censored, shapes 1e-3 to 6.
  Choice of CENSOR_K (benchmarks/nss_sensitivity.py, 640x360 stereodemo pairs stairs and
  cycles: natural, JPEG q 5/10/20/30, blur, 15 % saturated). Largest float32-vs-float64
  gap over the 108 targets and the 7 pairs, stairs / cycles: k = 0 (version 1) 1.4e-1 /
  1.5e-1; 1e-6: 8.1e-3 / 1.1e-3 (round-off reaches delta); 1e-4: 5.1e-5 / 1.7e-5; 1e-3:
  4.3e-4 / 3.0e-5; 3e-3: 4.4e-5 / 2.0e-5; 1e-2: 7.1e-5 / 2.8e-5; 3e-2: 9.3e-4 / 7.4e-5.
  The fitted shapes have no plateau in k: level-1 shapes rise by 3-5 % per decade of k on
  every pair (real small coefficients do not follow a Gamma law near 0), so no k leaves
  the real coefficients untouched; k = 3e-3 is 3000x above the largest float32 round-off,
  censors 0.5-3 % of the real level-1 magnitudes of a natural view, and gave the smallest
  gap. The residual gap comes from single magnitudes close to delta that fall on the other
  side of it in the other precision: each such crossing moves the fit by about 1 / n
  (n = coefficients of the subband), so small views (few level-3 coefficients) are the
  most sensitive.
- marginal "scipy_free_loc": exactly `scipy.stats.gamma.fit(x)` (3 parameters, loc free) on
  the unfloored, uncensored magnitudes, as the original code; slow.
- Normal scores: u = GammaCDF((x - loc) / scale; a) clipped to [eps, 1 - eps] with eps the
  float32 machine epsilon, z = Phi^-1(u) (censored magnitudes: see mle0). For mle0 on
  subbands of at least 4 * INTERP_NODES coefficients z is evaluated through a per-subband
  quintic Hermite table of Phi^-1(GammaCDF) in log x over [log delta, log max x], verified
  against the exact values at every interval midpoint (`_normal_scores_tabulated`: equal
  to the element-by-element evaluation to ~1e-11 on natural images, never worse than
  INTERP_TOL = 1e-9, or that subband is evaluated exactly).
- Sigma: sample covariance (ddof = 1) of (z_R, z_L); if cond(Sigma) > 1 / float64 eps (or
  Sigma is singular) eps64 * I is added.
- Output, parameter-major (index = 18*p + s): a_R, scale_R, Sigma_RR, Sigma_RL, Sigma_LR,
  Sigma_LL.

Precision and speed: by default everything runs in float64. A float32 DT-CWT was rejected
for version 1 (flat regions get float32 round-off magnitudes instead of ~0 and the Gamma
fits moved by up to ~15 %); with the censored fit it gives the same targets to ~1e-4
(standardise_dtype="float32"), but the default stays float64. On a CPU the temporaries
live in a per-thread `Workspace` kept between calls (~60 MB for a 640x360 pair), because
first-touch page faults on fresh memory cost as much as several passes over it.

Too small: both sides must be at least 2**(levels + 2) = 32 pixels, so that every level-3
subband has at least 4 x 4 = 16 coefficients for its two Gamma fits and its 2 x 2
covariance (SIZE_RULE below; at 8 pixels a level-3 subband would be a single coefficient).
"""
import math
import threading

import numpy as np
import torch

from siqa.nss.transform import COMPUTED_ORIENTATIONS, Workspace, dtcwt_squared_magnitudes_torch
from siqa.settings import setting_choices

LEVELS = 3
N_SUBBANDS = 6 * LEVELS
N_FEATURES = 6 * N_SUBBANDS
MARGINALS = setting_choices("nss.marginal")
PREPROCESS = setting_choices("nss.preprocess")
# logs of exact zeros; only reached when delta < 1e-12 (a subband of round-off only) or censor_k = 0
MAG_FLOOR = 1e-12
CENSOR_K = 3e-3
A_MIN = 1e-6
A_MAX = 1e8
Y_MAX = 40.0
STANDARDISE_DTYPES = ("float64", "float32")
S_FLOOR = 1e-12
INTERP_NODES = 256
INTERP_TOL = 1e-9
SCORE_CHUNK = 1 << 16
CUDA_CHUNK = 16
EPS32 = float(np.finfo(np.float32).eps)
EPS64 = float(np.finfo(np.float64).eps)
MIN_SIDE = 2 ** (LEVELS + 2)
SIZE_RULE = (f"both sides must be at least {MIN_SIDE} pixels (2**(levels+2), levels={LEVELS}: "
             f"16 coefficients per level-{LEVELS} subband)")
PARAMETERS = ("a_R", "scale_R", "Sigma_RR", "Sigma_RL", "Sigma_LR", "Sigma_LL")


def _check_settings(marginal, preprocess, standardise_dtype="float64"):
    if standardise_dtype not in STANDARDISE_DTYPES:
        raise ValueError(f"unknown standardise_dtype {standardise_dtype!r}: use one of "
                         f"{', '.join(STANDARDISE_DTYPES)}")
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


def preprocess_views(views: torch.Tensor, mode: str = "reference", workspace=None,
                     dtype: str = "float64") -> torch.Tensor:
    """(N, H, W) grey values -> standardised views in `dtype` (see the module's zero-std guard).

    float64: the division by 225 of docs/method.md#grey-views-and-standardisation cancels in
    the standardisation ((x/225 - m/225) / (s/225) = (x - m) / s), so it is not carried out (the results differ by
    round-off). float32: the original reference pipeline as written (cast to float32, divide by
    225, column mean and population std in float32)."""
    if mode == "reference":
        dims = (1,)
    elif mode == "global":
        dims = (1, 2)
    else:
        raise ValueError(f"unknown preprocess {mode!r}")
    const = views.amax(dim=dims, keepdim=True) == views.amin(dim=dims, keepdim=True)
    if dtype == "float32":
        x = _scratch(workspace, "views32", views.shape, views.new_empty((), dtype=torch.float32))
        x.copy_(views).div_(225.0)
    else:
        x = _scratch(workspace, "views", views.shape, views.new_empty((), dtype=torch.float64)).copy_(views)
    x.sub_(x.mean(dim=dims, keepdim=True))
    count = math.prod(x.shape[d] for d in dims)
    std = torch.linalg.vector_norm(x, dim=dims, keepdim=True).div_(math.sqrt(count))
    inv = torch.where(const, torch.zeros_like(std), 1.0 / torch.where(const, torch.ones_like(std), std))
    return x.mul_(inv)


_THREAD = threading.local()


def _workspace(device):
    """The calling thread's Workspace for CPU work (None on other devices, whose caching
    allocators already reuse memory)."""
    if torch.device(device).type != "cpu":
        return None
    if getattr(_THREAD, "workspace", None) is None:
        _THREAD.workspace = Workspace()
    return _THREAD.workspace


def subband_squared_magnitudes(views: torch.Tensor, mode: str = "reference", workspace=None,
                                dtype: str = "float64"):
    """List of LEVELS tensors (6, N, H_l * W_l): |coefficients|^2 per orientation, the
    orientations in the order `COMPUTED_ORIENTATIONS` (package orientation
    COMPUTED_ORIENTATIONS[j] at [j]), in `dtype` (the precision of the standardisation and
    of the transform). With a workspace the results live in it (valid until its next use)."""
    x = preprocess_views(views, mode, workspace, dtype)
    return [sq.flatten(2) for sq in dtcwt_squared_magnitudes_torch(x, LEVELS, workspace)]


def subband_magnitudes(views: torch.Tensor, mode: str = "reference", dtype: str = "float64"):
    """List of LEVELS tensors (N, 6, H_l * W_l): |coefficients| per orientation (package order)."""
    perm = [COMPUTED_ORIENTATIONS.index(k) for k in range(6)]
    return [sq[perm].sqrt_().transpose(0, 1).contiguous()
            for sq in subband_squared_magnitudes(views, mode, dtype=dtype)]


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


# ---- left-censored Gamma MLE (loc = 0): see the module docstring, "marginal mle0" ----
# The solver works on a few numbers per subband row (no pixel data), so it runs in numpy on
# the host: there a small-array operation costs ~1 us, a torch one 5-20 us.

def _series_terms(y_max):
    """Number of terms after which t_j <= y^j / j! < 1e-17 for every y <= y_max."""
    terms, bound = 1, y_max
    while bound > 1e-17 and terms < 2000:
        terms += 1
        bound *= y_max / terms
    return max(terms, 4)


def _gamma_series(a, y, derivatives):
    """S(a, y) = sum_j t_j with t_0 = 1, t_j = t_{j-1} y / (a + j) (so that the regularised
    lower incomplete gamma is P(a, y) = y^a e^-y S / Gamma(a + 1)), and its partial
    derivatives, per row (numpy). Returns S, S_y and, if asked, S_a, S_aa, S_ay. As t_j <=
    y^j / j!, the series is cut where that bound falls below 1e-17 for the largest y."""
    j = np.arange(1.0, _series_terms(float(y.max())) + 1.0)
    inv = 1.0 / (a[:, None] + j)
    t = np.cumprod(y[:, None] * inv, axis=1)
    jt = t * j
    s = 1.0 + t.sum(axis=1)
    s_y = jt.sum(axis=1) / y
    if not derivatives:
        return s, s_y
    h1 = np.cumsum(inv, axis=1)
    h2 = np.cumsum(inv * inv, axis=1)
    s_a = -(t * h1).sum(axis=1)
    s_aa = (t * (h1 * h1 + h2)).sum(axis=1)
    s_ay = -(jt * h1).sum(axis=1) / y
    return s, s_y, s_a, s_aa, s_ay


def _censored_y(a, r, c, y, iterations=60):
    """The root y = delta / theta of the scale equation at shape a: y = r (a + c a / S(a, y)),
    with r = delta / mean of the observed x and c = n_c / n_o. The right side decreases in y,
    so the root is unique and lies in [r a, r a (1 + c)]; Newton steps from y, kept inside."""
    lo, hi = r * a, r * a * (1.0 + c)
    y = np.clip(y, lo, hi)
    for _ in range(iterations):
        s, s_y = _gamma_series(a, y, derivatives=False)
        f = y - r * (a + c * a / s)
        df = 1.0 + r * c * a * s_y / (s * s)
        new = np.clip(y - f / df, lo, hi)
        done = np.all(np.abs(new - y) <= 1e-14 * y)
        y = new
        if done:
            break
    return y


def _censored_score(a, r, c, log_delta, mean_log, y):
    """Profile score G(a) = d/da [log-likelihood / n_o] at the best scale for this a, and
    dG/da (implicit differentiation through y(a)). Returns G, dG/da, y."""
    from scipy.special import digamma, zeta

    y = _censored_y(a, r, c, y)
    s, s_y, s_a, s_aa, s_ay = _gamma_series(a, y, derivatives=True)
    log_y = np.log(y)
    g = c * (log_y - digamma(a + 1.0) + s_a / s) + log_y - log_delta + mean_log - digamma(a)
    h_a = 1.0 / s - a * s_a / (s * s)
    h_y = -a * s_y / (s * s)
    dy = r * (1.0 + c * h_a) / (1.0 - r * c * h_y)
    d2_aa = -zeta(2.0, a + 1.0) + s_aa / s - (s_a / s) ** 2  # zeta(2, x) = trigamma(x)
    d2_ay = 1.0 / y + s_ay / s - s_a * s_y / (s * s)
    dg = c * (d2_aa + d2_ay * dy) + dy / y - zeta(2.0, a)
    return g, dg, y


def gamma_mle0_censored(n_obs, mean_obs, mean_log_obs, n_cens, delta, iterations=100):
    """Shape and scale of the loc = 0 Gamma MLE with left-censoring at delta (float64 tensors,
    per row): n_obs magnitudes >= delta with mean `mean_obs` and mean log `mean_log_obs`, and
    n_cens > 0 magnitudes below delta known only as such.

    Maximises l(a, theta) / n_o = c log P(a, delta / theta) + (a - 1) mean_log - mean / theta
    - a log theta - lgamma(a) (c = n_c / n_o) by safeguarded Newton steps on log a of the
    profile score (the scale solved for each a, `_censored_y`), inside [A_MIN, the a at
    which delta / theta would exceed Y_MAX, at most A_MAX]; a root outside gives the bound."""
    device = n_obs.device
    n_obs, mean_obs, mean_log, n_cens, delta = (
        v.detach().cpu().numpy().astype(np.float64) for v in (n_obs, mean_obs, mean_log_obs, n_cens, delta))
    c = n_cens / n_obs
    r = delta / mean_obs
    log_delta = np.log(delta)
    u_lo = np.full_like(c, math.log(A_MIN))
    u_hi = np.log(np.minimum(Y_MAX / (r * (1.0 + c)), A_MAX))
    u_max = u_hi.copy()
    g_lo, _, _ = _censored_score(np.exp(u_lo), r, c, log_delta, mean_log, r * np.exp(u_lo))
    g_hi, _, _ = _censored_score(np.exp(u_hi), r, c, log_delta, mean_log, r * np.exp(u_hi))
    fixed = (g_lo <= 0) | (g_hi >= 0)  # the root is outside the range: the bound
    # start: the uncensored MLE with the censored magnitudes set to delta
    n = n_obs + n_cens
    a0, _ = gamma_mle0(torch.from_numpy((n_obs * mean_obs + n_cens * delta) / n),
                       torch.from_numpy((n_obs * mean_log + n_cens * log_delta) / n))
    u = np.where(fixed, np.where(g_lo <= 0, u_lo, u_max), np.clip(np.log(a0.numpy()), u_lo, u_hi))
    y = r * np.exp(u)
    for _ in range(iterations):
        a = np.exp(u)
        g, dg, y = _censored_score(a, r, c, log_delta, mean_log, y)
        u_lo = np.where(g > 0, u, u_lo)
        u_hi = np.where(g > 0, u_hi, u)
        with np.errstate(all="ignore"):
            new = u - g / (a * dg)
        inside = np.isfinite(new) & (new > u_lo) & (new < u_hi)
        new = np.where(fixed, u, np.where(inside, new, 0.5 * (u_lo + u_hi)))
        done = np.all((np.abs(new - u) <= 1e-11) | (u_hi - u_lo <= 1e-11))
        u = new
        if done:
            break
    a = np.exp(u)
    y = _censored_y(a, r, c, y)
    return (torch.from_numpy(a).to(device), torch.from_numpy(delta / y).to(device))


def _scores_direct(a, y):
    """z = Phi^-1(clip(P(a, y), eps, 1 - eps)) evaluated element by element."""
    u = torch.clamp(torch.special.gammainc(a, y), EPS32, 1.0 - EPS32)
    return torch.special.ndtri(u)


def _normal_scores(x, a, loc, scale):
    """Normal scores of each row of x (M, P) under Gamma(a, loc, scale) per row, directly."""
    y = torch.clamp((x - loc[..., None]) / scale[..., None], min=0.0)
    return _scores_direct(a[..., None], y)


_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
# the clip bounds of docs/method.md#normal-scores-and-the-copula as normal scores: Phi^-1 is increasing, so
# Phi^-1(clip(u, eps, 1 - eps)) = clip(Phi^-1(u), Z_LO, Z_HI)
Z_LO = float(torch.special.ndtri(torch.tensor(EPS32, dtype=torch.float64)))
Z_HI = float(torch.special.ndtri(torch.tensor(1.0 - EPS32, dtype=torch.float64)))


def _score_nodes(a_col, tt, derivatives=True):
    """h(t) = Phi^-1(P(a, e^t)) (unclipped; through the upper tail Q = 1 - P where P > 1/2,
    which keeps h finite and accurate beyond the clip points) and, if asked, its first two
    derivatives in t: h' = y f(y) / phi(h) = exp(a t - y - lgamma(a) + h^2/2 + log sqrt(2 pi)),
    h'' = h' (a - y + h h')."""
    a_full = a_col.expand_as(tt)
    y = torch.exp(tt)
    p = torch.special.gammainc(a_full, y)
    z = torch.special.ndtri(p)
    upper = p > 0.5
    if bool(upper.any()):
        z[upper] = -torch.special.ndtri(torch.special.gammaincc(a_full[upper], y[upper]))
    if not derivatives:
        return z, None, None
    d1 = torch.exp(a_col * tt - y - torch.lgamma(a_col) + 0.5 * z * z + _LOG_SQRT_2PI)
    d2 = d1 * (a_col - y + z * d1)
    return z, d1, d2


def _quintic_tables(a, t_lo, t_hi, nodes):
    """Per row, the quintic Hermite pieces of h(t) on `nodes` equispaced nodes covering
    [t_lo - step, t_hi + step]: (coef (6, rows, nodes - 1) in powers of the fraction s in
    [0, 1) of an interval, start, step, miss) with miss the largest error of the
    interpolant (after the clip) at the interval midpoints, non-finite tables giving inf."""
    span = t_hi - t_lo
    step = torch.where(span > 0, span / (nodes - 3), torch.ones_like(span))
    start = t_lo - step
    grid = torch.arange(nodes, dtype=a.dtype, device=a.device)
    tn = start[:, None] + step[:, None] * grid
    a_col = a[:, None]
    z, d1, d2 = _score_nodes(a_col, tn)
    h = step[:, None]
    z0, z1 = z[:, :-1], z[:, 1:]
    m0, m1 = d1[:, :-1] * h, d1[:, 1:] * h
    c0, c1 = d2[:, :-1] * (h * h), d2[:, 1:] * (h * h)
    r0 = z1 - z0 - m0 - 0.5 * c0
    r1 = m1 - m0 - c0
    r2 = c1 - c0
    coef = torch.stack((z0, m0, 0.5 * c0, 10.0 * r0 - 4.0 * r1 + 0.5 * r2,
                        -15.0 * r0 + 7.0 * r1 - r2, 6.0 * r0 - 3.0 * r1 + 0.5 * r2))
    zm, _, _ = _score_nodes(a_col, tn[:, :-1] + 0.5 * h, derivatives=False)
    pm = coef[5]
    for c in coef[:5].flip(0):
        pm = pm * 0.5 + c
    miss = (pm.clamp(Z_LO, Z_HI) - zm.clamp(Z_LO, Z_HI)).abs().amax(dim=1)
    finite = torch.isfinite(coef).all(dim=0).all(dim=1) & torch.isfinite(zm).all(dim=1)
    miss = torch.where(finite, miss, torch.full_like(miss, math.inf))
    return coef, start, step, miss


def _scratch(workspace, key, shape, like):
    if workspace is None:
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    return workspace.empty(key, shape, like)


def _normal_scores_tabulated(log_x, a, scale, t_lo, t_hi, nodes=INTERP_NODES, tol=INTERP_TOL,
                             chunk=SCORE_CHUNK, workspace=None):
    """Normal scores (docs/method.md#normal-scores-and-the-copula, loc = 0) of each row of log_x
    (rows, P) through a per-row table; log_x is overwritten. t_lo, t_hi: per row, the range of t = log(x / scale).

    h(t) = Phi^-1(P(a, e^t)) is smooth in t (the clip of step 7 is applied after the
    interpolation: z = clip(h, Z_LO, Z_HI), equal to clipping u because Phi^-1 is
    increasing). Per row, h, h' and h'' are computed exactly (torch.special.gammainc /
    gammaincc / ndtri) at `nodes` equispaced t covering the row's data, and every element is
    evaluated by the quintic Hermite interpolant of its interval (one table gather per
    coefficient, no search: the interval index is the integer part of (t - start) / step).
    Check: h is also computed exactly at every interval midpoint; a row whose interpolant
    misses one of them by more than `tol` (or whose table is not finite) is evaluated
    directly instead. The result equals the direct evaluation to about 1e-11 on natural
    images (always within `tol`, 1e-9), at a fraction of its cost (gammainc costs ~150 ns per
    element on a CPU core).
    """
    rows, count = log_x.shape
    coef, start, step, miss = _quintic_tables(a, t_lo, t_hi, nodes)
    bad = (miss > tol).nonzero(as_tuple=True)[0]
    y_bad = torch.exp(log_x[bad] - torch.log(scale[bad])[:, None]) if len(bad) else None
    tables = coef.reshape(6, -1)  # row r's interval i at r * (nodes - 1) + i
    inv = 1.0 / step
    # global interval coordinate: r * (nodes - 1) + (log x - log scale - start) / step
    offset = torch.arange(rows, dtype=a.dtype, device=a.device) * (nodes - 1) - (torch.log(scale) + start) * inv
    per = max(1, chunk // max(count, 1))
    shape = (min(per, rows), count)
    fl, z, buf = (_scratch(workspace, "scores_" + name, shape, log_x) for name in ("fl", "z", "buf"))
    idx = _scratch(workspace, "scores_idx", shape, log_x.new_empty((), dtype=torch.int32))
    for r0 in range(0, rows, per):
        sg = log_x[r0:r0 + per]
        m = sg.shape[0]
        f_, i_, z_, b_ = fl[:m], idx[:m], z[:m], buf[:m]
        sg.mul_(inv[r0:r0 + per, None]).add_(offset[r0:r0 + per, None])
        torch.floor(sg, out=f_)
        frac = sg.sub_(f_)
        i_.copy_(f_)
        flat = i_.view(-1)
        torch.index_select(tables[5], 0, flat, out=z_.view(-1))
        for k in range(4, -1, -1):  # Horner: z <- table_k[idx] + z * frac
            torch.index_select(tables[k], 0, flat, out=b_.view(-1))
            z_, b_ = b_.addcmul_(z_, frac), z_
        torch.clamp(z_, Z_LO, Z_HI, out=sg)
    if y_bad is not None:
        log_x[bad] = _scores_direct(a[bad, None], y_bad)
    return log_x


def _level_scores_mle0(sq, scores, workspace=None):
    """Gamma fits (loc = 0) and normal scores of one level: sq (6, N, P) squared magnitudes,
    overwritten by the normal scores. Returns a, scale ((6, N) each) and the scores (sq)."""
    x = sq.sqrt_().clamp_(min=MAG_FLOOR)
    rows = x.view(-1, x.shape[-1])
    mean_x = rows.mean(dim=-1)
    x_lo, x_hi = rows.amin(dim=-1), rows.amax(dim=-1)
    direct = (scores == "direct" or rows.shape[-1] < 4 * INTERP_NODES
              or not bool(torch.isfinite(x_lo).all() & torch.isfinite(x_hi).all()))
    if direct:
        a, scale = gamma_mle0(mean_x, torch.log(rows).mean(dim=-1))
        rows.copy_(_normal_scores(rows, a, torch.zeros_like(a), scale))
    else:
        log_x = rows.log_()
        a, scale = gamma_mle0(mean_x, log_x.mean(dim=-1))
        log_scale = torch.log(scale)
        _normal_scores_tabulated(log_x, a, scale, torch.log(x_lo) - log_scale, torch.log(x_hi) - log_scale,
                                 workspace=workspace)
    return a.view(sq.shape[:2]), scale.view(sq.shape[:2]), sq



def _censored_statistics(sq, censor_k, level, workspace=None):
    """Per-row quantities of the censored fit of one level: sq (6, N, P) squared magnitudes
    (any float dtype). Returns log_x (rows, P) float64, the log of max(x, delta) (in the
    workspace; sq is overwritten when it is float64), the censored mask (x < delta) and the
    row statistics dict (n_obs, n_cens, mean_obs, mean_log_obs, delta, lo, hi)."""
    count = sq.shape[-1]
    rows = sq.reshape(-1, count)
    if rows.dtype != torch.float64:
        rows = _scratch(workspace, f"mags{level}", rows.shape, rows.new_empty((), dtype=torch.float64)).copy_(rows)
    delta = torch.sqrt(rows.mean(dim=-1)).mul_(censor_k)
    x = rows.sqrt_().clamp_(min=MAG_FLOOR)
    mask = _scratch(workspace, f"censored{level}", x.shape, x.new_empty((), dtype=torch.bool))
    torch.lt(x, delta[:, None], out=mask)
    n_cens = mask.sum(dim=-1).to(x.dtype)
    torch.maximum(x, delta[:, None], out=x)
    hi = x.amax(dim=-1)
    lo = x.amin(dim=-1)
    mean_x = x.mean(dim=-1)
    log_x = x.log_()
    mean_log = log_x.mean(dim=-1)
    n_obs = count - n_cens
    some = n_cens > 0
    # the observed part (rows without censored values keep the plain means, bit for bit)
    mean_obs = torch.where(some, (mean_x * count - n_cens * delta) / n_obs, mean_x)
    mean_log_obs = torch.where(some, (mean_log * count - n_cens * torch.log(delta)) / n_obs, mean_log)
    stats = {"n_obs": n_obs, "n_cens": n_cens, "mean_obs": mean_obs, "mean_log_obs": mean_log_obs,
             "delta": delta, "lo": lo, "hi": hi}
    return log_x, mask, stats


def gamma_fit_censored(stats):
    """a, scale per row from `_censored_statistics`: the plain loc = 0 MLE (`gamma_mle0`) on
    rows without censored magnitudes, `gamma_mle0_censored` on the others."""
    a, scale = gamma_mle0(stats["mean_obs"], stats["mean_log_obs"])
    some = stats["n_cens"] > 0
    if bool(some.any()):
        idx = some.nonzero(as_tuple=True)[0]
        ac, sc = gamma_mle0_censored(*(stats[k][idx] for k in ("n_obs", "mean_obs", "mean_log_obs", "n_cens", "delta")))
        a, scale = a.clone(), scale.clone()
        a[idx], scale[idx] = ac, sc
    return a, scale


def _censored_scores(log_x, mask, a, scale, stats, scores, workspace=None):
    """Normal scores of one level (rows, P), written over log_x: step 7 on the observed
    magnitudes, the fixed score Phi^-1(clip(P(a, delta / scale) / 2)) on the censored ones."""
    count = log_x.shape[-1]
    if scores == "direct" or count < 4 * INTERP_NODES:
        log_x.copy_(_scores_direct(a[:, None], torch.exp(log_x - torch.log(scale)[:, None])))
    else:
        log_scale = torch.log(scale)
        _normal_scores_tabulated(log_x, a, scale, torch.log(stats["lo"]) - log_scale,
                                 torch.log(stats["hi"]) - log_scale, workspace=workspace)
    p_delta = torch.special.gammainc(a, stats["delta"] / scale)
    z_cens = torch.special.ndtri(torch.clamp(0.5 * p_delta, EPS32, 1.0 - EPS32))
    return torch.where(mask, z_cens[:, None], log_x, out=log_x)

def _sigma_gram(z, n):
    """Sample covariances (ddof=1) of (z_R, z_L) per orientation and pair, with the singular
    guard: z (6, 2n, P), right views first (overwritten: centred). Returns srr, srl, slr,
    sll, each (n, 6)."""
    count = z.shape[-1]
    z.sub_(z.mean(dim=-1, keepdim=True))
    gram = torch.bmm(z, z.transpose(1, 2)).div_(count - 1)  # (6, 2n, 2n)
    i = torch.arange(n, device=z.device)
    srr, sll, srl = gram[:, i, i].T, gram[:, n + i, n + i].T, gram[:, i, n + i].T
    return _singular_guard(srr, srl, sll)


def _singular_guard(srr, srl, sll):
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
                       preprocess: str = "reference", scores: str = "tabulated",
                       standardise_dtype: str = "float64", censor_k: float = CENSOR_K) -> torch.Tensor:
    """Batched targets: left, right (N, H, W) grey tensors -> (N, 108) float64 (same device).

    scores (mle0 only): "tabulated" (default, see `_normal_scores_tabulated`, equal to
    "direct" to within 1e-9; used for subbands of at least 4 * INTERP_NODES coefficients,
    smaller ones are evaluated directly) or "direct" (gammainc + ndtri on every magnitude).
    standardise_dtype: precision of the standardisation and of the DT-CWT ("float64",
    default, or "float32" as the original reference pipeline); fits and scores run in float64.
    censor_k (mle0 only): delta = censor_k x RMS of the subband; 0 gives the uncensored fit
    on magnitudes floored at MAG_FLOOR (the definition of NSS version 1)."""
    _check_settings(marginal, preprocess, standardise_dtype)
    if scores not in ("tabulated", "direct"):
        raise ValueError(f"unknown scores {scores!r}: use tabulated or direct")
    if not 0.0 <= censor_k < 1.0:
        raise ValueError(f"censor_k must be in [0, 1), got {censor_k!r}")
    if left.dim() != 3 or right.dim() != 3:
        raise ValueError(f"expected batches (N, H, W), got {tuple(left.shape)} and {tuple(right.shape)}")
    check_pair_shapes(tuple(left.shape[1:]), tuple(right.shape[1:]))
    n = left.shape[0]
    views = torch.cat((right, left), dim=0)  # right views first: column 0 = right
    out = torch.empty((n, 6, N_SUBBANDS), dtype=torch.float64, device=views.device)
    ws = _workspace(views.device)
    levels = subband_squared_magnitudes(views, preprocess, ws, standardise_dtype)
    # sq: (6, 2n, P) per level in the orientation order COMPUTED_ORIENTATIONS; one Gamma fit
    # per (orientation, view) row
    if marginal == "mle0" and censor_k > 0:
        prepared = [_censored_statistics(sq, censor_k, level, ws) for level, sq in enumerate(levels)]
        sizes = [p[0].shape[0] for p in prepared]
        stats = {k: torch.cat([p[2][k] for p in prepared]) for k in prepared[0][2]}
        a_all, scale_all = gamma_fit_censored(stats)
    for level, sq in enumerate(levels):
        if marginal == "mle0" and censor_k > 0:
            log_x, mask, _ = prepared[level]
            part = slice(sum(sizes[:level]), sum(sizes[:level + 1]))
            row_stats = {k: v[part] for k, v in stats.items()}
            a, scale = a_all[part], scale_all[part]
            z = _censored_scores(log_x, mask, a, scale, row_stats, scores, ws).view(6, 2 * n, -1)
            a, scale = a.view(6, 2 * n), scale.view(6, 2 * n)
        elif marginal == "mle0":
            if sq.dtype != torch.float64:
                sq = _scratch(ws, f"mags{level}", sq.shape, sq.new_empty((), dtype=torch.float64)).copy_(sq)
            a, scale, z = _level_scores_mle0(sq, scores, ws)
        else:
            x = sq.to(torch.float64).sqrt_()
            a, loc, scale = _fit_scipy_free_loc(x.reshape(-1, x.shape[-1]))
            a, loc, scale = (v.reshape(x.shape[:2]) for v in (a, loc, scale))
            z = _normal_scores(x, a, loc, scale)
        srr, srl, slr, sll = _sigma_gram(z, n)
        cols = [6 * level + k for k in COMPUTED_ORIENTATIONS]
        for p, v in enumerate((a[:, :n].T, scale[:, :n].T, srr, srl, slr, sll)):
            out[:, p, cols] = v
    return out.reshape(n, N_FEATURES)


def _as_view(image, name):
    arr = np.asarray(image)
    if arr.ndim != 2:
        raise ValueError(f"{name} view must be a grey H x W image, got shape {arr.shape}")
    return arr


def nss_features_batch(lefts, rights, marginal: str = "mle0", preprocess: str = "reference",
                       device="cpu", standardise_dtype: str = "float64",
                       censor_k: float = CENSOR_K) -> np.ndarray:
    """Targets of several pairs of equal size at once: sequences of grey H x W images ->
    (N, 108) float64. standardise_dtype, censor_k: see `nss_features_torch`."""
    _check_settings(marginal, preprocess, standardise_dtype)
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
            out.append(nss_features_torch(lt, rt, marginal, preprocess, standardise_dtype=standardise_dtype,
                                          censor_k=censor_k).cpu().numpy())
    return np.concatenate(out)


def nss_features(left, right, marginal: str = "mle0", preprocess: str = "reference",
                 device="cpu", standardise_dtype: str = "float64", censor_k: float = CENSOR_K) -> np.ndarray:
    """The 108 targets (float64) of one pair of grey uint8 H x W views of equal size.
    standardise_dtype: "float64" (default) or "float32", the precision of the standardisation
    and of the DT-CWT; censor_k: see `nss_features_torch`."""
    _check_settings(marginal, preprocess, standardise_dtype)
    left, right = _as_view(left, "left"), _as_view(right, "right")
    check_pair_shapes(left.shape, right.shape)
    return nss_features_batch([left], [right], marginal, preprocess, device, standardise_dtype, censor_k)[0]
