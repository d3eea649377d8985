"""Multi-score SIQA of Messai & Chetouani (ICIP 2022), ported from the authors' PyTorch code
(o-messai/Multi-score-SIQA, network.py, MIT licence; docs/models.md#multiscore).

Layout (every conv 3x3 / stride 1 / padding 1 followed by ReLU; every pool 2x2 max; BN =
BatchNorm2d after the pool, as in the original):

    stream (in_channels c):
      conv1 c->32 +pool +BN (32x16x16); conv2 32->32 +pool +BN (32x8x8); conv3 32->64;
      conv4 64->64; conv5 64->128 +pool +BN (128x4x4) -> flatten 2048
      -> fc1 1024 -> dropout 0.5 -> fc2 512 = f (the stream's features)
      -> fc3 1 + ReLU = q (the stream's score)

    left  (B,3,32,32)                    --stream_left   (c=3)--> f_L, q_left
    right (B,3,32,32)                    --stream_right  (c=3)--> f_R, q_right
    cat(left, right) (B,6,32,32)         --stream_stereo (c=6)--> f_S, q_stereo
    global head: ReLU(cat(f_R, f_L, f_S)) (1536) -> fc1 1024 -> fc2 512 + ReLU
                 -> fc3 1 + ReLU = q_global

forward(left, right) -> (global, left, right, stereo), each of shape (B,). Trained with
L1 on all four: 2 * L1(global, score) + L1(left, left view score) + L1(right, right view
score) + L1(stereo, score) (the weights of the authors' train.py). 10,389,956 parameters.
Optional NSS head (not in the original; `MultiScore(nss_head=True)`, built when
train.nss_weight > 0, docs/models.md#multiscore): nss_head, a linear 1536 -> 108 on
ReLU(cat(f_R, f_L, f_S)), the fused vector the global head reads (its fc1 input: the one
vector where the three streams meet, as bourbia2021's NSS task reads its fused vector); the
forward then returns (global, left, right, stereo, nss), and the network has 10,389,956 +
1536 * 108 + 108 = 10,555,952 parameters. Without it the network, its forward and its
initialisation are the original's.
Input: 32x32 RGB patches, non-overlapping (corners range(0, H - 32, 32), the original's
exclusive bound), intensities / 255 and nothing else (torchvision's to_tensor).

Deviations from the original (docs/models.md#multiscore):
- dropout is an nn.Dropout module, active in train() mode only (this project's rule,
  docs/decisions.md#dropout-at-test-time); the original calls F.dropout(training=True),
  so its evaluation predictions are random. With the same random state the train-mode
  forward draws the same masks as the original's.
- the four scores come out of one forward pass of shape (B,) each; the original's train.py
  ran the network four times per step (one per output, each with its own dropout masks) and
  its outputs are (B, 1).
"""
import torch
import torch.nn.functional as F
from torch import nn

from siqa.models.spec import NSS_DIM, InputSpec


def _conv(cin, cout):
    return nn.Conv2d(cin, cout, kernel_size=3, stride=1, padding=1)


class Stream(nn.Module):
    """One of the three 5-conv streams: returns (features f (512), score q (B,))."""

    def __init__(self, in_channels):
        super().__init__()
        self.conv1 = _conv(in_channels, 32)
        self.conv2 = _conv(32, 32)
        self.conv3 = _conv(32, 64)
        self.conv4 = _conv(64, 64)
        self.conv5 = _conv(64, 128)
        self.bn1 = nn.BatchNorm2d(32)
        self.bn2 = nn.BatchNorm2d(32)
        self.bn3 = nn.BatchNorm2d(128)
        self.fc1 = nn.Linear(2048, 1024)
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(1024, 512)
        self.fc3 = nn.Linear(512, 1)

    def forward(self, x):
        x = self.bn1(F.max_pool2d(F.relu(self.conv1(x)), 2, 2))
        x = self.bn2(F.max_pool2d(F.relu(self.conv2(x)), 2, 2))
        x = F.relu(self.conv4(F.relu(self.conv3(x))))
        x = self.bn3(F.max_pool2d(F.relu(self.conv5(x)), 2, 2))
        f = self.fc2(self.drop(self.fc1(torch.flatten(x, 1))))
        return f, F.relu(self.fc3(f)).squeeze(-1)


class GlobalHead(nn.Module):
    """ReLU(cat(f_R, f_L, f_S)) -> fc1 1024 -> fc2 512 + ReLU -> fc3 1 + ReLU."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(3 * 512, 1024)
        self.fc2 = nn.Linear(1024, 512)
        self.fc3 = nn.Linear(512, 1)

    def fuse(self, f_left, f_right, f_stereo):
        """ReLU(cat(f_R, f_L, f_S)) (1536): the fused vector (also what the NSS head reads)."""
        return F.relu(torch.cat((f_right, f_left, f_stereo), dim=1))  # the original's order

    def score(self, x):
        return F.relu(self.fc3(F.relu(self.fc2(self.fc1(x))))).squeeze(-1)

    def forward(self, f_left, f_right, f_stereo):
        return self.score(self.fuse(f_left, f_right, f_stereo))


# The authors' train.py: SGD 1e-4, momentum 0.9, weight decay 1e-3, batch 128, 100 epochs.
PAPER = {"train.epochs": 100, "train.optimizer": "sgd", "train.lr": 0.0001, "train.lr_step": 0,
         "train.lr_gamma": 0.1, "train.weight_decay": 0.001, "train.batch_size": 128,
         "train.nss_weight": 0.0}
# The demo benchmark's budget (docs/benchmark.md): 100 epochs of SGD 1e-4 barely move in
# the ~30 CPU minutes a network gets; Adam 1e-3 for 15 epochs (~5 min a fold on 2 cores)
# learns, and the project's weight decay. The same row as stereoqanet's.
SHORT = {**PAPER, "train.epochs": 15, "train.optimizer": "adam", "train.lr": 0.001,
         "train.weight_decay": 0.0001}


class MultiScore(nn.Module):
    spec = InputSpec(patch=32, stride=32, grid="exclusive", channels=3, normalisation="unit",
                     outputs=("quality", "left", "right", "stereo"),
                     loss_weights=(("quality", 2.0), ("left", 1.0), ("right", 1.0), ("stereo", 1.0)),
                     recipes={"paper": PAPER, "short": SHORT}, nss_head=True)

    def __init__(self, nss_head: bool = False):
        super().__init__()
        self.stream_left = Stream(3)
        self.stream_right = Stream(3)
        self.stream_stereo = Stream(6)
        self.head = GlobalHead()
        self.nss_head = None
        if nss_head:  # built last: the other layers draw the same initial weights as without it
            self.spec = type(self).spec.with_nss()
            # Linear, as bourbia2021's NSS output layer (nss_fc2): the 108 targets are a
            # regression read off the shared fused vector, which the quality task must shape;
            # a deeper head would let the NSS task learn on its own, away from the global head.
            self.nss_head = nn.Linear(3 * 512, NSS_DIM)

    def forward(self, left, right):
        f_l, q_l = self.stream_left(left)
        f_r, q_r = self.stream_right(right)
        f_s, q_s = self.stream_stereo(torch.cat((left, right), dim=1))
        if self.nss_head is None:
            return self.head(f_l, f_r, f_s), q_l, q_r, q_s
        fused = self.head.fuse(f_l, f_r, f_s)
        return self.head.score(fused), q_l, q_r, q_s, self.nss_head(fused)
