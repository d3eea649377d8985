"""Demo training profiles side by side: which one to make the default of `python train.py`.

Each variant is a set of config overrides; each (variant, seed) is a whole `train.py` run
in its own process (demo build and NSS targets are cached after the first), timed as a
whole. The seed also draws the content split, so the spread over seeds includes the
split-to-split variation of the test set (2 scenes, 62 pairs).

    python benchmarks/demo_profiles.py OUT_DIR [--seeds 0 1 2] [--variants adam_step sgd]
                                               [--epochs-sgd 40] [--threads 0]

Writes OUT_DIR/profiles.json (every run: wall time, best epoch, test metrics, validation
SROCC by epoch), OUT_DIR/profiles.md (median and range per variant) and
OUT_DIR/val_srocc.png (validation SROCC by epoch, one line per variant and seed).
"""
import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from siqa.runfolder import RunFolder  # noqa: E402

# The three departures of the paper's protocol that a short CPU run may need, named.
VARIANTS = {
    # the profile before this comparison: Adam, LR / 10 after epoch 20, contrast normalisation
    "adam_step": ["train.optimizer=adam", "train.lr=0.001", "train.lr_step=20",
                  "train.epochs=28", "patches.normalisation=contrast"],
    # the paper's optimizer (SGD lr 1e-3, momentum 0.9, constant LR), contrast normalisation
    "sgd": ["train.optimizer=sgd", "train.lr=0.001", "train.lr_step=0",
            "patches.normalisation=contrast"],
    # the paper exactly (its own patch normalisation): the reference curve
    "paper": ["train.optimizer=sgd", "train.lr=0.001", "train.lr_step=0",
              "patches.normalisation=reference"],
}


def val_curve(tb_dir: Path) -> dict:
    """Validation SROCC by epoch from the run's TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    if "val/srocc" not in acc.Tags().get("scalars", []):
        return {}
    return {int(e.step): float(e.value) for e in acc.Scalars("val/srocc")}


def run_one(out: Path, variant: str, seed: int, epochs_sgd: int, threads: int) -> dict:
    run_dir = out / "runs" / f"{variant}_seed{seed}"
    tb_dir = out / "tensorboard"
    overrides = list(VARIANTS[variant])
    if not any(o.startswith("train.epochs=") for o in overrides):
        overrides.append(f"train.epochs={epochs_sgd}")
    cmd = [sys.executable, "train.py", f"out_dir={run_dir}", f"train.seed={seed}",
           f"dataset.split_seed={seed}",
           f"tensorboard.dir={tb_dir}", f"train.threads={threads}", *overrides]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        return {"variant": variant, "seed": seed, "error": proc.stderr.strip().splitlines()[-1:]}
    metrics = json.loads(RunFolder(run_dir).single.metrics.read_text())
    return {
        "variant": variant, "seed": seed, "overrides": overrides, "wall_s": round(wall, 1),
        "best_epoch": metrics["best_epoch"], "epochs": metrics["epochs"],
        "test": {k: metrics["test"][k] for k in ("srocc", "plcc", "krocc", "rmse")},
        "val_srocc": val_curve(tb_dir / run_dir.name),
    }


def table(runs) -> str:
    lines = ["| variant | overrides | test SROCC median (range) | test PLCC median (range) "
             "| best epoch | wall time median (range) |",
             "|---|---|---|---|---|---|"]
    for variant in dict.fromkeys(r["variant"] for r in runs):
        ok = [r for r in runs if r["variant"] == variant and "test" in r]
        if not ok:
            lines.append(f"| {variant} | failed | | | | |")
            continue

        def span(values, fmt):
            return (f"{fmt.format(statistics.median(values))} "
                    f"({fmt.format(min(values))} .. {fmt.format(max(values))})")

        lines.append(
            f"| {variant} | `{' '.join(ok[0]['overrides'])}` "
            f"| {span([r['test']['srocc'] for r in ok], '{:.3f}')} "
            f"| {span([r['test']['plcc'] for r in ok], '{:.3f}')} "
            f"| {', '.join(str(r['best_epoch']) for r in ok)} "
            f"| {span([r['wall_s'] / 60 for r in ok], '{:.1f}')} min |")
    return "\n".join(lines) + "\n"


def plot(runs, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    colours = dict(zip(VARIANTS, ("tab:blue", "tab:orange", "tab:grey")))
    for r in runs:
        curve = r.get("val_srocc") or {}
        if curve:
            epochs = sorted(curve)
            ax.plot(epochs, [curve[e] for e in epochs], color=colours.get(r["variant"]),
                    alpha=0.85, lw=1.3, label=f"{r['variant']} (seed {r['seed']})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation SROCC")
    ax.set_title("Demo database: validation SROCC by epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=["adam_step", "sgd"], choices=list(VARIANTS))
    ap.add_argument("--epochs-sgd", type=int, default=40,
                    help="epochs of the SGD variants (the most that fit the 10-minute budget)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads per run (0 = default)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = []
    for seed in args.seeds:
        for variant in args.variants:
            r = run_one(args.out, variant, seed, args.epochs_sgd, args.threads)
            runs.append(r)
            summary = r.get("test") or r.get("error")
            print(f"{variant} seed {seed}: {summary} wall {r.get('wall_s')} s", flush=True)
            (args.out / "profiles.json").write_text(json.dumps(runs, indent=1))
    (args.out / "profiles.md").write_text(table(runs))
    plot(runs, args.out / "val_srocc.png")
    print(table(runs))
    print(f"-> {args.out}/profiles.json, profiles.md, val_srocc.png")


if __name__ == "__main__":
    main()
