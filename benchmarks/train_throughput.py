"""Training throughput: the project's training path vs a re-creation of the original loop.

Synthetic LIVE-Phase-I-sized data: 365 pairs x 364 patch positions (640x360 views),
batch 128, full training steps (forward, joint loss, backward, SGD step).

(a) project: patches resident on the device as one tensor per view, index-sliced batches of
    a seeded permutation, one forward pass per step (siqa.training.step.epoch_steps, as train.py runs it);
(b) original: a Dataset holding one tensor per patch, DataLoader(batch_size=128,
    shuffle=True, num_workers=0) with default collation, two forward passes per step.

Each variant runs in its own process (so its peak memory is its own); both run in this
one invocation and the ratio is printed. On CPU an epoch is projected from the measured
steps (a full CPU epoch takes many minutes); with --full-epoch it is run.

The project path runs as `train.step` does (--step eager | compile | graph) at a precision:
fp32 (TF32 off), tf32 (TF32 matmuls and convolutions, CUDA), bf16 (bfloat16 autocast, TF32
as train.py leaves it, i.e. on for CUDA; the quality output and the losses in float32, see
siqa.training.step.joint_loss). The process-wide switches are those train.py sets, from
siqa.device.configure_numerics with train.deterministic=auto: on CUDA cuDNN benchmark on
(it picks the fastest convolution kernels for the static patch shape), on the CPU the
deterministic kernels. The first steps (--warmup) include compiling or capturing; their time
is printed apart. The timed part runs chunks of --steps steps until it has run for at least
--min-seconds (default 2 s on CUDA: a GPU needs a moment to leave its idle clock, and ~60 ms
of work would mostly time that; 0 on the CPU, where --steps alone keeps a smoke test short). --json PATH writes
the project's figures (patch_pairs_per_s, step, precision, device, ...); with --json the
original loop is not run unless --original is given (benchmarks/gpu_check.py runs one
variant per call this way).

--model NAME times another network of siqa.models.MODELS (default bourbia2021, the paper's;
`all`: every network, each in its own process, one row each in one table) through the same
step train.py runs: siqa.training.step.TrainStep / joint_loss with the network's own spec, on
synthetic patches of its own size and channels (32x32 grey for bourbia2021, 32x32 RGB for
multiscore and stereoqanet, 256x256 RGB crops for padnet) and targets of its own outputs
(per-view scores for multiscore; NSS targets for bourbia2021 only). Optimizer, learning rate,
weight decay and NSS weight: the network's paper recipe as train.py resolves it (SGD with NSS
weight 25 for the paper's network, Adam over its own parameter groups for padnet; the timings
do not depend on the rates). Batch 128 patch pairs, except padnet:
4 crops a step on the CPU (a 256x256 RGB crop costs over 100 times a 32x32 patch; --batch sets
it). Only the timed steps' patches are held for the other networks; the original loop,
validation and epoch projections are the paper's network's alone.

With --splits N, N models train at once on the same patches, a step of each in turn, as
train.concurrent_splits=true runs the N content splits (siqa.training.concurrent: on CUDA a stream
and a generator state per split); the project's rate is then the sum over the N splits.

    python benchmarks/train_throughput.py [--model NAME|all] [--device cpu|cuda] [--step eager|compile|graph]
        [--precision fp32|tf32|bf16] [--steps 20] [--min-seconds S] [--splits 1] [--json PATH]
        [--batch N] [--full-epoch]
"""
import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PAIRS, PATCHES_PER_PAIR, VAL_PAIRS, BATCH = 365, 364, 73, 128
DEFAULT_MODEL = "bourbia2021"
CPU_BATCH = {"padnet": 4}  # 256x256 crops: a small batch keeps a CPU step near a second


def synthetic(num_pairs, device, dtype, spec=None, per_pair=PATCHES_PER_PAIR, nss_dim=108):
    """num_pairs pairs of `per_pair` patches each, of the spec's size and channels (the
    paper's 1x32x32 without a spec), with the targets of the spec's outputs."""
    import torch

    from siqa.data.inputs import SplitData

    channels, size = (spec.channels, spec.patch) if spec else (1, 32)
    g = torch.Generator().manual_seed(0)
    n = num_pairs * per_pair
    return SplitData(
        left=(0.1 * torch.randn(n, channels, size, size, generator=g)).to(dtype),
        right=(0.1 * torch.randn(n, channels, size, size, generator=g)).to(dtype),
        pair_index=torch.arange(num_pairs).repeat_interleave(per_pair),
        score=60 * torch.rand(num_pairs, generator=g),
        nss=torch.rand(num_pairs, nss_dim, generator=g),
        views=60 * torch.rand(num_pairs, 2, generator=g) if spec and spec.needs_view_scores else None,
    ).to(device)


def batch_of(args, device):
    """--batch, else 128 patch pairs (padnet: 4 crops on the CPU)."""
    if args.batch:
        return args.batch
    return CPU_BATCH.get(args.model, BATCH) if device.type == "cpu" else BATCH


def sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the benchmark's GPU, not the current one


def set_numerics(precision, device):
    """The switches train.py sets for this precision (train.tf32=false for fp32, true for tf32,
    auto for bf16, i.e. train.amp=true with the default TF32), with train.deterministic=auto;
    returns (the autocast dtype, what was set)."""
    import torch

    from siqa.device import configure_numerics

    tf32 = {"fp32": False, "tf32": True, "bf16": "auto"}[precision]
    numerics = configure_numerics("auto", tf32, device)
    numerics["cudnn_benchmark"] = torch.backends.cudnn.benchmark
    return (torch.bfloat16 if precision == "bf16" else None), numerics


def timed_chunks(epoch, order, first, steps, min_seconds, device, batch=BATCH):
    """Run chunks of `steps` steps of `order`, from its step `first` on (wrapping round to
    its start), until at least `steps` steps and `min_seconds` have passed; returns (steps,
    seconds). Each chunk ends with its losses read back, so the clock stops on finished work."""
    batches = len(order) // batch
    if batches < steps:
        raise SystemExit(f"{batches} batches of data, fewer than --steps {steps}: raise --pairs")
    done, t0 = 0, time.perf_counter()
    while done < steps or time.perf_counter() - t0 < min_seconds:
        start = (first + done) % (batches - steps + 1)
        epoch(order[batch * start : batch * (start + steps)])
        done += steps
    sync(device)
    return done, time.perf_counter() - t0


def run_project(args, device):
    import torch

    from siqa.config import load_config
    from siqa.models import MODELS, create_model
    from siqa.scoring import predict_pairs
    from siqa.settings import Settings
    from siqa.training.concurrent import finish, interleave
    from siqa.training.step import TrainStep, epoch_order, epoch_steps, make_optimizer

    torch.manual_seed(0)
    paper = args.model == DEFAULT_MODEL
    spec, batch = MODELS[args.model].spec, batch_of(args, device)
    # the network's paper recipe as train.py resolves it (optimizer, lr, weight decay, NSS weight)
    recipe = load_config(overrides=[f"model.name={args.model}", "train.profile=paper"])
    nss_weight = Settings(recipe).train.nss_weight
    dtype = getattr(torch, args.patch_dtype)
    if paper:  # a LIVE-Phase-I-sized database (--pairs), shared by the splits
        data = synthetic(args.pairs, device, dtype)
    else:  # the timed steps' patches, one pair each
        data = synthetic(batch * (args.warmup + args.steps), device, dtype, spec, 1,
                         108 if spec.predicts_nss else 0)
    amp, numerics = set_numerics(args.precision, device)
    splits = []  # (model, optimizer, step) of each split trained at once
    for _ in range(args.splits):
        model = create_model(args.model).to(device).to(memory_format=torch.channels_last)  # train.channels_last
        opt = make_optimizer(model, recipe)  # as train.py builds it (train.optimizer, train.lr)
        splits.append((model, opt, TrainStep(args.step, model, opt, batch, nss_weight, amp,
                                             concurrent=args.splits > 1)))  # as train.py builds them
    model, opt, step = splits[0]

    def epoch(order):  # every split one pass over `order`, a step of each in turn
        runs = [epoch_steps(m, o, data, order, batch, nss_weight, amp, step=s) for m, o, s in splits]
        if len(runs) == 1:
            finish(runs[0])  # as train.py runs a split alone
        else:
            interleave(runs, device)

    order = epoch_order(data.num_patches, 0, 0).to(device)
    t0 = time.perf_counter()
    epoch(order[: batch * args.warmup])  # compiles or captures on the first step
    sync(device)
    warmup_s = time.perf_counter() - t0
    steps, seconds = timed_chunks(epoch, order, args.warmup, args.steps, args.min_seconds, device, batch)
    rate = args.splits * steps * batch / seconds  # all splits together
    timing = {"timed_steps": steps, "timed_s": seconds, "batch": batch,
              "ms_per_step": 1000 * seconds / steps, "model": args.model,
              "input": f"{spec.channels}x{spec.patch}x{spec.patch}", **numerics}
    val_s = None
    if not paper:
        return rate, None, None, warmup_s, timing
    if args.val_pairs:
        val = synthetic(args.val_pairs, device, getattr(torch, args.patch_dtype))
        predict_pairs(model, val, amp_dtype=amp, scorer=step.scorer)
        sync(device)
        t0 = time.perf_counter()
        predict_pairs(model, val, amp_dtype=amp, scorer=step.scorer)
        sync(device)
        val_s = (time.perf_counter() - t0) * VAL_PAIRS / args.val_pairs  # as for 73 pairs
    epoch_s = None
    if args.full_epoch:
        t0 = time.perf_counter()
        epoch(order)
        if args.val_pairs:
            predict_pairs(model, val, amp_dtype=amp, scorer=step.scorer)
        sync(device)
        epoch_s = time.perf_counter() - t0
    return rate, val_s, epoch_s, warmup_s, timing


def run_original(args, device):
    import torch
    from torch.utils.data import DataLoader, Dataset

    from siqa.models.bourbia2021 import MultiTaskSIQA

    class PatchList(Dataset):  # one tensor per patch, as the original kept them
        def __init__(self, data):
            self.items = [(data.left[i].float(), data.right[i].float(),
                           data.score[data.pair_index[i]], data.nss[data.pair_index[i]])
                          for i in range(data.num_patches)]

        def __len__(self):
            return len(self.items)

        def __getitem__(self, i):
            return self.items[i]

    torch.manual_seed(0)
    data = synthetic(args.pairs, torch.device("cpu"), torch.float32)
    loader = DataLoader(PatchList(data), batch_size=BATCH, shuffle=True, num_workers=0)
    model = MultiTaskSIQA().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    l1 = torch.nn.L1Loss()
    model.train()
    it = iter(loader)

    def step():
        left, right, score, nss = (t.to(device) for t in next(it))
        quality = model(left, right)[0]  # first forward: the quality output
        features = model(left, right)[1]  # second forward: the NSS output
        loss = l1(quality, score) + 25.0 * l1(features, nss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()  # the original logged every step

    for _ in range(args.warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    return BATCH * args.steps / (time.perf_counter() - t0), None, None, None, {}


def measure(args):
    """One variant of one network, in this process: the figures as a dict (a table row)."""
    import torch

    from siqa.device import select_device

    device = select_device(args.device)  # cuda -> cuda:N, made current as train.py does
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if args.threads:
        torch.set_num_threads(args.threads)
    rate, val_s, epoch_s, warmup_s, timing = (run_project if args.variant == "project"
                                      else run_original)(args, device)
    return {"rate": rate, "val_s": val_s, "epoch_s": epoch_s, "warmup_s": warmup_s,
            "peak_host_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_gpu_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "threads": torch.get_num_threads(), **timing}


def measure_models(models, **settings):
    """The project's step of each network of `models`, in this process (the test's way in;
    the script runs each network in its own process): one row per network. `settings` are
    the command line's options by their argparse names (steps=1, pairs=1, ...)."""
    rows = []
    for name in models:
        args = make_parser().parse_args([])
        vars(args).update(settings, model=name, variant="project")
        if args.min_seconds is None:
            args.min_seconds = 0.0
        rows.append(measure(args))
    return rows


def child(args):
    print("RESULT " + json.dumps(measure(args)))


def run_child(variant, model):
    """This script with `--variant VARIANT --model MODEL` in its own process: its figures."""
    argv = [a for a in sys.argv[1:]]
    if "--model" in argv:  # --model all -> one network per process
        i = argv.index("--model")
        del argv[i : i + 2]
    argv = [a for a in argv if not a.startswith("--model=")]
    cmd = [sys.executable, __file__, "--variant", variant, "--model", model] + argv
    proc = subprocess.run(cmd, capture_output=True, text=True)
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode or not line:
        sys.exit(f"{variant} ({model}) failed:\n{proc.stderr[-2000:]}")
    return json.loads(line[0][7:])


def print_models(rows, args):
    """One row per network: its input, batch, rate and step time."""
    r = rows[0]
    print(f"device: {r['device']} ({r['threads']} threads), {args.precision}, step {args.step}, "
          f"patches stored as {args.patch_dtype}; {r['timed_steps']} timed steps after "
          f"{args.warmup} warm-up steps; each network in its own process")
    print(f"{'network':<13}{'input':>11}{'batch':>7}{'patch pairs/s':>15}{'ms/step':>10}{'peak host MiB':>15}")
    for r in rows:
        mark = "*" if r["model"] in CPU_BATCH and r["batch"] != BATCH else ""
        print(f"{r['model'] + mark:<13}{r['input']:>11}{r['batch']:>7}{r['rate']:>15.1f}"
              f"{r['ms_per_step']:>10.1f}{r['peak_host_mib']:>15.0f}")
    if any(r["model"] in CPU_BATCH and r["batch"] != BATCH for r in rows):
        print("* a small batch of 256x256 RGB crops (a crop is over 100 times the work of a 32x32 "
              "patch): its patch pairs/s are crop pairs/s")


def make_parser():
    from siqa.models import MODELS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, choices=[*MODELS, "all"],
                        help="the network timed (siqa.models.MODELS); all = every one, one row each")
    parser.add_argument("--batch", type=int, default=0,
                        help="patch pairs a step (0: 128; padnet 4 on the CPU)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--step", default="eager", choices=["eager", "compile", "graph"],
                        help="how the project's step runs (train.step)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16"])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps (compile/capture)")
    parser.add_argument("--min-seconds", type=float, default=None,
                        help="time at least this long after the warm-up (default: 2 on CUDA, 0 on CPU)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--splits", type=int, default=1,
                        help="models trained at once, a step of each in turn (train.concurrent_splits);"
                             " the rate is their sum")
    parser.add_argument("--pairs", type=int, default=PAIRS,
                        help="synthetic training pairs held (364 patch pairs each; a smoke test needs "
                             "(warmup + steps) x 128 patches); epochs are projected for 365")
    parser.add_argument("--val-pairs", type=int, default=VAL_PAIRS,
                        help="pairs scored to time validation (0 = skip; figures scaled to 73)")
    parser.add_argument("--json", help="write the project's figures to this JSON file")
    parser.add_argument("--original", action=argparse.BooleanOptionalAction, default=None,
                        help="also time the original loop (default: yes, unless --json)")
    parser.add_argument("--amp", action="store_true", help=argparse.SUPPRESS)  # = --precision bf16
    parser.add_argument("--patch-dtype", default="float32", choices=["float32", "float16"])
    parser.add_argument("--full-epoch", action="store_true", help="also time one whole epoch")
    parser.add_argument("--variant", choices=["project", "original"], help=argparse.SUPPRESS)
    return parser


def main():
    from siqa.models import MODELS

    args = make_parser().parse_args()
    if args.amp:
        args.precision = "bf16"
    if args.min_seconds is None:
        args.min_seconds = 2.0 if args.device.startswith("cuda") else 0.0
    if args.step == "graph" and not args.device.startswith("cuda"):
        sys.exit("--step graph needs --device cuda (CUDA graphs)")
    if args.variant:
        return child(args)
    if args.model != DEFAULT_MODEL:  # another network, or every one: the table of rates
        rows = [run_child("project", name) for name in (MODELS if args.model == "all" else [args.model])]
        print_models(rows, args)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
        return
    results = {}
    compare = args.original if args.original is not None else args.json is None
    for variant in ("project", "original") if compare else ("project",):
        results[variant] = run_child(variant, DEFAULT_MODEL)
    p = results["project"]
    print(f"device: {p['device']} ({p['threads']} threads), batch {p['batch']}, {args.precision}, "
          f"step {args.step}, patches stored as {args.patch_dtype}"
          + (f", {args.splits} splits at once (rates summed)" if args.splits > 1 else ""))
    print(f"timed: {p['timed_steps']} steps in {p['timed_s']:.2f} s after the warm-up; cuDNN benchmark "
          f"{'on' if p['cudnn_benchmark'] else 'off'}, TF32 {'on' if p['tf32'] else 'off'}, "
          f"deterministic {'on' if p['deterministic'] else 'off'}")
    print(f"{'variant':<10}{'patch pairs/s':>16}{'ms/step':>10}{'peak host MiB':>16}{'peak GPU MiB':>14}")
    for name, r in results.items():
        gpu = "-" if r["peak_gpu_mib"] is None else f"{r['peak_gpu_mib']:.0f}"
        ms = 1000 * r.get('batch', BATCH) / r['rate']
        print(f"{name:<10}{r['rate']:>16.1f}{ms:>10.1f}{r['peak_host_mib']:>16.0f}{gpu:>14}")
    if "original" in results:
        print(f"ratio project / original: {p['rate'] / results['original']['rate']:.2f}x")
    print(f"first {args.warmup} steps (compile / capture included): {p['warmup_s']:.1f} s")
    n = PAIRS * PATCHES_PER_PAIR
    val_s = p["val_s"] or 0.0
    epoch = n / p["rate"] + val_s
    if p["val_s"] is not None:
        print(f"validation scoring of {VAL_PAIRS} pairs: {val_s:.2f} s")
    print(f"one epoch ({n} patch pairs + validation): projected {epoch:.1f} s"
          + (f", measured {p['epoch_s']:.1f} s" if p["epoch_s"] else ""))
    per_epoch = p["epoch_s"] or epoch
    print(f"paper protocol (500 epochs, validation every epoch): {500 * per_epoch / 60:.1f} min")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "patch_pairs_per_s": p["rate"], "step": args.step, "precision": args.precision,
            "device": args.device, "device_name": p["device"], "threads": p["threads"],
            "batch": p["batch"], "steps": args.steps, "splits": args.splits, "warmup_s": p["warmup_s"],
            "timed_steps": p["timed_steps"], "timed_s": p["timed_s"], "min_seconds": args.min_seconds,
            "numerics": {k: p[k] for k in ("deterministic", "tf32", "cudnn_benchmark")},
            "val_patch_pairs_per_s": VAL_PAIRS * PATCHES_PER_PAIR / val_s if val_s else None,
            "epoch_s_projected": epoch, "peak_gpu_mib": p["peak_gpu_mib"],
            "original_patch_pairs_per_s": results.get("original", {}).get("rate")}, indent=1) + "\n")


if __name__ == "__main__":
    main()
