"""Kingsbury's dual-tree complex wavelet transform (2-D, forward only), batched, in PyTorch.

The transform is the one of docs/method.md#the-dual-tree-complex-wavelet-transform: level 1 uses the `near_sym_b`
biorthogonal filters, levels >= 2 the `qshift_b` quarter-sample-shift filters, six
orientations per level in the slice order of the `dtcwt` Python package
(`highpasses[level][:, :, k]`), and the same handling of odd sizes:

- level 1: an odd number of rows (columns) is made even by repeating the last row (column);
- levels >= 2: a lowpass whose number of rows (columns) is not a multiple of 4 gets one
  repeated sample added at both ends.

Every filter runs over a symmetric extension with repeated end samples (half-sample
symmetry; end samples gathered with reflected indices, so images shorter than the filters
also work). Filtering is a sum of shifted slices times scalar taps, vectorised over the
batch and both image axes (the Python loops run over filter taps, never over pixels).
Works on CPU and CUDA, float32 and float64.

Layout (for speed on one CPU core): rows are filtered first, on contiguous polyphase copies
of the row-extended image, with the outputs split into even and odd columns; then columns,
on strided row views, with the outputs split into even and odd rows. The filter outputs are
therefore directly the four corners of the 2x2 quads that the package's q2c combines, so
the magnitudes |p -/+ q| are formed from contiguous real tensors without complex numbers or
strided element access. The q2c factor sqrt(1/2) is folded into the level-1 row filters
(and divided out of the returned lowpass). Level-1 taps of equal |k| (the near_sym_b
filters are symmetric) share one sum of the two samples. An optional `Workspace` keeps
the temporaries between calls.

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


def _reflect_index(n, lo, hi, device=None):
    """Indices 0..n-1 for positions -lo .. n+hi-1 under half-sample symmetric extension
    (repeated end samples), reflected as often as needed (so n may be smaller than lo, hi)."""
    pos = torch.arange(-lo, n + hi, device=device)
    period = 2 * n
    pos = torch.remainder(pos, period)
    return torch.where(pos >= n, period - 1 - pos, pos)


def _extension_index(n, lo, hi, repeat):
    """Source indices (numpy) of the samples -lo .. n' + hi - 1 of the symmetric extension of
    x' = x with `repeat` copies of each end sample added first (n' = n + 2 * repeat)."""
    inner = np.concatenate((np.zeros(repeat, np.int64), np.arange(n), np.full(repeat, n - 1, np.int64)))
    return inner[_reflect_index(len(inner), lo, hi).numpy()]


def _pick(x, dim, index):
    """x at the numpy indices `index` along `dim`: arithmetic runs become slices, the rest
    (a few end samples) index_select."""
    index = np.asarray(index)
    if len(index) == 0:
        return x.narrow(dim, 0, 0)
    if len(index) == 1 or np.all(np.diff(index) == index[1] - index[0]) and index[1] > index[0]:
        step = 1 if len(index) == 1 else int(index[1] - index[0])
        sl = [slice(None)] * x.dim()
        sl[dim] = slice(int(index[0]), int(index[-1]) + 1, step)
        return x[tuple(sl)]
    return torch.index_select(x, dim, torch.from_numpy(index).to(x.device))


class Workspace:
    """Named scratch buffers kept between calls (CPU): a transform of a 640x360 pair touches
    tens of MB of temporaries, and fresh memory costs a page fault per 4 KiB on first touch,
    as much as a few passes over it. `empty(key, shape, like)` returns a tensor backed by the
    buffer `key` (grown when too small); a key must not be reused while its previous tensor is
    still needed. Not thread-safe: use one per thread."""

    def __init__(self):
        self.buffers = {}

    def empty(self, key, shape, like):
        numel = math.prod(shape)
        buf = self.buffers.get(key)
        if buf is None or buf.numel() < numel or buf.dtype != like.dtype or buf.device != like.device:
            buf = torch.empty(numel, dtype=like.dtype, device=like.device)
            self.buffers[key] = buf
        return buf[:numel].view(shape)


def _empty(ws, key, shape, like):
    shape = tuple(int(v) for v in shape)
    if ws is None:
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    return ws.empty(key, shape, like)


def _extended_phases(x, dim, lo, hi, repeat, phases, copy, ws=None, key=""):
    """The `phases` polyphase components e[r::phases] (r = 0..phases-1) of the symmetric
    extension e (see `_extension_index`) of x along `dim`. copy=True: contiguous tensors
    built straight from x (for the innermost dim); copy=False: strided views of one
    extended copy (for an outer dim, where such views are still contiguous rows)."""
    n = x.shape[dim]
    index = _extension_index(n, lo, hi, repeat)
    start = lo + repeat  # position of x[0] in e
    if not copy:
        shape = list(x.shape)
        shape[dim] = len(index)
        ext = _empty(ws, key + "ext", shape, x)
        torch.cat((_pick(x, dim, index[:start]), x, _pick(x, dim, index[start + n:])), dim=dim, out=ext)
        sl = [slice(None)] * x.dim()
        out = []
        for r in range(phases):
            sl[dim] = slice(r, None, phases)
            out.append(ext[tuple(sl)])
        return out
    out = []
    for r in range(phases):
        pos = np.arange(r, len(index), phases)
        left, mid, right = pos[pos < start], pos[(pos >= start) & (pos < start + n)], pos[pos >= start + n]
        parts = [_pick(x, dim, index[i]) for i in (left, mid, right)]
        shape = list(x.shape)
        shape[dim] = len(pos)
        out.append(torch.cat([p for p in parts if p.shape[dim]], dim=dim, out=_empty(ws, key + f"ph{r}", shape, x)))
    return out


def _accumulate(dst, terms):
    """dst = sum_j c_j * v_j for terms [(v_j, c_j)] (the first term written with mul)."""
    (v, c), rest = terms[0], terms[1:]
    torch.mul(v, c, out=dst)
    for v, c in rest:
        dst.add_(v, alpha=c)


def _sym_filter(x, filters, dim, copy, ws=None, key="", out=None):
    """Level-1 filtering along `dim` (even length n) with odd-length symmetric filters,
    y[i] = sum_k h[M + k] xe(i + k) over the symmetric extension xe (the package's `colfilter`),
    output split into its even and odd samples: a tensor (len(filters), 2, *x.shape) with
    length n / 2 along `dim` (+2), out[f, p] = y_f[p::2] (written into `out` if given).
    Taps of equal |k| share one sum xe(i + k) + xe(i - k)."""
    n = x.shape[dim]
    pad = max(len(h) for h in filters) // 2
    # phase arrays e[0::2], e[1::2] of e = xe(-pad .. n + pad - 1)
    ph = _extended_phases(x, dim, pad, pad, 0, 2, copy, ws, key)
    half = n // 2
    shape = list(x.shape)
    shape[dim] = half
    if out is None:
        out = _empty(ws, key + "out", [len(filters), 2] + shape, x)
    ks = sorted({abs(k) for h in filters for k in range(-(len(h) // 2), len(h) // 2 + 1)
                 if h[len(h) // 2 + k] != 0.0})
    tmp = _empty(ws, key + "tmp", shape, x)
    for parity in (0, 1):
        def piece(k):
            s = parity + pad + k  # index of xe(2m + parity + k) in e, minus 2m
            return ph[s % 2].narrow(dim, s // 2, half)

        started = [False] * len(filters)
        for k in ks:
            v = piece(0) if k == 0 else torch.add(piece(k), piece(-k), out=tmp)
            for f, h in enumerate(filters):
                m = len(h) // 2
                if k <= m and h[m + k] != 0.0:
                    if not started[f]:
                        torch.mul(v, h[m + k], out=out[f, parity])
                        started[f] = True
                    else:
                        out[f, parity].add_(v, alpha=h[m + k])
    return out


def _qshift_filter(x, pairs, dim, copy, ws=None, key="", out=None):
    """Q-shift filtering along `dim` with decimation by 2 (the package's `coldfilt(X, ha, hb)`
    for each (ha, hb) in `pairs`), output split into even and odd samples: a tensor
    (len(pairs), 2, *x.shape) with length n' / 4 along `dim` (+2), out[f, p] = y_f[p::2]
    (written into `out` if given), where n' is the length after the package's one-sample
    extension at both ends when n is not a multiple of 4.

    With e = x' extended by m samples at both ends (m = filter length), the two trees are
    ya[i] = sum_j ha[m-1-j] e[4i + 2j + 2] and yb[i] = sum_j hb[m-1-j] e[4i + 2j + 3],
    interleaved (ya on even outputs if sum(ha*hb) > 0, else on odd outputs), computed on the
    four polyphase components of e.
    """
    n = x.shape[dim]
    repeat = 1 if n % 4 else 0
    q = (n + 2 * repeat) // 4
    m = len(pairs[0][0])
    ph = _extended_phases(x, dim, m, m, repeat, 4, copy, ws, key)
    shape = list(x.shape)
    shape[dim] = q
    if out is None:
        out = _empty(ws, key + "out", [len(pairs), 2] + shape, x)
    for f, (ha, hb) in enumerate(pairs):
        ra, rb = ha[::-1], hb[::-1]
        ta, tb = [], []
        for j in range(m):
            l = j // 2
            if j % 2 == 0:  # even j -> phases 2 (tree a) and 3 (tree b) at i + l
                ta.append((ph[2].narrow(dim, l, q), ra[j]))
                tb.append((ph[3].narrow(dim, l, q), rb[j]))
            else:  # odd j -> phases 0 and 1 at i + l + 1
                ta.append((ph[0].narrow(dim, l + 1, q), ra[j]))
                tb.append((ph[1].narrow(dim, l + 1, q), rb[j]))
        first, second = (ta, tb) if sum(a * b for a, b in zip(ha, hb)) > 0 else (tb, ta)
        _accumulate(out[f, 0], first)
        _accumulate(out[f, 1], second)
    return out


_QUAD_SCALE = math.sqrt(0.5)


def _levels(images: torch.Tensor, levels: int, ws=None):
    """Run the analysis filter bank. Yields ("high", q) per level, finest first, with q a
    tensor (2, 2, 2, 2, N, h, w): q[fc, pr, fr, pc] is the corner (row parity pr, column
    parity pc) of the 2x2 quads of the image filtered with the column filter fc and the row
    filter fr (0 lowpass, 1 highpass); the quad images are horizontal (fc, fr) = (1, 0),
    vertical (0, 1), diagonal (1, 1). Every value carries the q2c factor sqrt(1/2) (folded
    into the level-1 row filters). Then yields ("low", lowpass), also times sqrt(1/2).

    Rows are filtered first (innermost dimension, on contiguous polyphase copies), then
    columns (on strided row views; at level 1 one row-filter output at a time, so that the
    working set stays in cache): the filter outputs come out directly as the quad corners, without
    strided element access. ws: optional Workspace for the temporaries (then q is only
    valid until the generator resumes)."""
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
    k = _QUAD_SCALE
    n = x.shape[0]
    h0o, h1o = NEAR_SYM_B_H0O, NEAR_SYM_B_H1O
    pairs = ((QSHIFT_B_H0B, QSHIFT_B_H0A), (QSHIFT_B_H1B, QSHIFT_B_H1A))
    for level in range(1, levels + 1):
        if level == 1:
            rows = _sym_filter(x, tuple(tuple(v * k for v in h) for h in (h0o, h1o)), 2, True, ws, "1r")
        else:
            rows = _qshift_filter(x, pairs, 2, True, ws, f"{level}r")
        hh, ww = rows.shape[3], rows.shape[4]
        if level == 1:
            h2 = hh // 2
        else:
            h2 = (hh + 2 * (1 if hh % 4 else 0)) // 4
        q = _empty(ws, f"{level}q", (2, 2, 2, 2, n, h2, ww), x)
        if level == 1:  # one row-filter output at a time (cache); later levels in one batch
            for fr in range(2):
                for pc in range(2):
                    _sym_filter(rows[fr, pc], (h0o, h1o), 1, False, ws, "1c", out=q[:, :, fr, pc])
        else:
            _qshift_filter(rows.view((4 * n,) + rows.shape[3:]), pairs, 1, False, ws, f"{level}c",
                           out=q.view((2, 2, 4 * n, h2, ww)))
        yield "high", q
        x = _interleave(q[0, :, 0], _empty(ws, f"{level}low", (n, h2, 2, ww, 2), x))
    yield "low", x


def _interleave(corners, out):
    """(2, 2, N, h, w) corners [row parity, column parity] -> (N, 2h, 2w) image, written
    into out (N, h, 2, w, 2)."""
    _, _, n, h, w = corners.shape
    out.copy_(corners.permute(2, 3, 0, 4, 1))
    return out.view(n, 2 * h, 2 * w)


# Subbands in the order computed here, and the package's orientation k of each: the
# horizontal (0, 5), diagonal (1, 4) and vertical (2, 3) quad images give p - q, then p + q.
COMPUTED_ORIENTATIONS = (0, 1, 5, 4, 2, 3)


def _subband_parts(q):
    """[(real, imag)] of the six subbands of one level (order COMPUTED_ORIENTATIONS), each
    part (2, N, h, w) for the horizontal and diagonal pairs and (1, N, h, w) for the vertical
    one, without q2c's complex numbers: p - q = (a - d) + j (b + c), p + q = (a + d) + j (b - c)."""
    hd = q[1, :, :, :]  # (pr, fr, pc, N, h, w), fr = 0 horizontal, 1 diagonal
    v = q[0, :, 1:, :]  # vertical only
    out = []
    for src in (hd, v):
        a, b, c, d = src[0, :, 0], src[0, :, 1], src[1, :, 0], src[1, :, 1]
        out.append(((a, d, torch.sub), (b, c, torch.add)))
        out.append(((a, d, torch.add), (b, c, torch.sub)))
    # order: hd minus, hd plus, v minus, v plus -> k = (0, 1), (5, 4), 2, 3
    return out


def _squared_magnitudes(q, out=None, ws=None):
    """(6, N, h, w) squared magnitudes of one level, order COMPUTED_ORIENTATIONS."""
    _, _, _, _, n, h, w = q.shape
    sq = torch.empty((6, n, h, w), dtype=q.dtype, device=q.device) if out is None else out
    tmp = None
    slots = (slice(0, 2), slice(2, 4), slice(4, 5), slice(5, 6))
    for slot, ((ra, rb, rop), (ia, ib, iop)) in zip(slots, _subband_parts(q)):
        dst = sq[slot]
        rop(ra, rb, out=dst)
        dst.mul_(dst)
        if tmp is None or tmp.shape != dst.shape:
            tmp = _empty(ws, f"sqtmp{dst.shape[0]}", dst.shape, dst)
        iop(ia, ib, out=tmp)
        dst.addcmul_(tmp, tmp)
    return sq


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
            return (value / _QUAD_SCALE if levels else value), highpasses
        bands = []
        for (ra, rb, rop), (ia, ib, iop) in _subband_parts(value):
            bands.extend(torch.complex(rop(ra, rb), iop(ia, ib)).unbind(0))
        order = [bands[COMPUTED_ORIENTATIONS.index(k)] for k in range(6)]
        highpasses.append(torch.stack(order, dim=-1))
    raise AssertionError("unreachable")


def dtcwt_squared_magnitudes_torch(images: torch.Tensor, levels: int = 3, workspace=None):
    """|highpass coefficients|^2 of a batch (N, H, W): a list of `levels` real tensors
    (6, N, H_l, W_l) with the orientations in the order COMPUTED_ORIENTATIONS (package
    orientation COMPUTED_ORIENTATIONS[j] at [j]), computed from the real and imaginary parts
    without forming complex numbers. workspace: optional `Workspace` for the temporaries and
    the results (then valid until its next use)."""
    out = []
    for kind, value in _levels(_as_float(images), levels, workspace):
        if kind == "low":
            return out
        shape = (6,) + tuple(value.shape[-3:])
        out.append(_squared_magnitudes(value, _empty(workspace, f"sq{len(out)}", shape, value)
                                       if workspace is not None else None, workspace))
    raise AssertionError("unreachable")


def dtcwt_magnitudes_torch(images: torch.Tensor, levels: int = 3):
    """|highpass coefficients| of a batch (N, H, W): a list of `levels` real tensors
    (N, 6, H_l, W_l), orientation-major (the package's orientation k at [:, k])."""
    perm = [COMPUTED_ORIENTATIONS.index(k) for k in range(6)]
    return [sq[perm].sqrt_().transpose(0, 1).contiguous() for sq in dtcwt_squared_magnitudes_torch(images, levels)]


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
