"""Evaluate a checkpoint on a database (its own test split by default, or any database).

    python evaluate.py --checkpoint runs/demo/best.pt [key.sub=value ...] [--split test|all] [--out DIR]
"""
import argparse
import sys

from siqa.errors import run_cli


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--split", choices=["test", "all"], default="test",
                        help="test: the checkpoint's own test split (same database); all: every pair")
    parser.add_argument("--out", help="output folder (default: next to the checkpoint)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="e.g. dataset.name=live3d_phase2 dataset.root=/data/LIVE3D-II")
    args = parser.parse_args(argv)

    from siqa import experiment

    experiment.evaluate(args.checkpoint, args.overrides, split=args.split, out=args.out,
                        progress=sys.stderr.isatty())
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
