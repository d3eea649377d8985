"""StereoQA-Net of Zhou, Chen & Li (IEEE TIP 2019), ported from the authors' Keras model
(weizhou-geek/Stereoscopic-Image-Quality-Assessment-Network, test_siqa_model_LIVE1.py;
docs/models.md#stereoqanet).

Layout (every conv 3x3 'same'; ELU after every conv and fc6/fc7; pools 2x2 max):

    view stream (left, right; separate weights), input (B,3,32,32):
      conv1 3->32 ELU pool (32x16x16); conv2 32->32 = c2 (pre-activation, 32x16x16) ELU pool
      (32x8x8); conv3 32->64 ELU; conv4 64->64 ELU; conv5 64->128 = c5 (128x8x8) ELU pool
      (128x4x4) -> flatten 2048 -> head                                     -> a, b (512)
    fusion1: ELU(cat(c2L + c2R, c2L - c2R)) (64x16x16) pool (64x8x8); conv3 64->64 ELU;
      conv4 64->64 ELU; conv5 64->128 ELU pool (128x4x4) -> flatten 2048 -> head  -> c (512)
    fusion2: ELU(cat(c5L + c5R, c5L - c5R)) (256x8x8) pool (256x4x4) -> flatten 4096
      -> head                                                               -> d (512)
    head: fc6 512 ELU dropout 0.35 -> fc7 512 ELU dropout 0.5
    cat(a, b, c, d) (2048) -> fc8 1024 (linear) -> fc9 1 (linear) = patch score

8,821,313 parameters (the Keras summary's count).

Optional NSS head (not in the original; `StereoQANet(nss_head=True)`, built when
train.nss_weight > 0, docs/models.md#stereoqanet): nss_head, a linear 2048 -> 108 on
cat(a, b, c, d), the fused features fc8 reads; the forward then returns (score, nss) and
the network has 8,821,313 + 2048 * 108 + 108 = 9,042,605 parameters. Without it the
network, its forward and its initialisation are the original's. The image score is the mean over its
patches. Input: 32x32 RGB patches, non-overlapping, every whole patch (corners
range(0, H - 32 + 1, 32): 20 x 11 = 220 a 640x360 view), intensities / 255, then each view
standardised per pixel and channel, (x - mean) / std, with the mean and (population) std of
that view's patches over the TRAINING split; the original's test script used the test set's
own statistics. The statistics are buffers of the network (`set_standardisation`), so a
checkpoint carries them; before they are set they are 0 and 1 (identity).

Deviations (docs/models.md#stereoqanet):
- flatten is PyTorch's (C, H, W) order, Keras's is (H, W, C): the same function once the
  fc6 weights' rows are permuted (scripts/golden_networks.py maps them).
- a pixel whose training std is 0 is divided by 1 (the original would divide by 0).
"""
import torch
import torch.nn.functional as F
from torch import nn

from siqa.models.spec import NSS_DIM, InputSpec

PATCH = 32


def _conv(cin, cout):
    return nn.Conv2d(cin, cout, kernel_size=3, stride=1, padding=1)


class Head(nn.Module):
    """fc6 512 ELU dropout 0.35 -> fc7 512 ELU dropout 0.5."""

    def __init__(self, in_features):
        super().__init__()
        self.fc6 = nn.Linear(in_features, 512)
        self.drop6 = nn.Dropout(0.35)
        self.fc7 = nn.Linear(512, 512)
        self.drop7 = nn.Dropout(0.5)

    def forward(self, x):
        x = self.drop6(F.elu(self.fc6(torch.flatten(x, 1))))
        return self.drop7(F.elu(self.fc7(x)))


class ViewStream(nn.Module):
    """conv1..conv5 of one view; returns (c2, c5, features) with c2, c5 pre-activation."""

    def __init__(self):
        super().__init__()
        self.conv1 = _conv(3, 32)
        self.conv2 = _conv(32, 32)
        self.conv3 = _conv(32, 64)
        self.conv4 = _conv(64, 64)
        self.conv5 = _conv(64, 128)
        self.head = Head(128 * 4 * 4)

    def forward(self, x):
        x = F.max_pool2d(F.elu(self.conv1(x)), 2, 2)
        c2 = self.conv2(x)
        x = F.max_pool2d(F.elu(c2), 2, 2)
        x = F.elu(self.conv4(F.elu(self.conv3(x))))
        c5 = self.conv5(x)
        x = F.max_pool2d(F.elu(c5), 2, 2)
        return c2, c5, self.head(x)


def add_subtract(x_left, x_right):
    """ELU(cat(xL + xR, xL - xR)) along channels."""
    return F.elu(torch.cat((x_left + x_right, x_left - x_right), dim=1))


class Fusion1(nn.Module):
    """On add_subtract(c2L, c2R): pool, conv3 64->64, conv4 64->64, conv5 64->128, pool, head."""

    def __init__(self):
        super().__init__()
        self.conv3 = _conv(64, 64)
        self.conv4 = _conv(64, 64)
        self.conv5 = _conv(64, 128)
        self.head = Head(128 * 4 * 4)

    def forward(self, c2_left, c2_right):
        x = F.max_pool2d(add_subtract(c2_left, c2_right), 2, 2)
        x = F.elu(self.conv4(F.elu(self.conv3(x))))
        return self.head(F.max_pool2d(F.elu(self.conv5(x)), 2, 2))


class Fusion2(nn.Module):
    """On add_subtract(c5L, c5R): pool, head."""

    def __init__(self):
        super().__init__()
        self.head = Head(256 * 4 * 4)

    def forward(self, c5_left, c5_right):
        return self.head(F.max_pool2d(add_subtract(c5_left, c5_right), 2, 2))


# No training script was released and no recipe is known: this project's values
# (bourbia2021's paper recipe), not StereoQA-Net's (docs/models.md).
PAPER = {"train.epochs": 500, "train.optimizer": "sgd", "train.lr": 0.001, "train.lr_step": 0,
         "train.lr_gamma": 0.1, "train.weight_decay": 0.0001, "train.batch_size": 128,
         "train.nss_weight": 0.0}
# The demo benchmark's budget (docs/benchmark.md): SGD 1e-3 and Adam 1e-4 left the test
# SROCC near 0 after 5-6 epochs of a fold; Adam 1e-3 for 15 epochs learns (~6 min a fold).
SHORT = {**PAPER, "train.epochs": 15, "train.optimizer": "adam"}


class StereoQANet(nn.Module):
    spec = InputSpec(patch=PATCH, stride=PATCH, grid="inclusive", channels=3,
                     normalisation="standardise", outputs=("quality",),
                     recipes={"paper": PAPER, "short": SHORT}, recipe_published=False,
                     nss_head=True)

    def __init__(self, nss_head: bool = False):
        super().__init__()
        self.left = ViewStream()
        self.right = ViewStream()
        self.fusion1 = Fusion1()
        self.fusion2 = Fusion2()
        self.fc8 = nn.Linear(4 * 512, 1024)
        self.fc9 = nn.Linear(1024, 1)
        for view in ("left", "right"):
            self.register_buffer(f"{view}_mean", torch.zeros(3, PATCH, PATCH))
            self.register_buffer(f"{view}_std", torch.ones(3, PATCH, PATCH))
        self.nss_head = None
        if nss_head:  # built last: the other layers draw the same initial weights as without it
            self.spec = type(self).spec.with_nss()
            # Linear, as bourbia2021's NSS output layer (nss_fc2): the 108 targets are a
            # regression read off shared features, which the quality task must shape; a deeper
            # head would let the NSS task learn on its own, away from the features fc8 reads.
            self.nss_head = nn.Linear(4 * 512, NSS_DIM)

    def set_standardisation(self, left_mean, left_std, right_mean, right_std):
        """The training split's per-pixel statistics of each view ((3, 32, 32) each)."""
        with torch.no_grad():
            for name, value in (("left_mean", left_mean), ("left_std", left_std),
                                ("right_mean", right_mean), ("right_std", right_std)):
                value = torch.as_tensor(value, dtype=torch.float32)
                if name.endswith("std"):
                    value = torch.where(value > 0, value, torch.ones_like(value))
                getattr(self, name).copy_(value)

    def forward(self, left, right):
        left = (left - self.left_mean) / self.left_std
        right = (right - self.right_mean) / self.right_std
        c2_l, c5_l, a = self.left(left)
        c2_r, c5_r, b = self.right(right)
        c = self.fusion1(c2_l, c2_r)
        d = self.fusion2(c5_l, c5_r)
        fused = torch.cat((a, b, c, d), dim=1)
        score = self.fc9(self.fc8(fused)).squeeze(-1)
        if self.nss_head is None:
            return (score,)
        return score, self.nss_head(fused)
