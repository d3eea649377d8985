"""Training throughput of K content splits fused (one vmapped network), and its host ops.

The paper's network (bourbia2021, channels_last as train.py builds it), batch 128 patch pairs
per split, synthetic 32x32 patches resident on the device, SGD (lr 1e-3, momentum 0.9,
weight decay 1e-4), NSS weight 25, dropout on. The splits have unequal sizes, as the stored
LIVE-I splits do (splits/live3d_phase1.json: 611 to 639 full batches of 128 and a tail),
scaled down: split k has PARTIAL_BASE + (its LIVE-I full batches - 611) full batches and the
tail of its LIVE-I size, so an epoch has full rounds (every split steps), partial rounds
(splits whose epoch is over sit out) and tail groups, as a LIVE-I epoch has:

    fused       siqa.training.fused.FusedSplits.plan_epoch builds an epoch's index tables on
                the device (before the clock starts); `run_round` runs a round of them
    full        the full rounds, cycled, timed for >= --min-seconds after --warmup rounds
                (--step graph: after at least one pass through them, so that no capture
                is timed)
    partial     the other rounds (some splits inactive, tails), cycled, timed the same way
    sequential  (unless --only fused) K networks, each with its own torch.optim.SGD and
                siqa.training.step.TrainStep (eager), a full round one step of each split

Every timed stretch ends with a synchronize before the clock is read. Rates: patch pairs per
second summed over the stepping splits; `epoch_pairs_per_s` projects a LIVE-I-sized epoch of
K splits (the stored splits' plan at batch 128, repeated for K > 10) from the two rates.
--precision sets train.py's numerics (fp32: TF32 off; tf32; bf16: autocast, as
train.amp=true, CUDA only); --step graph captures the full-size groups as CUDA graphs, as
train.step=auto does on CUDA; --json is rewritten after each K.

--ops counts, with the torch profiler, the aten ops (nested ones included) of one fused
round at each K, full and partial (half of the splits stepping), against one split's eager
training step (TrainStep), and the ops a CPU convolution kernel runs inside itself (its loop
over the K groups: one kernel on a GPU) apart. It uses `plan_epoch` / `run_round` where
FusedSplits has them, else `step_round` (the code before them), so that the same script
counts both.

    python benchmarks/fused_throughput.py [--splits 1,3] [--device cpu] [--threads N]
        [--min-seconds 2] [--warmup 3] [--batch 128] [--precision fp32|tf32|bf16]
        [--step eager|graph] [--only fused] [--json PATH] [--ops]
"""
import argparse
import collections
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from siqa.config import load_config  # noqa: E402
from siqa.data.inputs import SplitData  # noqa: E402
from siqa.device import configure_numerics, select_device  # noqa: E402
from siqa.models import MODELS  # noqa: E402
from siqa.settings import Settings  # noqa: E402
from siqa.training.fused import FusedSplits  # noqa: E402
from siqa.training.step import TrainStep, epoch_order, make_optimizer  # noqa: E402

# the paper's recipe as train.py resolves it (SGD, lr 1e-3, momentum 0.9, weight decay 1e-4, NSS weight 25)
PAPER = load_config(overrides=["model.name=bourbia2021", "train.profile=paper"])
NSS_WEIGHT = Settings(PAPER).train.nss_weight
PARTIAL_BASE = 4  # full batches every split has (the LIVE-I splits' 611, scaled down)
LIVE1_SPLITS = ROOT / "splits" / "live3d_phase1.json"
LIVE1_PATCHES_PER_PAIR, LIVE1_BATCH = 364, 128
CONVOLUTIONS = ("aten::_convolution", "aten::convolution_backward")


def live1_train_patches():
    """The training patches of each stored LIVE-I split."""
    doc = json.loads(LIVE1_SPLITS.read_text())
    return [LIVE1_PATCHES_PER_PAIR * sum(doc["scenes"][s]["pairs"] for s in split["train"])
            for split in doc["splits"]]


def split_sizes(k, batch):
    """Patches of K scaled-down splits: the LIVE-I splits' spread of full batches of 128 and
    their tails (as fractions of a batch) at `batch` (the stored splits repeated for K > 10)."""
    live = [live1_train_patches()[r % 10] for r in range(k)]
    fewest = min(n // LIVE1_BATCH for n in live)
    return [(PARTIAL_BASE + n // LIVE1_BATCH - fewest) * batch + (n % LIVE1_BATCH) * batch // LIVE1_BATCH
            for n in live]


def synthetic_split(n, seed, device):
    g = torch.Generator().manual_seed(seed)
    return SplitData(left=torch.randn(n, 1, 32, 32, generator=g), right=torch.randn(n, 1, 32, 32, generator=g),
                     pair_index=torch.randint(0, 16, (n,), generator=g), score=torch.rand(16, generator=g) * 60,
                     nss=torch.rand(16, 108, generator=g)).to(device)


def networks(k, device):
    """K networks as split_run builds them, and a generator per split."""
    models, generators = [], []
    for r in range(k):
        torch.manual_seed(r)
        models.append(MODELS["bourbia2021"]().to(device).to(memory_format=torch.channels_last))
        generators.append(torch.Generator(device=device).manual_seed(1000 + r))
    return models, generators


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fns, warmup, min_seconds, device):
    """Call fns[i % len(fns)] for `warmup` calls, then until >= min_seconds have passed (at
    least one call; each time round fns a synchronize, so that the clock is read on finished
    work); returns (calls, seconds), the last reading after a synchronize."""
    for i in range(warmup):
        fns[i % len(fns)]()
    sync(device)
    calls, started = 0, time.perf_counter()
    while calls < 1 or time.perf_counter() - started < min_seconds:
        fns[calls % len(fns)]()
        calls += 1
        if calls % len(fns) == 0:
            sync(device)
    sync(device)
    return calls, time.perf_counter() - started


def fused_splits(k, device, amp, step="eager"):
    models, generators = networks(k, device)
    extra = {"step": step} if step != "eager" else {}
    return FusedSplits.from_config(models, generators, PAPER, amp_dtype=amp, **extra)


def live1_rounds(k, batch):
    """(full rounds, partial rounds) of a LIVE-I-sized epoch of K splits at `batch`."""
    sizes = [live1_train_patches()[r % 10] for r in range(k)]
    fewest, most = min(n // batch for n in sizes), max(-(-n // batch) for n in sizes)
    return fewest, most - fewest, sum(sizes)


def fused_rates(k, args, device, amp):
    """The full and partial rounds of one epoch, each timed for >= min_seconds."""
    sizes = split_sizes(k, args.batch)
    datas = [synthetic_split(n, 100 + r, device) for r, n in enumerate(sizes)]
    fused = fused_splits(k, device, amp, args.step)
    datas = fused.concatenate(datas)
    orders = [epoch_order(n, r, 0).to(device) for r, n in enumerate(sizes)]
    rounds = fused.plan_epoch(datas, orders, args.batch)
    full = [g for g in rounds if len(g) == 1 and len(g[0].splits) == k and g[0].size == args.batch]
    partial = [g for g in rounds if g not in full]
    out = {"sizes": sizes}
    for name, chosen in (("full", full), ("partial", partial)):
        if not chosen:
            continue
        # captured: every round once before the clock (a set of stepping splits is captured
        # when first met)
        warmup = max(args.warmup, len(chosen)) if args.step == "graph" else args.warmup
        calls, seconds = timed([lambda groups=groups: fused.run_round(groups) for groups in chosen],
                               warmup, args.min_seconds, device)
        pairs = sum(g.size * len(g.splits) for i in range(calls)
                    for g in chosen[i % len(chosen)])
        out[name] = {"rounds": calls, "seconds": seconds, "round_s": seconds / calls, "pairs_per_s": pairs / seconds}
    n_full, n_partial, patches = live1_rounds(k, args.batch)
    if "full" in out and "partial" in out:
        epoch_s = n_full * out["full"]["round_s"] + n_partial * out["partial"]["round_s"]
        out["epoch_pairs_per_s"] = patches / epoch_s
    return out


def sequential_rate(k, args, device, amp):
    models, _ = networks(k, device)
    datas = [synthetic_split(PARTIAL_BASE * args.batch, 100 + r, device) for r in range(k)]
    steps = []
    for model in models:
        model.train()
        optimizer = make_optimizer(model, PAPER)
        steps.append(TrainStep("eager", model, optimizer, args.batch, NSS_WEIGHT, amp))
    batches = [[epoch_order(len(d.left), r, 0).to(device)[t * args.batch : (t + 1) * args.batch]
                for r, d in enumerate(datas)] for t in range(PARTIAL_BASE)]

    def round_fn(idx):
        for step, data, i in zip(steps, datas, idx):
            step(data, i)

    calls, seconds = timed([lambda idx=idx: round_fn(idx) for idx in batches], args.warmup, args.min_seconds,
                           device)
    return {"rounds": calls, "seconds": seconds, "pairs_per_s": k * args.batch * calls / seconds}


# ----------------------------------------------------------------------------- --ops
def count_ops(fn):
    """(aten ops of fn() outside convolution kernels, those inside them), nested included."""
    def in_convolution(e):
        while e.cpu_parent is not None:
            e = e.cpu_parent
            if e.name in CONVOLUTIONS:
                return True
        return False

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    inside = collections.Counter(in_convolution(e) for e in prof.events() if e.name.startswith("aten::"))
    return inside[False], inside[True]


def round_of(fused, datas, batches):
    """One round's function: run_round of prepared tables, or step_round where FusedSplits
    predates them."""
    if hasattr(fused, "run_round"):
        orders = [b if b is not None else torch.zeros(0, dtype=torch.int64) for b in batches]
        groups = fused.plan_epoch(datas, orders, max(len(o) for o in orders))[0]
        return lambda: fused.run_round(groups)
    return lambda: fused.step_round(datas, batches)


def ops_table(ks, args, device):
    torch.manual_seed(0)
    data = synthetic_split(args.batch, 100, device)
    model = networks(1, device)[0][0]
    step = TrainStep("eager", model, make_optimizer(model, PAPER), args.batch, NSS_WEIGHT)
    idx = epoch_order(args.batch, 0, 0)
    step(data, idx)
    eager = count_ops(lambda: step(data, idx))
    print(f"one split's eager step: {eager[0]} aten ops (+{eager[1]} inside convolution kernels)")
    print(f"{'K':>3} {'round':>8} {'aten ops':>9} {'in conv':>8} {'/ eager':>8}")
    rows = {"eager": {"ops": eager[0], "in_convolution": eager[1]}}
    for k in ks:
        datas = [synthetic_split(args.batch, 100 + r, device) for r in range(k)]
        fused = fused_splits(k, device, None)
        full = [epoch_order(args.batch, r, 0) for r in range(k)]
        half = [b if r % 2 == 0 else None for r, b in enumerate(full)]
        for name, batches in (("full", full), ("partial", half)):
            if name == "partial" and k == 1:
                continue
            fn = round_of(fused, datas, batches)
            fn()
            ops = count_ops(fn)
            rows[f"{k} {name}"] = {"ops": ops[0], "in_convolution": ops[1], "ratio": ops[0] / eager[0]}
            print(f"{k:>3} {name:>8} {ops[0]:>9} {ops[1]:>8} {ops[0] / eager[0]:>8.2f}", flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", default="1,3", help="comma-separated K values (default 1,3)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--min-seconds", type=float, default=2.0, help="timed seconds per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    parser.add_argument("--batch", type=int, default=128, help="patch pairs per split per step")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16"])
    parser.add_argument("--step", default="eager", choices=["eager", "graph"])
    parser.add_argument("--only", choices=["fused"], help="time the fused splits only")
    parser.add_argument("--json", help="write the rates to this JSON file (after each K)")
    parser.add_argument("--ops", action="store_true", help="count aten ops per round instead of timing")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    ks = [int(s) for s in args.splits.split(",")]
    if args.ops:
        rows = ops_table(ks, args, device)
        if args.json:
            Path(args.json).write_text(json.dumps({"batch": args.batch, "ops": rows}, indent=1))
        return
    # train.py's switches: deterministic auto (cuDNN benchmark on CUDA), TF32 as asked
    configure_numerics("auto", {"fp32": False, "tf32": True, "bf16": "auto"}[args.precision], device)
    amp = torch.bfloat16 if args.precision == "bf16" and device.type == "cuda" else None
    print(f"device {device}, {torch.get_num_threads()} CPU thread(s), batch {args.batch} per split, "
          f"{args.precision}, step {args.step}, >= {args.min_seconds} s timed per variant after "
          f"{args.warmup} warm-up rounds, torch {torch.__version__}")
    if hasattr(os, "getloadavg"):
        print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'K':>3} {'sequential':>11} {'fused full':>11} {'partial':>9} {'epoch':>9}  (patch pairs/s)")
    rates = {}
    for k in ks:
        seq = None if args.only else sequential_rate(k, args, device, amp)
        fus = fused_rates(k, args, device, amp)
        rates[k] = {"sequential": seq and seq["pairs_per_s"], "fused": fus["full"]["pairs_per_s"],
                    "fused_partial": fus.get("partial", {}).get("pairs_per_s"),
                    "fused_epoch": fus.get("epoch_pairs_per_s"), "detail": {"fused": fus, "sequential": seq}}
        r = rates[k]
        print(f"{k:>3} {r['sequential'] or float('nan'):>11.1f} {r['fused']:>11.1f} "
              f"{r['fused_partial'] or float('nan'):>9.1f} {r['fused_epoch'] or float('nan'):>9.1f}", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps({"precision": args.precision, "step": args.step,
                                                   "batch": args.batch, "device": str(device),
                                                   "rates": rates}, indent=1))
    if hasattr(os, "getloadavg"):
        print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
