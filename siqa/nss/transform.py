"""Kingsbury's dual-tree complex wavelet transform (2-D, forward only), batched, in PyTorch.

The transform is the one of SPEC section 1 step 3: level 1 uses the `near_sym_b`
biorthogonal filters, levels >= 2 the `qshift_b` quarter-sample-shift filters, six
orientations per level in the slice order of the `dtcwt` Python package
(`highpasses[level][:, :, k]`), and the same handling of odd sizes:

- level 1: an odd number of rows (columns) is made even by repeating the last row (column);
- levels >= 2: a lowpass whose number of rows (columns) is not a multiple of 4 gets one
  repeated sample added at both ends.

Every filter runs over a symmetric extension with repeated end samples (half-sample
symmetry), implemented by gathering with reflected indices (so images shorter than the
filters also work). Filtering is a sum of shifted slices times scalar taps, vectorised over
the batch and both image axes (there is no Python loop over pixels; the loops below run over
filter taps). Works on CPU and CUDA, float32 and float64.

Filter coefficients: N. G. Kingsbury, "Complex wavelets for shift invariant analysis and
filtering of signals", Applied and Computational Harmonic Analysis 10(3), 2001, and his
DT-CWT MATLAB toolbox (files near_sym_b.mat and qshift_b.mat, 2000), the same published
numbers the `dtcwt` package distributes.
"""
import math

import numpy as np
import torch

# near_sym_b: 13-tap lowpass and 19-tap highpass analysis filters (level 1).
NEAR_SYM_B_H0O = (
    -0.0017578125, 0.0, 0.022265625, -0.046875, -0.0482421875, 0.296875, 0.55546875,
    0.296875, -0.0482421875, -0.046875, 0.022265625, 0.0, -0.0017578125,
)
NEAR_SYM_B_H1O = (
    -7.062639508928571e-05, 0.0, 0.0013419015066964285, -0.0018833705357142855,
    -0.007156808035714285, 0.023856026785714284, 0.05564313616071428, -0.05168805803571428,
    -0.29975760323660716, 0.5594308035714286, -0.29975760323660716, -0.05168805803571428,
    0.05564313616071428, 0.023856026785714284, -0.007156808035714285, -0.0018833705357142855,
    0.0013419015066964285, 0.0, -7.062639508928571e-05,
)
# qshift_b: 14-tap tree-a lowpass analysis filter (levels >= 2). The other three analysis
# filters follow from it: h0b = reverse(h0a); h1a[n] = (-1)^n h0a[13 - n]; h1b = reverse(h1a).
QSHIFT_B_H0A = (
    0.003253142763653182, -0.00388321199915849, 0.03466034684485349, -0.03887280126882779,
    -0.11720388769911527, 0.27529538466888204, 0.7561456438925225, 0.5688104207121227,
    0.011866092033797, -0.1067118046866654, 0.023825384794920298, 0.01702522388155399,
    -0.005439475937274115, -0.004556895628475491,
)
QSHIFT_B_H0B = tuple(reversed(QSHIFT_B_H0A))
QSHIFT_B_H1A = tuple((-1) ** n * QSHIFT_B_H0A[len(QSHIFT_B_H0A) - 1 - n] for n in range(len(QSHIFT_B_H0A)))
QSHIFT_B_H1B = tuple(reversed(QSHIFT_B_H1A))


def _reflect_index(n, lo, hi, device):
    """Indices 0..n-1 for positions -lo .. n+hi-1 under half-sample symmetric extension
    (repeated end samples), reflected as often as needed (so n may be smaller than lo, hi)."""
    pos = torch.arange(-lo, n + hi, device=device)
    period = 2 * n
    pos = torch.remainder(pos, period)
    return torch.where(pos >= n, period - 1 - pos, pos)


def _extend(x, dim, lo, hi):
    n = x.shape[dim]
    return torch.index_select(x, dim, _reflect_index(n, lo, hi, x.device))


def _correlate(x, taps, dim, start, length, step=1):
    """sum_j taps[j] * x[start + step*j : ... + length] along `dim` (zero taps skipped)."""
    out = None
    for j, h in enumerate(taps):
        if h == 0.0:
            continue
        piece = x.narrow(dim, start + step * j, length)
        if out is None:
            out = piece * h
        else:
            out.add_(piece, alpha=h)
    return out


def _colfilter(x, filters, dim):
    """Level-1 filtering along `dim` with odd-length filters, output the same length as the
    input (the package's `colfilter`). One extension is shared by all `filters`."""
    n = x.shape[dim]
    pad = max(len(h) for h in filters) // 2
    ext = _extend(x, dim, pad, pad)
    outs = []
    for h in filters:
        m2 = len(h) // 2
        # y[i] = sum_k h[k] e[i + m - 1 - k] (a convolution) = sum_j h[m-1-j] e[i + j]
        outs.append(_correlate(ext, h[::-1], dim, pad - m2, n))
    return outs


def _coldfilt(x, pairs, dim):
    """Q-shift filtering along `dim` (>= 0) with decimation by 2 (the package's `coldfilt(X, ha, hb)`
    for each (ha, hb) in `pairs`); the length along `dim` must be a multiple of 4.

    With e = x extended by m samples at both ends (m = filter length), the two trees are
    ya[i] = sum_j ha[m-1-j] e[4i + 2j + 2] and yb[i] = sum_j hb[m-1-j] e[4i + 2j + 3],
    interleaved (ya on even outputs if sum(ha*hb) > 0, else on odd outputs). The four
    polyphase components of e are taken once, so every slice below is contiguous in `dim`.
    """
    n = x.shape[dim]
    m = len(pairs[0][0])
    ext = _extend(x, dim, m, m)
    q = n // 4
    phase = []
    for k in range(4):
        index = [slice(None)] * ext.dim()
        index[dim] = slice(k, None, 4)
        phase.append(ext[tuple(index)].contiguous())
    outs = []
    for ha, hb in pairs:
        ra, rb = ha[::-1], hb[::-1]
        # ya: j even (2l) -> phase 2 at i + l; j odd (2l+1) -> phase 0 at i + l + 1
        ya = _correlate(phase[2], ra[0::2], dim, 0, q)
        ya = ya.add_(_correlate(phase[0], ra[1::2], dim, 1, q))
        # yb: j even -> phase 3 at i + l; j odd -> phase 1 at i + l + 1
        yb = _correlate(phase[3], rb[0::2], dim, 0, q)
        yb = yb.add_(_correlate(phase[1], rb[1::2], dim, 1, q))
        first, second = (ya, yb) if sum(a * b for a, b in zip(ha, hb)) > 0 else (yb, ya)
        outs.append(torch.stack((first, second), dim=dim + 1).flatten(dim, dim + 1))
    return outs


def _quad_corners(y):
    """The four corners a b / c d of every 2x2 quad of (N, 2h, 2w) real images (views)."""
    return y[:, 0::2, 0::2], y[:, 0::2, 1::2], y[:, 1::2, 0::2], y[:, 1::2, 1::2]


def _q2c(y):
    """(N, 2h, 2w) real quads -> two complex (N, h, w) subbands, as the package's q2c:
    p = (a + jb)/sqrt2, q = (d - jc)/sqrt2; returns (p - q, p + q)."""
    k = math.sqrt(0.5)
    a, b, c, d = (v * k for v in _quad_corners(y))
    return torch.complex(a - d, b + c), torch.complex(a + d, b - c)


def _quad_magnitudes(y, out_minus, out_plus):
    """|p - q| and |p + q| of `_q2c` written into the two given (N, h, w) tensors, without
    forming complex numbers (the common factor sqrt(1/2) is left to the caller)."""
    a, b, c, d = _quad_corners(y)
    torch.hypot(a - d, b + c, out=out_minus)
    torch.hypot(a + d, b - c, out=out_plus)


# orientation k of the package -> (quad image, which of the pair): 0,5 horizontal pair
# (column highpass, row lowpass); 1,4 diagonal pair; 2,3 vertical pair.
_HORIZONTAL, _DIAGONAL, _VERTICAL = 0, 1, 2
ORIENTATION_SOURCE = ((_HORIZONTAL, 0), (_DIAGONAL, 0), (_VERTICAL, 0),
                      (_VERTICAL, 1), (_DIAGONAL, 1), (_HORIZONTAL, 1))


def _levels(images: torch.Tensor, levels: int):
    """Run the analysis filter bank; yields ("high", (horizontal, diagonal, vertical) quad
    images) per level, finest first, then ("low", lowpass)."""
    if images.dim() != 3:
        raise ValueError(f"expected a batch of images (N, H, W), got shape {tuple(images.shape)}")
    if levels < 0:
        raise ValueError(f"levels must be >= 0, got {levels}")
    x = images
    if x.shape[1] % 2:
        x = torch.cat((x, x[:, -1:, :]), dim=1)
    if x.shape[2] % 2:
        x = torch.cat((x, x[:, :, -1:]), dim=2)
    if levels == 0:
        yield "low", x
        return
    h0o, h1o = NEAR_SYM_B_H0O, NEAR_SYM_B_H1O
    lo, hi = _colfilter(x, (h0o, h1o), dim=1)
    del x
    lolo, vert = _colfilter(lo, (h0o, h1o), dim=2)
    del lo
    horiz, diag = _colfilter(hi, (h0o, h1o), dim=2)
    del hi
    yield "high", (horiz, diag, vert)
    del horiz, diag, vert

    low = (QSHIFT_B_H0B, QSHIFT_B_H0A)
    high = (QSHIFT_B_H1B, QSHIFT_B_H1A)
    for _ in range(1, levels):
        if lolo.shape[1] % 4:
            lolo = torch.cat((lolo[:, :1, :], lolo, lolo[:, -1:, :]), dim=1)
        if lolo.shape[2] % 4:
            lolo = torch.cat((lolo[:, :, :1], lolo, lolo[:, :, -1:]), dim=2)
        lo, hi = _coldfilt(lolo, (low, high), dim=1)
        lolo, vert = _coldfilt(lo, (low, high), dim=2)
        del lo
        horiz, diag = _coldfilt(hi, (low, high), dim=2)
        del hi
        yield "high", (horiz, diag, vert)
        del horiz, diag, vert
    yield "low", lolo


def _as_float(images):
    return images if images.is_floating_point() else images.to(torch.float64)


def dtcwt_forward_torch(images: torch.Tensor, levels: int = 3):
    """Forward DT-CWT of a batch (N, H, W) of real images (float32 or float64; anything else
    is cast to float64).

    Returns (lowpass, highpasses): lowpass (N, H_L, W_L) real, highpasses a list of `levels`
    complex tensors (N, H_l, W_l, 6), finest first. Matches `dtcwt.Transform2d('near_sym_b',
    'qshift_b').forward(image, levels)` image by image.
    """
    highpasses = []
    for kind, value in _levels(_as_float(images), levels):
        if kind == "low":
            return value, highpasses
        pairs = [_q2c(quads) for quads in value]
        highpasses.append(torch.stack([pairs[src][which] for src, which in ORIENTATION_SOURCE], dim=-1))
    raise AssertionError("unreachable")


def dtcwt_magnitudes_torch(images: torch.Tensor, levels: int = 3):
    """|highpass coefficients| of a batch (N, H, W): a list of `levels` real tensors
    (N, 6, H_l, W_l), orientation-major (the package's orientation k at [:, k])."""
    out = []
    k = math.sqrt(0.5)
    for kind, value in _levels(_as_float(images), levels):
        if kind == "low":
            return out
        n, h2, w2 = value[0].shape
        mags = torch.empty((n, 6, h2 // 2, w2 // 2), dtype=value[0].dtype, device=value[0].device)
        for src in (_HORIZONTAL, _DIAGONAL, _VERTICAL):
            minus, plus = (next(i for i, (s_, w_) in enumerate(ORIENTATION_SOURCE) if s_ == src and w_ == w)
                           for w in (0, 1))
            _quad_magnitudes(value[src], mags[:, minus], mags[:, plus])
        out.append(mags.mul_(k))
    raise AssertionError("unreachable")
def dtcwt_forward(image, levels: int = 3):
    """DT-CWT of one H x W image: numpy in, numpy out.

    Returns (lowpass, highpasses) like the `dtcwt` package's Pyramid: lowpass a real array,
    highpasses a list of complex arrays (H_l, W_l, 6), finest level first. float32 input is
    transformed in float32 (complex64 output), anything else in float64 (complex128).
    """
    arr = np.asarray(image)
    if arr.ndim != 2:
        raise ValueError(f"expected one 2-D image, got shape {arr.shape}")
    dtype = np.float32 if arr.dtype == np.float32 else np.float64
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=dtype))[None]
    lowpass, highpasses = dtcwt_forward_torch(t, levels)
    return lowpass[0].numpy(), [h[0].numpy() for h in highpasses]
