"""A tiny two-column network for smoke runs: not a published method.

It consumes and predicts what the paper's network does (32x32 grey patches, locally
normalised, stride 24; outputs quality and the 108 NSS targets) and trains with its recipe,
but has 0.13 % of its parameters. It exists so that checking a database, a cluster set-up or
the pipeline itself (the test suite: resume, preemption, several splits, scoring) takes
seconds and writes checkpoints of kilobytes; its scores say nothing about a method.

Layout (conv 3x3 / stride 1 / padding 1, ReLU; pool 4x4 max):

    left  (B,1,32,32) --conv 1->8, pool--> 8x8x8 --flatten, FC 512->16--> a (16)
    right (B,1,32,32) --conv 1->8, pool--> 8x8x8 --flatten, FC 512->16--> b (16)
    fused = dropout 0.5 (ReLU(cat(a, b)))                                  (32)
    nss = FC 32->108 (fused);  quality = FC 32->1 (fused)

20,173 parameters. The dropout makes a run draw from its random stream as the paper's
network does, so that the pipeline's handling of each split's stream is exercised.
"""
import torch
from torch import nn

from siqa.models.bourbia2021 import MultiTaskSIQA
from siqa.models.spec import NSS_DIM


class ViewStem(nn.Module):
    """One view: conv 1->8, ReLU, 4x4 max pool, FC 512 -> 16."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, kernel_size=3, stride=1, padding=1)
        self.pool = nn.MaxPool2d(kernel_size=4, stride=4)
        self.fc = nn.Linear(8 * 8 * 8, 16)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))


class TinySIQA(nn.Module):
    """Two view stems and two linear heads; forward(left, right) -> (quality (B,), nss (B, 108))."""

    spec = MultiTaskSIQA.spec  # the paper network's inputs, outputs and recipes

    def __init__(self, nss_dim=NSS_DIM):
        super().__init__()
        self.column_left = ViewStem()
        self.column_right = ViewStem()
        self.drop = nn.Dropout(0.5)
        self.nss = nn.Linear(32, int(nss_dim))
        self.quality = nn.Linear(32, 1)

    def forward(self, left, right):
        fused = self.drop(torch.relu(torch.cat((self.column_left(left), self.column_right(right)), 1)))
        return self.quality(fused).squeeze(-1), self.nss(fused)
