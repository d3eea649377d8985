"""The multi-task CNN of Bourbia et al. (ICIP 2021), as laid out in docs/method.md#the-network.

Layout (every conv 3x3 / stride 1 / padding 1 followed by ReLU; every pool 2x2 max):

    left  (B,1,32,32) --column_left-->  x2L (32x8x8), x4L (64x8x8), a (512)   sub-network A
    right (B,1,32,32) --column_right--> x2R (32x8x8), x4R (64x8x8), b (512)   sub-network B
    ReLU(cat(x2L + x2R, x2L - x2R)) 64x8x8  --diff_sum_low-->  c (512)       sub-network C
    ReLU(cat(x4L + x4R, x4L - x4R)) 128x8x8 --diff_sum_high--> d (512)       sub-network D
    fused = ReLU(cat(a, b, c, d))                                   (2048)
    task 1 (NSS):     h1 = nss_fc1(fused) (1024);  nss = nss_fc2(h1) (nss_dim)
    task 2 (quality): h2 = quality_fc1(fused) (1024)
                      quality = quality_out(quality_fc2(ReLU(cat(h2, h1))))   (1)

Every 512-wide branch ends in `FCBranch`: FC -> dropout 0.35 -> FC 512 -> dropout 0.5,
with no activation between the two FC layers (nor between the FC layers of the heads),
as in the original code.

Deviations from the authors' PyTorch 0.4 script (docs/decisions.md#dropout-at-test-time and
docs/decisions.md#one-forward-pass-per-training-step):
- dropout is an `nn.Dropout` module, so it is active in `train()` mode only; the original
  applied it unconditionally, also when validating and testing. Test-time predictions are
  therefore deterministic here.
- one forward pass returns both outputs (the original ran the network twice per step).

The left and right columns have separate weights. The forward pass is batch-only tensor
code (no per-sample Python, no data-dependent control flow), so it runs unchanged with
`channels_last` memory format, under `torch.autocast` (bf16/fp16) and under
`torch.compile`.
"""
import torch
from torch import nn

from siqa.models.spec import NSS_DIM, InputSpec

PATCH_SIZE = 32

# The recipe of the paper and its code (docs/method.md#training): the values of the `auto`
# config keys under train.profile=paper.
PAPER = {"train.epochs": 500, "train.optimizer": "sgd", "train.lr": 0.001, "train.lr_step": 0,
         "train.lr_gamma": 0.1, "train.weight_decay": 0.0001, "train.batch_size": 128,
         "train.nss_weight": 25.0, "patches.normalisation": "reference"}
# train.profile=short: the paper's optimizer and constant rate; only the normalisation and
# the epoch count differ (docs/decisions.md#the-demo-profile, benchmarks/demo_profiles.py).
SHORT = {**PAPER, "train.epochs": 40, "patches.normalisation": "contrast"}


def _conv(in_channels, out_channels):
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)


class FCBranch(nn.Module):
    """FC in -> 512, dropout 0.35, FC 512 -> 512, dropout 0.5 (no activation in between)."""

    def __init__(self, in_features, width=512, p1=0.35, p2=0.5):
        super().__init__()
        self.fc1 = nn.Linear(in_features, width)
        self.drop1 = nn.Dropout(p1)
        self.fc2 = nn.Linear(width, width)
        self.drop2 = nn.Dropout(p2)

    def forward(self, x):
        return self.drop2(self.fc2(self.drop1(self.fc1(x))))


class ViewColumn(nn.Module):
    """One view's column (sub-network A for the left view, B for the right view).

    conv1 1->32 +pool (32x16x16); conv2 32->32 +pool (x2, 32x8x8); conv3 32->64;
    conv4 64->64 (x4, 64x8x8); conv5 64->128 +pool (128x4x4) -> flatten 2048 -> FCBranch.
    Returns (x2, x4, features) so that the fusion sub-networks can tap x2 and x4.
    """

    def __init__(self):
        super().__init__()
        self.conv1 = _conv(1, 32)
        self.conv2 = _conv(32, 32)
        self.conv3 = _conv(32, 64)
        self.conv4 = _conv(64, 64)
        self.conv5 = _conv(64, 128)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.fc = FCBranch(128 * 4 * 4)

    def forward(self, x):
        x = self.pool(self.relu(self.conv1(x)))
        x2 = self.pool(self.relu(self.conv2(x)))
        x = self.relu(self.conv3(x2))
        x4 = self.relu(self.conv4(x))
        x = self.pool(self.relu(self.conv5(x4)))
        return x2, x4, self.fc(torch.flatten(x, 1))


def sum_diff(x_left, x_right):
    """ReLU(cat(xL + xR, xL - xR)) along channels: the fusion/difference block."""
    return torch.relu(torch.cat((x_left + x_right, x_left - x_right), dim=1))


class DiffSumLow(nn.Module):
    """Sub-network C: on sum_diff(x2L, x2R) (64x8x8): conv 64->64; conv 64->128 +pool
    (128x4x4) -> flatten 2048 -> FCBranch."""

    def __init__(self):
        super().__init__()
        self.conv1 = _conv(64, 64)
        self.conv2 = _conv(64, 128)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.fc = FCBranch(128 * 4 * 4)

    def forward(self, x2_left, x2_right):
        x = self.relu(self.conv1(sum_diff(x2_left, x2_right)))
        x = self.pool(self.relu(self.conv2(x)))
        return self.fc(torch.flatten(x, 1))


class DiffSumHigh(nn.Module):
    """Sub-network D: sum_diff(x4L, x4R) (128x8x8), flattened (8192) -> FCBranch."""

    def __init__(self):
        super().__init__()
        self.fc = FCBranch(128 * 8 * 8)

    def forward(self, x4_left, x4_right):
        return self.fc(torch.flatten(sum_diff(x4_left, x4_right), 1))


class MultiTaskSIQA(nn.Module):
    """Two view columns, two fusion sub-networks, an NSS head and a quality head.

    forward(left, right) with left/right of shape (B, 1, 32, 32) returns
    (quality of shape (B,), nss of shape (B, nss_dim)). With nss_dim=108 the network has
    15,187,437 parameters.
    """

    # 32x32 grey patches, stride 24, locally normalised (siqa/data/patches.py)
    spec = InputSpec(patch=PATCH_SIZE, stride=24, grid="exclusive", channels=1,
                     normalisation="local", outputs=("quality", "nss"),
                     recipes={"paper": PAPER, "short": SHORT})

    def __init__(self, nss_dim=NSS_DIM):
        super().__init__()
        nss_dim = int(nss_dim)
        if nss_dim < 1:
            raise ValueError(f"nss_dim must be a positive integer, got {nss_dim}")
        self.nss_dim = nss_dim
        self.column_left = ViewColumn()    # sub-network A
        self.column_right = ViewColumn()   # sub-network B
        self.diff_sum_low = DiffSumLow()   # sub-network C (taps x2 of both columns)
        self.diff_sum_high = DiffSumHigh()  # sub-network D (taps x4 of both columns)
        # task 1: naturalness (NSS) prediction
        self.nss_fc1 = nn.Linear(4 * 512, 1024)     # FC11 -> h1
        self.nss_fc2 = nn.Linear(1024, nss_dim)     # FC21
        # task 2: quality prediction
        self.quality_fc1 = nn.Linear(4 * 512, 1024)  # FC12 -> h2
        self.quality_fc2 = nn.Linear(2 * 1024, 1024)  # FC22 on ReLU(cat(h2, h1))
        self.quality_out = nn.Linear(1024, 1)        # FC32

    def forward(self, left, right):
        x2_l, x4_l, a = self.column_left(left)
        x2_r, x4_r, b = self.column_right(right)
        c = self.diff_sum_low(x2_l, x2_r)
        d = self.diff_sum_high(x4_l, x4_r)
        fused = torch.relu(torch.cat((a, b, c, d), dim=1))
        h1 = self.nss_fc1(fused)
        nss = self.nss_fc2(h1)
        h2 = self.quality_fc1(fused)
        quality = self.quality_out(self.quality_fc2(torch.relu(torch.cat((h2, h1), dim=1))))
        return quality.squeeze(-1), nss

