"""PAD-Net's pre-training stage: the GDN auto-encoder alone, as a reconstruction model.

    python -m siqa.models.padnet_pretrain --images DIR [--epochs 100] [--crop 256] \\
        [--out padnet_autoencoder.pt]

The authors start the auto-encoder of PAD-Net from a `pretrained_weight.pth` that was
never released (an image-compression auto-encoder of Balle et al.'s kind). This command
builds that stage: it trains `AutoEncoder` (analysis + synthesis, N=128, M=192) to
reconstruct seeded random `crop` x `crop` RGB crops (/255) of every image in `--images`,
with the MSE of the original's `loss_build`, Adam at lr 1e-4, batch 8. What it trains on
is the user's choice and must not contain test content: the pristine views of the
training scenes, or any set of natural images. What it does NOT do: the compression
model's rate term (so the prior branch, `autoencoder.prior`, is not trained here, and
stays at its initialisation); see docs/models.md#padnet.

The file it writes (a torch.save dict: autoencoder state_dict, images, settings) is the
one `PADNet.load_pretrained` reads.
"""
import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from siqa.errors import UserError, counted, run_cli
from siqa.imageio import view_rgb
from siqa.models.padnet import AutoEncoder

SUFFIXES = {".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff", ".ppm"}


def _images(folder):
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in SUFFIXES)
    if not files:
        raise UserError(f"--images {folder}: no image files there")
    return files, [torch.from_numpy(view_rgb(p).copy()).permute(2, 0, 1) for p in files]


def pretrain(images, epochs=100, crop=256, batch=8, lr=1e-4, seed=0, log=print):
    if crop % 16:
        raise UserError(f"--crop {crop}: must be a multiple of 16 (four stride-2 stages)")
    small = [i for i, im in enumerate(images) if min(im.shape[1:]) < crop]
    if small:
        raise UserError(f"{len(small)} images are smaller than --crop {crop}")
    torch.manual_seed(seed)
    model = AutoEncoder()
    params = list(model.analysis.parameters()) + list(model.synthesis.parameters())
    optimizer = torch.optim.Adam(params, lr=lr)
    g = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=g).tolist()
        total = 0.0
        for start in range(0, len(order), batch):
            crops = []
            for i in order[start : start + batch]:
                _, h, w = images[i].shape
                y = int(torch.randint(0, h - crop + 1, (1,), generator=g))
                x = int(torch.randint(0, w - crop + 1, (1,), generator=g))
                crops.append(images[i][:, y : y + crop, x : x + crop].float() / 255)
            x = torch.stack(crops)
            loss = F.mse_loss(model(x)[2], x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(crops)
        log(f"epoch {epoch + 1}/{epochs} reconstruction MSE {total / len(images):.6f}")
    return model


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--images", required=True, help="folder of training images (no test content)")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="padnet_autoencoder.pt")
    args = parser.parse_args(argv)
    files, images = _images(args.images)
    model = pretrain(images, args.epochs, args.crop, args.batch, args.lr, args.seed)
    torch.save({"autoencoder": model.state_dict(), "images": [str(f) for f in files],
                "settings": {k: v for k, v in vars(args).items() if k != "out"}}, args.out)
    print(f"wrote {args.out} ({counted(len(files), 'image')}, {counted(args.epochs, 'epoch')})")


if __name__ == "__main__":
    sys.exit(run_cli(main))
