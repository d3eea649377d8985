"""32x32 locally normalised patches of the two views (docs/method.md#patches).

For one grey view (PIL `convert('L')`, uint8) scaled to [0, 1]:
- top-left corners `range(0, H - 32, 24)` x `range(0, W - 32, 24)` (exclusive bound, as
  in the original code: a 640x360 view gives 14 x 26 = 364 patches), in row-major order;
- for each patch on its own, a 7x7 box mean and standard deviation with a symmetric
  boundary (scipy.ndimage 'reflect': d c b a | a b c d | d c b a), computed as
  mean = E[x] and std = sqrt(max(E[x^2] - E[x]^2, 0)) over the window (the max guards
  the tiny negative values rounding can give on flat areas);
- patch = (p - mean) / (std + 1).

Everything is vectorised with torch: all patches of a view are cut with `unfold`, padded
(flipped slices) and filtered with one `avg_pool2d` over the stacked x and x^2. The
arithmetic is in float64 when float64 is asked for and in float32 otherwise (it agrees with
a float64 computation to about 1e-6; tests/test_data_patches.py checks both).
`extract_patch_set` fills preallocated contiguous tensors for a whole list of pairs (sizes
come from the image headers first, so nothing is concatenated and the peak memory is the
result plus one image).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from siqa.errors import UserError
from siqa.imageio import grey_pil, header_size, read_views, view_rgb
from siqa.progress import bar as progress_bar

PATCH = 32
STRIDE = 24
WINDOW = 7
C = 1.0

_PAD = WINDOW // 2


def patch_grid(height: int, width: int):
    """Number of patch rows and columns for a view of this size."""
    return len(range(0, height - PATCH, STRIDE)), len(range(0, width - PATCH, STRIDE))


def _symmetric_pad(x: torch.Tensor, k: int) -> torch.Tensor:
    """Pad the last two dims by k with scipy 'reflect' (= numpy 'symmetric') boundary."""
    x = torch.cat([x[..., :k, :].flip(-2), x, x[..., -k:, :].flip(-2)], dim=-2)
    return torch.cat([x[..., :k].flip(-1), x, x[..., -k:].flip(-1)], dim=-1)


def normalise_patches(patches: torch.Tensor, c=C) -> torch.Tensor:
    """(N, 32, 32) patches in [0, 1] -> (p - mean) / (std + c), per patch (see module doc)."""
    # shifting each patch by its own mean changes neither p - mean nor the variance, and
    # keeps E[x^2] - E[x]^2 away from cancellation in float32
    centred = patches - patches.mean(dim=(-2, -1), keepdim=True)
    padded = _symmetric_pad(centred, _PAD)  # (N, 38, 38)
    moments = F.avg_pool2d(torch.stack([padded, padded * padded], dim=1), WINDOW, stride=1)
    mean, mean_sq = moments[:, 0], moments[:, 1]
    std = (mean_sq - mean * mean).clamp_min(0).sqrt()
    return (centred - mean) / (std + c)


def extract_patches(grey, dtype=torch.float32, source=None, c=C) -> torch.Tensor:
    """(P, 32, 32) normalised patches of one grey uint8 H x W view."""
    grey = np.asarray(grey)
    if grey.ndim != 2:
        raise UserError(f"expected a grey H x W image{_of(source)}, got shape {grey.shape}")
    h, w = grey.shape
    ny, nx = patch_grid(h, w)
    if ny == 0 or nx == 0:
        raise UserError(
            f"image{_of(source)} is {w}x{h} (width x height): too small for one 32x32 patch "
            f"(needs at least {PATCH + 1}x{PATCH + 1})"
        )
    work = torch.float64 if dtype == torch.float64 else torch.float32
    x = torch.from_numpy(np.array(grey, dtype=np.uint8)).to(work) / 255.0
    cut = x.unfold(0, PATCH, STRIDE).unfold(1, PATCH, STRIDE)[:ny, :nx]
    return normalise_patches(cut.reshape(-1, PATCH, PATCH), c).to(dtype)


def _of(source):
    return f" {source}" if source is not None else ""


@dataclass
class PatchSet:
    """All patches of a list of pairs: row i of `left`/`right` comes from pair `pair_index[i]`."""

    left: torch.Tensor  # (N, 1, 32, 32)
    right: torch.Tensor  # (N, 1, 32, 32)
    pair_index: torch.Tensor  # (N,) int64, row of the pair in the list given

    def __len__(self):
        return int(self.pair_index.shape[0])

    def counts(self, n_pairs=None) -> torch.Tensor:
        """Number of patches of each pair."""
        return torch.bincount(self.pair_index, minlength=n_pairs or 0)


def extract_patch_set(pairs, progress=True, dtype=torch.float32, sizes=None, c=C) -> PatchSet:
    """Patches of both views of every pair, in one contiguous tensor per view.

    `sizes` (each pair's view (width, height), as `validate_pairs` returns) saves reading
    the headers again.
    """
    pairs = list(pairs)
    if sizes is None:
        sizes = []
        for p in pairs:
            w, h = header_size(p.left)
            sizes.append((w // 2, h) if p.right is None else (w, h))
    counts = []
    for p, (w, h) in zip(pairs, sizes):
        ny, nx = patch_grid(h, w)
        if ny == 0 or nx == 0:
            raise UserError(
                f"image {p.left} has a {w}x{h} view: too small for one 32x32 patch "
                f"(needs at least {PATCH + 1}x{PATCH + 1})"
            )
        counts.append(ny * nx)
    total = int(sum(counts))
    left = torch.empty((total, 1, PATCH, PATCH), dtype=dtype)
    right = torch.empty((total, 1, PATCH, PATCH), dtype=dtype)
    pair_index = torch.repeat_interleave(
        torch.arange(len(pairs), dtype=torch.int64), torch.tensor(counts, dtype=torch.int64)
    )
    start = 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the per-image ops are small: one thread is faster (measured)
    try:
        for p, n in zip(progress_bar(pairs, desc="patches", unit="pair", progress=progress), counts):
            lv, rv = read_views(p.left, p.right, grey=grey_pil)
            a = extract_patches(lv, dtype, source=p.left, c=c)
            b = extract_patches(rv, dtype, source=p.right or p.left, c=c)
            if a.shape[0] != n or b.shape[0] != n:
                raise UserError(f"image {p.left}: decoded size differs from its header")
            left[start : start + n, 0] = a
            right[start : start + n, 0] = b
            start += n
    finally:
        torch.set_num_threads(threads)
    return PatchSet(left=left, right=right, pair_index=pair_index)


# ---------------------------------------------------------------- the other networks' patches
def corners(length: int, patch: int, stride: int, grid: str) -> list:
    """Top-left corners along one axis (siqa/models/spec.py: exclusive, inclusive, cover)."""
    if grid == "exclusive":
        return list(range(0, length - patch, stride))
    if grid == "inclusive":
        return list(range(0, length - patch + 1, stride))
    if length < patch:
        return []
    n = -(-(length - patch) // patch) + 1  # the fewest crops of `patch` that cover `length`
    return [0] if n == 1 else [round(i * (length - patch) / (n - 1)) for i in range(n)]


def spec_corners(height: int, width: int, spec):
    """(row corners, column corners) of the patches `spec` cuts from a height x width view."""
    return (corners(height, spec.patch, spec.stride, spec.grid),
            corners(width, spec.patch, spec.stride, spec.grid))


def _chw(view, channels) -> torch.Tensor:
    """A uint8 view (H x W, or H x W x C) as a uint8 (C, H, W) tensor."""
    h, w = view.shape[:2]
    return torch.from_numpy(np.array(view, dtype=np.uint8)).reshape(h, w, channels).permute(2, 0, 1)


def view_patches(view, spec, dtype=torch.float32, source=None) -> torch.Tensor:
    """(P, C, S, S) patches of one uint8 view (H x W grey, or H x W x 3 RGB for
    `spec.channels` 3) on the spec's corners, row-major, intensities / 255: what
    `view_patch_set` cuts for training and siqa.inference.api for scoring."""
    size, c = spec.patch, spec.channels
    h, w = view.shape[:2]
    ys, xs = spec_corners(h, w, spec)
    if not ys or not xs:
        raise UserError(f"image{_of(source)} has a {w}x{h} view: too small for one "
                        f"{size}x{size} patch of this network")
    x = _chw(view, c).to(torch.float32) / 255.0
    return torch.stack([x[:, y : y + size, x0 : x0 + size] for y in ys for x0 in xs]).to(dtype)


def _pair_views(p, spec):
    """The two uint8 views (H x W grey, or H x W x 3) of pair `p` as `spec` reads them;
    UserError naming the file where the views differ in size or are too small for one patch."""
    if spec.channels == 1:
        lv, rv = read_views(p.left, p.right, grey=grey_pil)
    elif p.right is None:
        lv, rv = view_rgb(p.left, 0), view_rgb(p.left, 1)
    else:
        lv, rv = view_rgb(p.left), view_rgb(p.right)
        if lv.shape != rv.shape:
            raise UserError(f"left/right views differ in size: {p.left}, {p.right}")
    h, w = lv.shape[:2]
    ys, xs = spec_corners(h, w, spec)
    if not ys or not xs:
        raise UserError(f"image {p.left} has a {w}x{h} view: too small for one "
                        f"{spec.patch}x{spec.patch} patch of this network")
    return lv, rv


def view_patch_set(pairs, spec, progress=True, dtype=torch.float32) -> PatchSet:
    """The patches a network's `spec` asks for when it is not the paper's local
    normalisation: `spec.channels` (grey: PIL 'L'; RGB: PIL 'RGB', three equal channels for a
    grey file) squares of `spec.patch` on the `spec.grid` corners, intensities / 255
    (standardisation, where asked, is the network's own: siqa/models/stereoqanet.py)."""
    lefts, rights, counts = [], [], []
    for p in progress_bar(pairs, desc="patches", unit="pair", progress=progress):
        lv, rv = _pair_views(p, spec)
        lefts.append(view_patches(lv, spec, dtype))
        rights.append(view_patches(rv, spec, dtype))
        counts.append(lefts[-1].shape[0])
    pair_index = torch.repeat_interleave(torch.arange(len(pairs), dtype=torch.int64),
                                         torch.tensor(counts, dtype=torch.int64))
    return PatchSet(left=torch.cat(lefts).contiguous(), right=torch.cat(rights).contiguous(),
                    pair_index=pair_index)


def pixel_statistics(patches: torch.Tensor):
    """Per-pixel mean and population std over N patches (N, C, P, P), in float64 (the
    StereoQA-Net standardisation, computed on the training split)."""
    x = patches.double()
    mean = x.mean(dim=0)
    return mean.float(), (x - mean).pow(2).mean(dim=0).sqrt().float()


def whole_views(pairs, spec, progress=True) -> list:
    """(left, right) uint8 tensors (C, H, W) of each pair's whole views, read as
    `view_patch_set` reads them: where a network's spec trains on random crops
    (`train_crop="random"`), drawn anew every epoch by `random_crops`."""
    out = []
    for p in progress_bar(pairs, desc="views", unit="pair", progress=progress):
        out.append(tuple(_chw(v, spec.channels).contiguous() for v in _pair_views(p, spec)))
    return out


def random_crops(views, size, generator, dtype=torch.float32):
    """(left, right) tensors (P, C, size, size), intensities / 255: one crop of each pair of
    `views` (`whole_views`) at a corner drawn uniformly from every position that fits, the
    same in both views, then flipped left-right and up-down, each with probability 1/2 and
    both views alike (PAD-Net's group_random_crop, group_random_fliplr and
    group_random_flipud). Every draw comes from `generator`, so (seed, epoch) fixes a run's
    crops whatever the device or the number of ranks."""
    channels = views[0][0].shape[0]
    left = torch.empty(len(views), channels, size, size, dtype=dtype)
    right = torch.empty_like(left)
    for i, (lv, rv) in enumerate(views):
        h, w = lv.shape[1:]
        y = int(torch.randint(h - size + 1, (1,), generator=generator))
        x = int(torch.randint(w - size + 1, (1,), generator=generator))
        flip = torch.rand(2, generator=generator) < 0.5  # left-right, then up-down
        dims = [d for d, chosen in zip((2, 1), flip.tolist()) if chosen]
        for out, view in ((left, lv), (right, rv)):
            crop = view[:, y : y + size, x : x + size]
            out[i] = (crop.flip(dims) if dims else crop).to(torch.float32) / 255.0
    return left, right


def crop_generator(seed, epoch) -> torch.Generator:
    """The random-crop stream of one epoch: its own seed (not `epoch_order`'s stream)."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch, 1])
                                             .generate_state(1, dtype=np.uint64)[0] >> 1))
