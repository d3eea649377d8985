"""What a network consumes, for a list of pairs: the patch tensors its spec asks for and the
targets of its outputs, resident on one device (`SplitData`).

    pairs --spec.normalisation--> local        extract_patch_set (the paper's network, C from
                                               patches.normalisation: PATCH_C)
                                  unit/stand.  view_patch_set (/ 255; StereoQA-Net standardises
                                               inside the network)
                                  random crop  room for one crop of each pair, refilled every
                                               epoch by fill_random_crops (PAD-Net's training)
          --> SplitData(left, right, pair_index, score, nss, views)
"""
from dataclasses import dataclass

import numpy as np
import torch

from siqa.data.patches import PatchSet, crop_generator, extract_patch_set, random_crops, view_patch_set

PATCH_C = {"reference": 1.0, "contrast": 1.0 / 255}  # C of (p - mean) / (std + C) on [0, 1]


@dataclass
class SplitData:
    """One split on one device: patches plus per-pair targets (pair_index maps patch -> pair)."""

    left: torch.Tensor  # (N, C, S, S) as the network's spec asks ((N, 1, 32, 32) for the paper's)
    right: torch.Tensor
    pair_index: torch.Tensor  # (N,) int64
    score: torch.Tensor  # (P,) float32
    nss: torch.Tensor  # (P, 108) float32; (P, 0) for a network without the NSS task
    views: torch.Tensor | None = None  # (P, 2) per-view scores, for networks that predict them

    @property
    def num_patches(self):
        return self.left.shape[0]

    @property
    def num_pairs(self):
        return self.score.shape[0]

    def to(self, device):
        return SplitData(*(None if t is None else t.to(device, non_blocking=True) for t in
                           (self.left, self.right, self.pair_index, self.score, self.nss, self.views)))


def split_data(pairs, nss, dtype, normalisation, spec, progress=True, crops=False) -> SplitData:
    """The patches and targets of `pairs` that a network with `spec` consumes
    (siqa/models/spec.py); the paper's network: locally normalised grey patches. `crops`:
    room for one crop of each pair, which `fill_random_crops` draws anew every epoch."""
    if crops:
        n, c, size = len(pairs), spec.channels, spec.patch
        patches = PatchSet(left=torch.zeros(n, c, size, size, dtype=dtype),
                           right=torch.zeros(n, c, size, size, dtype=dtype),
                           pair_index=torch.arange(n, dtype=torch.int64))
    elif spec.normalisation == "local":
        patches = extract_patch_set(pairs, progress=progress, dtype=dtype, c=PATCH_C[normalisation])
    else:
        patches = view_patch_set(pairs, spec, progress=progress, dtype=dtype)
    views = None
    if spec.needs_view_scores:
        views = torch.tensor([p.view_scores for p in pairs], dtype=torch.float32)
    return SplitData(
        left=patches.left,
        right=patches.right,
        pair_index=patches.pair_index,
        score=torch.tensor([p.score for p in pairs], dtype=torch.float32),
        nss=torch.as_tensor(np.asarray(nss), dtype=torch.float32),
        views=views,
    )


def fill_random_crops(data: SplitData, views, size, seed, epoch):
    """Epoch `epoch`'s random crops (siqa.data.patches.random_crops) of the training views,
    written into `data`'s patch tensors: the same crops on every rank and after a resume."""
    left, right = random_crops(views, size, crop_generator(seed, epoch), data.left.dtype)
    data.left.copy_(left)
    data.right.copy_(right)
