"""python -m siqa.nss: compute (or --check) the cached NSS targets of the pairs in a CSV."""
import argparse
import csv
import io
import sys
from pathlib import Path

import numpy as np

from siqa.errors import UserError, counted, examples, run_cli
from siqa.files import atomic_write
from siqa.imageio import check_image
from siqa.settings import setting_choices

# from the declaration, as siqa.nss.features reads them (which would load torch for --help)
MARGINALS = setting_choices("nss.marginal")
PREPROCESS = setting_choices("nss.preprocess")
PARAMETERS = ("a_R", "scale_R", "Sigma_RR", "Sigma_RL", "Sigma_LR", "Sigma_LL")


def read_pairs_csv(path):
    """[(left, right or None)] from a CSV with columns `left,right` or `sbs` (paths relative
    to the CSV's folder)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"pairs CSV not found: {path}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = {(c or "").strip() for c in reader.fieldnames or ()}
            reader.fieldnames = [(c or "").strip() for c in reader.fieldnames or ()]
            if {"left", "right"} <= fields:
                columns = ("left", "right")
            elif "sbs" in fields:
                columns = ("sbs",)
            else:
                raise UserError(f"{path}: needs columns 'left,right' or 'sbs' "
                                f"(found: {', '.join(sorted(fields)) or 'none'})")
            pairs = []
            for line, row in enumerate(reader, start=2):
                values = [(row.get(c) or "").strip() for c in columns]
                if not all(values):
                    raise UserError(f"{path} line {line}: empty {' or '.join(columns)} value")
                paths = [str(path.parent / v) for v in values]
                pairs.append((paths[0], paths[1] if len(paths) == 2 else None))
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not a UTF-8 text file (byte {err.start}: {err.reason}); "
                        "save it as UTF-8 CSV") from None
    except csv.Error as err:
        raise UserError(f"{path}: not a valid CSV file ({err})") from None
    if not pairs:
        raise UserError(f"{path}: no pairs listed")
    return pairs


def check_files(pairs, source, min_side):
    """UserError listing every file that cannot give NSS targets (missing, empty, not an
    image, truncated, views of different sizes, a side under `min_side`), so that nothing
    is computed or cached for a list with a bad file in it."""
    found, unreadable, mismatched, small = {}, [], [], []
    for left, right in pairs:
        sizes = []
        for f in (left,) if right is None else (left, right):
            if f not in found:
                found[f] = check_image(f)
                if isinstance(found[f], str):
                    unreadable.append(f"{f} ({found[f]})")
            sizes.append(found[f])
        if any(isinstance(x, str) for x in sizes):
            continue
        if right is None:
            view = (sizes[0][0] // 2, sizes[0][1])
        elif sizes[0] != sizes[1]:
            mismatched.append(f"{left} is {sizes[0][0]}x{sizes[0][1]} but {right} is "
                              f"{sizes[1][0]}x{sizes[1][1]}")
            continue
        else:
            view = sizes[0]
        if min(view) < min_side:
            small.append(f"{left} (view {view[0]}x{view[1]})")
    problems = []
    if unreadable:
        problems.append(f"{len(unreadable)} unusable file(s): {examples(unreadable)}")
    if mismatched:
        problems.append(f"{len(mismatched)} pair(s) with left/right views of different sizes: "
                        f"{examples(mismatched)}")
    if small:
        problems.append(f"{len(small)} view(s) with a side under {min_side} pixels (too small "
                        f"for the wavelet levels): {examples(small)}")
    if problems:
        raise UserError(f"{source}: " + "; ".join(problems) + "; correct or remove these entries")


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m siqa.nss",
        description="Compute the 108 NSS targets (docs/method.md#the-nss-targets) of the stereo pairs listed in "
                    "a CSV file into the cache, or --check the cache without computing.")
    p.add_argument("csv", help="CSV with columns left,right (two files per pair) or sbs "
                               "(side-by-side files); paths relative to the CSV")
    p.add_argument("--cache-dir", default="data/cache", help="cache folder (entries under <it>/nss/)")
    p.add_argument("--marginal", default="mle0", choices=MARGINALS,
                   help="Gamma marginal fit: mle0 (default) or scipy_free_loc (original, slow)")
    p.add_argument("--preprocess", default="reference", choices=PREPROCESS,
                   help="standardisation: reference (per column, default) or global")
    p.add_argument("--workers", type=int, default=None,
                   help="processes (default: all CPUs; 0 or 1: this process)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    p.add_argument("--check", action="store_true",
                   help="only report which entries are valid, missing or corrupt (exit 1 if any "
                        "is not valid)")
    p.add_argument("--output", help="also save the (N, 108) targets to this .npy file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    pairs = read_pairs_csv(args.csv)
    from siqa.nss.cache import check_targets, nss_targets
    if args.check:
        summary = check_targets(pairs, args.marginal, args.preprocess, args.cache_dir)
        print(f"{counted(len(pairs), 'pair')}: {summary['valid']} cached, {summary['missing']} missing, "
              f"{summary['corrupt']} corrupt ({args.marginal}, {args.preprocess}, {args.cache_dir})")
        for (left, right), problem in summary["problems"][:20]:
            print(f"  {left}{'' if right is None else ' ' + right}: {problem}")
        return 0 if summary["valid"] == len(pairs) else 1
    from siqa.device import select_device
    from siqa.nss.features import MIN_SIDE

    device = select_device(args.device)  # cuda:N on a GPU, or one line (no GPU, no such index)

    check_files(pairs, f"pairs CSV {args.csv}", MIN_SIDE)
    targets = nss_targets(pairs, args.marginal, args.preprocess, args.cache_dir, args.workers,
                          device, progress=not args.no_progress)
    if args.output:
        buf = io.BytesIO()
        np.save(buf, targets)
        atomic_write(args.output, buf.getvalue())
    blocks = targets.reshape(len(pairs), 6, 18)
    print(f"{counted(len(pairs), 'pair')}: targets in {args.cache_dir}/nss ({args.marginal}, {args.preprocess})")
    for p, name in enumerate(PARAMETERS):
        values = blocks[:, p]
        print(f"  {name:9s} min {values.min():.4g}  median {np.median(values):.4g}  max {values.max():.4g}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
