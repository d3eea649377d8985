"""Training throughput of K content splits: fused (one vmapped network) vs one after another.

The paper's network (bourbia2021, channels_last as train.py builds it), batch 128 patch pairs
per split, synthetic 32x32 patches resident on the device, SGD (lr 1e-3, momentum 0.9,
weight decay 1e-4), NSS weight 25, dropout on. Full rounds only (every split takes a
full batch):

    sequential  K networks, each with its own torch.optim.SGD and siqa.training.step.TrainStep
                (eager); a round is one step of each split, one after another
    fused       siqa.fused.FusedSplits over K networks: a round is one vmapped forward, one
                backward and one batched SGD update of all K splits

Rate = K x batch x timed rounds / seconds: patch pairs per second summed over the splits.
Each variant warms up for --warmup rounds, then --steps rounds are timed. --precision sets
train.py's numerics (fp32: TF32 off; tf32; bf16: autocast, as train.amp=true); --only fused
skips the sequential reference (benchmarks/gpu_check.py compares fused with the splits on
CUDA streams instead); --json writes the rates.

    python benchmarks/fused_throughput.py [--splits 1,3] [--device cpu] [--threads N]
                                          [--steps 5] [--warmup 2] [--batch 128]
                                          [--precision fp32|tf32|bf16] [--only fused] [--json PATH]
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from siqa.data.inputs import SplitData
from siqa.device import configure_numerics, select_device
from siqa.models import MODELS
from siqa.training.fused import FusedSplits
from siqa.training.step import TrainStep, epoch_order

PATCHES = 1024  # per split: 8 batches of 128
NSS_WEIGHT = 25.0
SGD = {"lr": 1e-3, "momentum": 0.9, "weight_decay": 1e-4}


def synthetic_split(seed, device):
    g = torch.Generator().manual_seed(seed)
    return SplitData(left=torch.randn(PATCHES, 1, 32, 32, generator=g),
                     right=torch.randn(PATCHES, 1, 32, 32, generator=g),
                     pair_index=torch.randint(0, 16, (PATCHES,), generator=g),
                     score=torch.rand(16, generator=g) * 60,
                     nss=torch.rand(16, 108, generator=g)).to(device)


def networks(k, device):
    """K networks as split_run builds them, and each one's RNG state after its init."""
    models, generators = [], []
    for r in range(k):
        torch.manual_seed(r)
        models.append(MODELS["bourbia2021"]().to(device).to(memory_format=torch.channels_last))
        generators.append(torch.Generator(device=device))
        generators[-1].manual_seed(1000 + r)
    return models, generators


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batches(datas, batch, t):
    """Round t's batch of every split: a slice of its epoch order (full batches only)."""
    per_epoch = PATCHES // batch
    out = []
    for k, data in enumerate(datas):
        order = epoch_order(PATCHES, k, t // per_epoch).to(data.left.device)
        start = (t % per_epoch) * batch
        out.append(order[start : start + batch])
    return out


def timed(round_fn, datas, args, device):
    for t in range(args.warmup):
        round_fn(batches(datas, args.batch, t))
    sync(device)
    started = time.perf_counter()
    for t in range(args.warmup, args.warmup + args.steps):
        round_fn(batches(datas, args.batch, t))
    sync(device)
    return len(datas) * args.batch * args.steps / (time.perf_counter() - started)


def sequential_rate(k, datas, args, device, amp):
    models, _ = networks(k, device)
    steps = []
    for model in models:
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), **SGD)
        steps.append(TrainStep("eager", model, optimizer, args.batch, NSS_WEIGHT, amp))

    def round_fn(idx):
        for step, data, i in zip(steps, datas, idx):
            step(data, i)

    return timed(round_fn, datas, args, device)


def fused_rate(k, datas, args, device, amp):
    models, generators = networks(k, device)
    fused = FusedSplits(models, generators, optimizer="sgd", nss_weight=NSS_WEIGHT, amp_dtype=amp, **SGD)
    del models  # the fused splits hold their own stacked copies
    return timed(lambda idx: fused.step_round(datas, idx), datas, args, device)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", default="1,3", help="comma-separated K values (default 1,3)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--steps", type=int, default=5, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--batch", type=int, default=128, help="patch pairs per split per step")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16"])
    parser.add_argument("--only", choices=["fused"], help="time the fused splits only")
    parser.add_argument("--json", help="write the rates to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    # train.py's switches: deterministic auto (cuDNN benchmark on CUDA), TF32 as asked
    configure_numerics("auto", {"fp32": False, "tf32": True, "bf16": "auto"}[args.precision], device)
    amp = torch.bfloat16 if args.precision == "bf16" and device.type == "cuda" else None
    print(f"device {device}, {torch.get_num_threads()} CPU thread(s), batch {args.batch} per split, "
          f"{args.precision}, {args.steps} timed rounds after {args.warmup} warm-up, torch {torch.__version__}")
    if hasattr(os, "getloadavg"):
        print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'K':>3} {'sequential pairs/s':>19} {'fused pairs/s':>14} {'fused/sequential':>17}")
    rates = {}
    for k in (int(s) for s in args.splits.split(",")):
        datas = [synthetic_split(100 + r, device) for r in range(k)]
        seq = None if args.only else sequential_rate(k, datas, args, device, amp)
        fus = fused_rate(k, datas, args, device, amp)
        rates[k] = {"sequential": seq, "fused": fus}
        print(f"{k:>3} {seq or float('nan'):>19.1f} {fus:>14.1f} "
              f"{fus / seq if seq else float('nan'):>17.2f}", flush=True)
    if hasattr(os, "getloadavg"):
        print(f"load average after: {os.getloadavg()[0]:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"precision": args.precision, "batch": args.batch,
                                               "device": str(device), "rates": rates}, indent=1))


if __name__ == "__main__":
    main()
