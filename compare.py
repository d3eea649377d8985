"""Compare runs trained on the same splits: Wilcoxon across splits, a paired variance test
per split (Holm-corrected).

    python compare.py RUN_A RUN_B [RUN_C ...] [--metric srocc ...] [--alpha 0.05] [--latex] [--out FILE]

Each RUN is a finished run folder (`train.repeats=N`, same splits: e.g. both trained with
dataset.split_file=RUN_A/splits.json); the first is the baseline.
"""
import argparse
import sys

from siqa.errors import UserError, run_cli


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="RUN")
    parser.add_argument("--label", action="append", default=[],
                        help="a name per run, in order (default: the folder names)")
    parser.add_argument("--metric", action="append", default=[],
                        help="srocc, krocc, plcc, rmse, plcc_logistic, rmse_logistic (aliases: srcc, krcc)")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--latex", action="store_true", help="LaTeX tabulars instead of Markdown")
    parser.add_argument("--json", help="also write the statistics as JSON to this file")
    parser.add_argument("--out", help="write the tables to this file (default: print them)")
    args = parser.parse_args(argv)
    if len(args.runs) < 2:
        raise UserError("compare.py needs at least two run folders")
    if not 0 < args.alpha < 1:
        raise UserError(f"--alpha {args.alpha}: a significance level between 0 and 1, e.g. 0.05")
    if args.label and len(args.label) != len(args.runs):
        raise UserError(f"{len(args.label)} --label for {len(args.runs)} runs: give one per run")

    from siqa import comparison
    from siqa.files import atomic_write_text

    labels = args.label or [None] * len(args.runs)
    runs = [comparison.load_run(r, label) for r, label in zip(args.runs, labels)]
    result = comparison.compare(runs, args.metric or comparison.DEFAULT_METRICS, alpha=args.alpha)
    text = comparison.tables(result, latex=args.latex)
    if args.json:
        from siqa.reports import write_json

        write_json(args.json, result)
    if args.out:
        atomic_write_text(args.out, text)
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
