"""Merge the split folders of a run trained in parts into its summary.json.

    python summarize.py RUN_DIR [RUN_DIR ...] [--out DIR]

Each array task of a scheduler trains some splits (`train.splits=[r]`) into
`out_dir/split_<r>/`; once every split is finished, this writes the `summary.json` that one
`train.repeats=N` run would write (siqa/merge.py: what differs by design). The parts may
share one out_dir (then `summarize.py OUT_DIR`) or have one each (then `--out DIR`, which
receives summary.json, splits.json, config.yaml and split_<r> links to the parts, so that
compare.py and evaluate.py read it as one run). Parts of different runs (other splits,
another config) are refused in one line.
"""
import argparse
import sys

from siqa.errors import run_cli


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR")
    parser.add_argument("--out", help="the merged run's folder (default: the one RUN_DIR given)")
    args = parser.parse_args(argv)

    from siqa.evaluation.merge import merge

    merge(args.runs, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
