"""Evaluate a checkpoint on a database (its own test split by default, or any database),
every tested split of a run folder (with a k-fold run's pooled out-of-fold result), or
several checkpoints on several databases (--matrix).

    python evaluate.py --checkpoint runs/demo/best.pt [key.sub=value ...] [--split test|all] [--out DIR]
    python evaluate.py --checkpoint runs/mine-kfold [key.sub=value ...] [--split test|all] [--out DIR]
    python evaluate.py --matrix --checkpoint A.pt --checkpoint B.pt --test NAME=ROOT ... [--out DIR]
"""
import argparse
import sys
from pathlib import Path

from siqa.errors import UserError, run_cli


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--checkpoint", action="append", required=True,
                        help="a best.pt, or a run folder: each split it tested, and the run's "
                        "summary of them (repeat best.pt files with --matrix)")
    parser.add_argument("--split", choices=["test", "all"], default="test",
                        help="test: the checkpoint's own test split (same database); all: every pair")
    parser.add_argument("--matrix", action="store_true",
                        help="train x test table of SROCC/PLCC (writes matrix.md and matrix.json)")
    parser.add_argument("--test", action="append", default=[], metavar="NAME=ROOT",
                        help="with --matrix: a test database (csv=MANIFEST.csv for a manifest)")
    parser.add_argument("--out", help="output folder (default: eval_<database>_<split>/ beside "
                        "the checkpoint, and in a run folder; runs/matrix with --matrix)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="e.g. dataset.name=live3d_phase2 dataset.root=/data/LIVE3D-II")
    args = parser.parse_args(argv)
    if args.matrix:
        from siqa.evaluation.matrix import cross_database_matrix

        cross_database_matrix(args.checkpoint, args.test, args.out or "runs/matrix",
                              args.overrides, progress=sys.stderr.isatty())
        return 0
    if len(args.checkpoint) != 1 or args.test:
        raise UserError("several --checkpoint or --test need --matrix")

    from siqa.evaluation.evaluate import evaluate, evaluate_run

    run = evaluate_run if Path(args.checkpoint[0]).is_dir() else evaluate
    run(args.checkpoint[0], args.overrides, split=args.split, out=args.out,
        progress=sys.stderr.isatty())
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
