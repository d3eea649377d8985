"""Checkpoint sizes on disk: best.pt and last.pt of each network with each optimizer, and
what fills them.

    python benchmarks/checkpoint_sizes.py [--pairs 104]

For each network and optimizer (SGD with momentum, Adam; the profiles whose recipe uses it are
named beside it), the network is built as a run builds it (siqa.build.build_model), one
optimizer step is taken on zero gradients (so that the optimizer holds its state: SGD one
momentum buffer per weight, Adam two moments), and the two states a run writes are saved with
siqa.checkpoint.save_checkpoint: best.pt (weights, epoch, config, split names and pair hashes
of a `--pairs` database, ...) and last.pt (the same, plus optimizer, scheduler and RNG
states). The size does not depend on the weights' values or on the database's images, only on
the network, the optimizer and (by a few kB) the number of pairs. Prints one line per network
and optimizer, then a table of where the bytes are.
"""
import argparse
import hashlib
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from siqa.build import build_model  # noqa: E402
from siqa.checkpoint import rng_state, save_checkpoint, serialize_torch  # noqa: E402
from siqa.config import load_config  # noqa: E402
from siqa.models import list_models  # noqa: E402
from siqa.runfolder import SplitFolder  # noqa: E402
from siqa.settings import Settings  # noqa: E402
from siqa.training.step import make_optimizer  # noqa: E402

MB = 1e6


def split_of(pairs):
    """Names and content hashes of a 60/20/20 split of `pairs` pairs, as a checkpoint holds them."""
    cut = [round(0.6 * pairs), round(0.8 * pairs)]
    names = [f"scene{i // 6:02d}/pair_{i:04d}_l.png|scene{i // 6:02d}/pair_{i:04d}_r.png" for i in range(pairs)]
    parts = {"train": names[:cut[0]], "val": names[cut[0]:cut[1]], "test": names[cut[1]:]}
    hashes = {k: [hashlib.sha256(n.encode()).hexdigest() for n in v] for k, v in parts.items()}
    return parts, hashes


def profiles_using(network, optimizer) -> str:
    """The profiles whose recipe of `network` trains with `optimizer` ("" if none)."""
    used = [profile for profile in ("paper", "short")
            if Settings(load_config(overrides=[f"model.name={network}", f"train.profile={profile}",
                                               "dataset.name=csv"])).train.optimizer == optimizer]
    return ", ".join(used)


def states(network, optimizer, pairs):
    """(best.pt state, last.pt state) of `network` trained with `optimizer`."""
    cfg = load_config(overrides=[f"model.name={network}", f"train.optimizer={optimizer}",
                                 "train.profile=paper", "dataset.name=csv"])
    torch.manual_seed(0)
    model = build_model(cfg, torch.device("cpu"))
    optimizer = make_optimizer(model, cfg)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # the optimizer's state now exists, as after any training step
    names, hashes = split_of(pairs)
    best = {"model": model.state_dict(), "epoch": 1, "best": {"epoch": 1, "val": {"srocc": 0.5}},
            "config": cfg, "split": names, "pair_sha256": hashes,
            "database": {"name": "csv", "higher_is_better": False, "score_min": 0.0,
                         "score_max": 80.0}, "resumes": []}
    last = {**best, "optimizer": optimizer.state_dict(), "scheduler": None, "rng": [rng_state()]}
    return cfg, best, last


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--pairs", type=int, default=104, help="pairs of the database (split names)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        split = SplitFolder(tmp)  # the two checkpoints as a split's folder holds them
        for network in list_models():
            for optimizer in ("sgd", "adam"):
                cfg, best, last = states(network, optimizer, args.pairs)
                for path, state in ((split.best, best), (split.last, last)):
                    save_checkpoint(path, state)
                best_size, last_size = split.best.stat().st_size, split.last.stat().st_size
                parts = {key: len(serialize_torch(value)) for key, value in last.items()}
                rest = last_size - parts["model"] - parts["optimizer"]
                rows.append((network, optimizer, profiles_using(network, optimizer), best_size / MB,
                             last_size / MB, parts["model"] / MB, parts["optimizer"] / MB,
                             rest / 1e3))
                print(f"{network} {optimizer}: best.pt {best_size / MB:.1f} MB, last.pt "
                      f"{last_size / MB:.1f} MB", flush=True)
    print(f"\n| network | optimizer | its recipe in | best.pt (MB) | last.pt (MB) | of which weights | "
          f"optimizer state | everything else (kB, {args.pairs} pairs) |")
    print("|---|---|---|---|---|---|---|---|")
    for network, opt, profiles, best, last, weights, optim, rest in rows:
        print(f"| `{network}` | {opt} | {profiles or '-'} | {best:.1f} | {last:.1f} | {weights:.1f} | "
              f"{optim:.1f} | {rest:.0f} |")


if __name__ == "__main__":
    main()
