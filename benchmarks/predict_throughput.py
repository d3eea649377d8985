"""Scoring throughput, stereo pairs per second: the Python API (siqa.load(...).score) next to
predict.py, for 640x360 views given as two PNG files, on CPU and, when present, CUDA.

    python benchmarks/predict_throughput.py [--pairs 8] [--threads 0] [--sbs]

Lines measured (the network is untrained: its speed does not depend on its weights):
  API, files     model.score(lefts, rights) on PNG paths: decoding, patches, network, mean
  API, arrays    the same on views already decoded to uint8 arrays (what a caller holding
                 images in memory gets)
  evaluate path  the same files through evaluate.py's route (all patches stacked with
                 siqa.data.inputs.split_data, then siqa.scoring.predict_pairs): the reference the
                 API must match in speed as it does in value
  predict.py     the command on a manifest of the same pairs, as a new process; "per pair"
                 subtracts a one-pair run (start-up, imports, checkpoint load), "whole" does not
  --sbs adds the API on 1920x1080 side-by-side PNGs (two 960x1080 views)
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def natural_like(rng, h, w):
    """A smooth random texture with noise (stands in for natural content)."""
    small = rng.normal(128, 40, (h // 16 + 2, w // 16 + 2))
    image = np.asarray(Image.fromarray(small.clip(0, 255).astype(np.uint8)).resize((w, h), Image.BICUBIC),
                       dtype=np.float64)
    return (image + rng.normal(0, 8, (h, w))).clip(0, 255).astype(np.uint8)


def make_checkpoint(path):
    """An untrained network in a checkpoint of the layout train.py writes."""
    import torch

    from siqa import config
    from siqa.build import build_model
    from siqa.checkpoint import save_checkpoint

    cfg = config.load_config(overrides=["dataset.name=csv"])
    torch.manual_seed(0)
    model = build_model(cfg, torch.device("cpu"))
    save_checkpoint(path, {"model": model.state_dict(), "config": cfg, "database": {
        "name": "synthetic", "higher_is_better": False, "score_min": 0.0, "score_max": 100.0}})


def timed(fn, sync):
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def predict_cli(checkpoint, manifest, device, threads):
    # the repository first, then the caller's path (wheels installed with pip --target)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "predict.py"), "--checkpoint", str(checkpoint),
                    "--manifest", str(manifest), "--device", device], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def evaluate_path(model, pairs):
    """evaluate.py's scoring route on the same files (what the API reproduces)."""
    from siqa.data.inputs import split_data
    from siqa.data.records import StereoPair
    from siqa.scoring import predict_pairs

    records = [StereoPair(name=str(a), left=a, right=b, score=0.0, higher_is_better=False,
                          content="", distortion="") for a, b in pairs]
    data = split_data(records, np.zeros((len(records), 108)), model.patch_dtype, model.normalisation,
                      model.spec, progress=False)
    return predict_pairs(model.network, data.to(model.device), amp_dtype=model.amp_dtype)


def write_manifest(path, pairs):
    path.write_text("left,right\n" + "".join(f"{a},{b}\n" for a, b in pairs))
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = default")
    parser.add_argument("--sbs", action="store_true", help="also 1920x1080 side-by-side files")
    args = parser.parse_args()
    import torch

    import siqa

    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkpoint = tmp / "untrained.pt"
        make_checkpoint(checkpoint)
        pairs = []
        for i in range(args.pairs):
            for eye in "lr":
                Image.fromarray(natural_like(rng, 360, 640)).save(tmp / f"{i}_{eye}.png")
            pairs.append((tmp / f"{i}_l.png", tmp / f"{i}_r.png"))
        lefts, rights = [a for a, _ in pairs], [b for _, b in pairs]
        arrays_l = [np.asarray(Image.open(p).convert("L")) for p in lefts]
        arrays_r = [np.asarray(Image.open(p).convert("L")) for p in rights]
        many = write_manifest(tmp / "many.csv", pairs)
        one = write_manifest(tmp / "one.csv", pairs[:1])
        for name in devices:
            device = torch.device(name)
            sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
            label = torch.cuda.get_device_name(device) if device.type == "cuda" else \
                f"cpu ({torch.get_num_threads()} threads)"
            model = siqa.load(checkpoint, device=device)
            model.score(lefts[:1], rights[:1])  # warm-up
            n = len(pairs)
            rows.append((label, "API, files", n / timed(lambda: model.score(lefts, rights), sync)))
            rows.append((label, "API, arrays", n / timed(lambda: model.score(arrays_l, arrays_r), sync)))
            rows.append((label, "evaluate path, files",
                         n / timed(lambda: evaluate_path(model, pairs), sync)))
            whole = predict_cli(checkpoint, many, name, args.threads)
            start = predict_cli(checkpoint, one, name, args.threads)
            per_pair = (n - 1) / max(whole - start, 1e-9) if n > 1 else float("nan")
            rows.append((label, "predict.py, per pair", per_pair))
            rows.append((label, f"predict.py, whole ({n} pairs)", n / whole))
            if args.sbs:
                sbs = []
                for i in range(max(2, n // 4)):
                    Image.fromarray(natural_like(rng, 1080, 1920)).save(tmp / f"{i}_sbs.png")
                    sbs.append(tmp / f"{i}_sbs.png")
                rows.append((label, "API, 1920x1080 SBS files",
                             len(sbs) / timed(lambda: model.score(sbs=sbs), sync)))
    api = {(r[0]): r[2] for r in rows if r[1] == "API, files"}
    print(f"640x360 L/R PNG pairs, {args.pairs} per measurement")
    print(f"{'device':<30}{'path':<32}{'pairs/s':>10}{'vs API files':>14}")
    for label, path, rate in rows:
        print(f"{label:<30}{path:<32}{rate:>10.2f}{rate / api[label]:>13.2f}x")


if __name__ == "__main__":
    main()
