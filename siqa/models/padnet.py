"""PAD-Net of Xu et al. (2020), ported from the authors' PyTorch code
(weizhou-geek/PAD-Net-PyTorch: model/model_c1.py, model/GDN.py, model/functions.py,
main_live1.py; Apache-2.0; docs/models.md#padnet).

Layout for one 256x256 RGB crop of each view (intensities / 255):

    auto-encoder (Siamese: the same weights for both views), N = 128, M = 192:
      analysis   x (3x256x256) -conv5x5/2-> GDN -conv5x5/2-> GDN -conv5x5/2-> GDN
                 -conv5x5/2-> y (Mx16x16)                       (channels N, N, N, M)
      synthesis  y -deconv5x5/2-> IGDN -deconv5x5/2-> IGDN -deconv5x5/2-> IGDN
                 -deconv5x5/2-> x_hat (3x256x256)
      error      e = mean over channels of (x - x_hat)^2        (1x256x256)
      prior      p = (upsample16(softplus(conv1x1 M->1 (softplus(y)))))^2  (1x256x256,
                 bilinear, align_corners=False)
    likelihood   l_L = (e_R + 5e-21) / (e_L + e_R + 1e-20), l_R = (e_L + 5e-21) / (...)
    prior maps   p'_L = (p_L + 5e-21) / (p_L + p_R + 1e-20),  p'_R likewise
    fuse         cat(p'_L, l_L, left, p'_R, l_R, right) (10x256x256)
                 -conv1x1 10->3-> GDN (3x256x256)
    trunk        torchvision ResNet-18 without avgpool and fc (512x8x8), maxpool 8 (512)
    fc           512 -> 1 = the crop's score

forward(left, right) -> (score,) of shape (B,). The image score is the mean over the crops
(spec grid "cover": six 256x256 crops of a 640x360 view at x 0/192/384, y 0/104, as
main_live1.py's crop_patch). The auto-encoder alone is pre-trained by `python -m
siqa.models.padnet_pretrain` (`load_pretrained` reads its file). 14,163,698 parameters at
N=128, M=192.

Optional NSS head (not in the original; `PADNet(nss_head=True)`, built when
train.nss_weight > 0, docs/models.md): a linear 512 -> 108 on the pooled vector that fc reads;
the forward then returns (score, nss).

GDN (Balle et al. 2016): y = x / sqrt(beta + conv1x1(x^2, gamma)), IGDN multiplies; gamma
and beta are stored re-parameterised (value = max(raw, bound)^2 - pedestal) with the
original's lower bound, whose gradient passes where raw >= bound or where the gradient
would raise raw (model/functions.py's F_Lowerbound).

Deviations (docs/models.md#padnet): the forward takes the two views only (the original's
takes and returns the label, and computes the MSE loss inside); the score is (B,), not (B, 1).
Per-group learning rates of main_live1.py (Adam): `param_groups(lr)` gives them.
"""
import torch
import torch.nn.functional as F
from torch import nn

from siqa.models.spec import NSS_DIM, InputSpec

CROP = 256


class _LowerBound(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bound):
        ctx.save_for_backward(x)
        ctx.bound = bound
        return x.clamp_min(bound)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        passes = (x >= ctx.bound) | (grad < 0)
        return grad * passes.to(grad.dtype), None


class GDN(nn.Module):
    """Generalised divisive normalisation (inverse=True: its inverse, IGDN)."""

    def __init__(self, channels, inverse=False, beta_min=1e-6, gamma_init=0.1,
                 reparam_offset=2 ** -18):
        super().__init__()
        self.inverse = inverse
        self.pedestal = reparam_offset ** 2
        self.beta_bound = (beta_min + self.pedestal) ** 0.5
        self.gamma_bound = reparam_offset
        eye = torch.eye(channels).view(channels, channels, 1, 1)
        self.gamma_raw = nn.Parameter(torch.sqrt(gamma_init * eye + self.pedestal))
        self.beta_raw = nn.Parameter(torch.sqrt(torch.ones(1, channels, 1, 1) + self.pedestal))

    def forward(self, x):
        gamma = _LowerBound.apply(self.gamma_raw, self.gamma_bound) ** 2 - self.pedestal
        beta = _LowerBound.apply(self.beta_raw, self.beta_bound) ** 2 - self.pedestal
        norm = (F.conv2d(x * x, gamma) + beta).sqrt()
        return x * norm if self.inverse else x / norm


def _down(cin, cout):
    return nn.Conv2d(cin, cout, kernel_size=5, stride=2, padding=2)


def _up(cin, cout):
    return nn.ConvTranspose2d(cin, cout, kernel_size=5, stride=2, padding=2, output_padding=1)


class AutoEncoder(nn.Module):
    """The GDN auto-encoder of one view (shared by both): analysis, synthesis, prior."""

    def __init__(self, n=128, m=192):
        super().__init__()
        self.analysis = nn.Sequential(_down(3, n), GDN(n), _down(n, n), GDN(n), _down(n, n),
                                      GDN(n), _down(n, m))
        self.synthesis = nn.Sequential(_up(m, n), GDN(n, inverse=True), _up(n, n),
                                       GDN(n, inverse=True), _up(n, n), GDN(n, inverse=True),
                                       _up(n, 3))
        self.prior = nn.Conv2d(m, 1, kernel_size=1)

    def forward(self, x):
        """(error map e, prior map p, reconstruction x_hat) of x (B,3,H,W)."""
        y = self.analysis(x)
        x_hat = self.synthesis(y)
        error = ((x - x_hat) ** 2).mean(dim=1, keepdim=True)
        prior = F.interpolate(F.softplus(self.prior(F.softplus(y))), scale_factor=16,
                              mode="bilinear", align_corners=False)
        return error, prior * prior, x_hat


def _share(a, b):
    return (a + 5e-21) / (a + b + 1e-20)


# main_live1.py: Adam 1e-4 (its per-group rates: PADNet.param_groups), batch 16, 300 epochs,
# x0.25 at epochs 50/100/150/200 (here every 50 epochs: also at 250).
PAPER = {"train.epochs": 300, "train.optimizer": "adam", "train.lr": 0.0001, "train.lr_step": 50,
         "train.lr_gamma": 0.25, "train.weight_decay": 0.0, "train.batch_size": 16,
         "train.nss_weight": 0.0}
# Not measured: PAD-Net was not trained on the demo beyond a budget run (its 256x256 crops
# need the full-size demo and a GPU, docs/benchmark.md); the paper recipe cut to 10 epochs.
SHORT = {**PAPER, "train.epochs": 10}


class PADNet(nn.Module):
    # training: one random crop of each pair an epoch, flipped (datasets/data_live1.py), and
    # the MSE of the score (model_c1.py's loss_build)
    spec = InputSpec(patch=CROP, stride=CROP, grid="cover", channels=3, normalisation="unit",
                     outputs=("quality",), train_crop="random", score_loss="mse",
                     recipes={"paper": PAPER, "short": SHORT}, nss_head=True)

    def __init__(self, n=128, m=192, nss_head: bool = False):
        super().__init__()
        from torchvision.models import resnet18

        self.autoencoder = AutoEncoder(n, m)
        self.fuse = nn.Sequential(nn.Conv2d(10, 3, kernel_size=1), GDN(3))
        self.trunk = nn.Sequential(*list(resnet18(weights=None).children())[:-2])
        self.fc = nn.Linear(512, 1)
        self.nss_head = None
        if nss_head:  # built last: the other layers draw the same initial weights as without it
            self.spec = type(self).spec.with_nss()
            # Linear on the pooled 512-vector that fc reads (as bourbia2021's NSS output layer)
            self.nss_head = nn.Linear(512, NSS_DIM)

    def load_pretrained(self, state):
        """The auto-encoder written by `python -m siqa.models.padnet_pretrain`."""
        self.autoencoder.load_state_dict(state["autoencoder"])

    def forward(self, left, right):
        e_l, p_l, _ = self.autoencoder(left)
        e_r, p_r, _ = self.autoencoder(right)
        x = torch.cat((_share(p_l, p_r), _share(e_r, e_l), left,
                       _share(p_r, p_l), _share(e_l, e_r), right), dim=1)
        features = torch.flatten(F.max_pool2d(self.trunk(self.fuse(x)), 8), 1)
        score = self.fc(features).squeeze(-1)
        return (score,) if self.nss_head is None else (score, self.nss_head(features))

    def param_groups(self, lr):
        """main_live1.py's Adam groups: analysis and synthesis 1e-5, ResNet lr / 2, the rest lr."""
        ae = self.autoencoder
        special = {id(p) for m in (ae.analysis, ae.synthesis, self.trunk) for p in m.parameters()}
        return [{"params": [p for p in self.parameters() if id(p) not in special]},
                {"params": list(ae.analysis.parameters()), "lr": 1e-5},
                {"params": list(ae.synthesis.parameters()), "lr": 1e-5},
                {"params": list(self.trunk.parameters()), "lr": lr * 0.5}]
