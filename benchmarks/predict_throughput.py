"""Scoring throughput: stereo pairs scored per second by predict.py's path (file decoding,
patch extraction, forward passes, mean per pair), for 640x360 views given as two files and
1920x1080 side-by-side files (two 960x1080 views), on CPU and, when present, CUDA.

    python benchmarks/predict_throughput.py [--pairs 8] [--threads 0]
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def natural_like(rng, h, w):
    """A smooth random texture with noise (stands in for natural content)."""
    small = rng.normal(128, 40, (h // 16 + 2, w // 16 + 2))
    image = np.asarray(Image.fromarray(small.clip(0, 255).astype(np.uint8)).resize((w, h), Image.BICUBIC),
                       dtype=np.float64)
    return (image + rng.normal(0, 8, (h, w))).clip(0, 255).astype(np.uint8)


def make_pairs(folder: Path, count, kind, rng):
    pairs = []
    for i in range(count):
        if kind == "640x360 L/R":
            left, right = natural_like(rng, 360, 640), natural_like(rng, 360, 640)
            Image.fromarray(left).save(folder / f"{i}_l.png")
            Image.fromarray(right).save(folder / f"{i}_r.png")
            pairs.append((folder / f"{i}_l.png", folder / f"{i}_r.png"))
        else:
            sbs = natural_like(rng, 1080, 1920)
            Image.fromarray(sbs).save(folder / f"{i}_sbs.png")
            pairs.append((folder / f"{i}_sbs.png", None))
    return pairs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    import torch

    from siqa.model import MultiTaskSIQA
    from siqa.predictor import score_pairs

    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rng = np.random.default_rng(0)
    print(f"{'device':<28}{'pairs':<16}{'pairs/s':>10}{'s/pair':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("640x360 L/R", "1920x1080 SBS"):
            folder = Path(tmp) / kind.split()[0]
            folder.mkdir()
            pairs = make_pairs(folder, args.pairs, kind, rng)
            for name in devices:
                device = torch.device(name)
                model = MultiTaskSIQA().to(device).eval()
                score_pairs(model, pairs[:1], device)  # warm-up
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                score_pairs(model, pairs, device)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                dt = time.perf_counter() - t0
                label = torch.cuda.get_device_name(device) if device.type == "cuda" else \
                    f"cpu ({torch.get_num_threads()} threads)"
                print(f"{label:<28}{kind:<16}{len(pairs) / dt:>10.2f}{dt / len(pairs):>10.3f}")


if __name__ == "__main__":
    main()
