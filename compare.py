"""Compare N runs trained on the same splits: a leaderboard, and Wilcoxon across splits and
a paired variance test per split against a reference run (Holm-corrected).

    python compare.py RUN_A RUN_B [RUN_C ...] [--reference LABEL] [--metric srocc ...]
                      [--alpha 0.05] [--per-distortion] [--latex] [--json FILE] [--out DIR]

Each RUN is a finished run folder (`train.repeats=N`, or parts merged by summarize.py; all
on the same splits and the same scores, e.g. trained with
dataset.split_file=RUN_A/splits.json); the reference is the first unless --reference names
another (its label or folder). The leaderboard ends with the constant predictor (each
split's training mean); a run that does not beat it, or whose SROCC interval reaches 0, is
marked a non-learner and no winner is called against it (docs/statistics.md). --out DIR also
writes leaderboard.csv, leaderboard.md, comparison.md (.tex) and comparison.json there.
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
    parser.add_argument("--reference", help="the run every other is tested against: a label or "
                        "a RUN folder (default: the first)")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--per-distortion", action="store_true",
                        help="also a table of each run's first metric per distortion type")
    parser.add_argument("--latex", action="store_true", help="LaTeX tabulars instead of Markdown")
    parser.add_argument("--json", help="also write the statistics as JSON to this file")
    parser.add_argument("--out", help="also write leaderboard.csv, leaderboard.md, the tables and "
                        "comparison.json into this folder")
    args = parser.parse_args(argv)
    if len(args.runs) < 2:
        raise UserError("compare.py needs at least two run folders")
    if not 0 < args.alpha < 1:
        raise UserError(f"--alpha {args.alpha}: a significance level between 0 and 1, e.g. 0.05")
    if args.label and len(args.label) != len(args.runs):
        raise UserError(f"{len(args.label)} --label for {len(args.runs)} runs: give one per run")

    from siqa.evaluation import comparison, comparison_tables

    labels = args.label or [None] * len(args.runs)
    runs = [comparison.load_run(r, label) for r, label in zip(args.runs, labels)]
    result = comparison.compare(runs, args.metric or comparison.DEFAULT_METRICS, alpha=args.alpha,
                                reference=args.reference)
    text = comparison_tables.tables(result, latex=args.latex, per_distortion=args.per_distortion)
    if args.json:
        from siqa.evaluation.reports import write_json

        write_json(args.json, result)
    print(text, end="")
    if args.out:
        written = comparison_tables.write_outputs(args.out, result, latex=args.latex,
                                           per_distortion=args.per_distortion)
        print(f"written: {', '.join(str(p) for p in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
