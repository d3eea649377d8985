"""Score stereo pairs with a trained checkpoint (no reference needed).

    python predict.py --checkpoint runs/demo/best.pt LEFT RIGHT [LEFT RIGHT ...] [--maps DIR]
    python predict.py --checkpoint runs/demo/best.pt --sbs SIDE_BY_SIDE [--maps DIR]
    python predict.py --checkpoint runs/demo/best.pt --manifest pairs.csv [--out pred.csv] [--maps DIR]
    python predict.py --checkpoint runs/mine-kfold LEFT RIGHT    # a run folder: the mean of its splits' best.pt
"""
import argparse
import itertools
import signal
import sys
import warnings

from siqa.errors import UserError, counted, run_cli


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--checkpoint", required=True,
                        help="a best.pt, or a run folder: the mean of the best.pt of every split it tested")
    parser.add_argument("views", nargs="*", metavar="LEFT RIGHT",
                        help="left and right view files, one or more pairs")
    parser.add_argument("--sbs", help="a side-by-side file (left half = left view)")
    parser.add_argument("--manifest", help="CSV with left,right or sbs columns (paths relative to it)")
    parser.add_argument("--out", help="with --manifest: write its rows plus a prediction column here")
    parser.add_argument("--maps", metavar="DIR", help="write quality, asymmetry and naturalness maps here")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    given = [bool(args.views), bool(args.sbs), bool(args.manifest)]
    if sum(given) != 1:
        raise UserError("give exactly one of: LEFT RIGHT, --sbs IMAGE, --manifest CSV")
    if len(args.views) % 2:
        raise UserError(f"LEFT RIGHT [LEFT RIGHT ...]: expected view files in pairs, got "
                        f"{len(args.views)} (the last one has no right view)")
    if args.out and not args.manifest:
        raise UserError("--out goes with --manifest")

    import siqa
    from siqa.inference import manifest
    from siqa.inference.api import NearConstantWarning
    from siqa.inference.ensemble import FoldEnsemble

    if args.manifest:  # streamed: one row at a time, whatever the manifest's length
        fields = manifest.manifest_fields(args.manifest)  # every row checked before any output
        rows = manifest.manifest_rows(args.manifest)
        rows, for_scores = itertools.tee(rows)
        pairs = (pair for _, pair in for_scores)
    else:
        views = args.views  # LEFT RIGHT [LEFT RIGHT ...]
        rows, pairs = None, list(zip(views[::2], views[1::2])) if views else [(args.sbs, None)]
    with warnings.catch_warnings():  # said once, below, as one line
        warnings.simplefilter("ignore", NearConstantWarning)
        model = siqa.load(args.checkpoint, device=args.device)
    if isinstance(model, FoldEnsemble):  # which models are averaged
        print(f"# {model.describe_members()}")
    print(f"# {model.describe_scale()}")
    if model.near_constant:  # a comment line, as the scale's: stderr is for errors
        print(f"# warning: {model.near_constant_message()}")
    # SIGTERM ends the run as an error does: the temporary CSV is removed (exit 143)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    out = manifest.PredictionsWriter(args.out, fields) if args.out else None
    try:
        scored = zip(rows, model.iter_scores(pairs)) if rows is not None else \
            (((None, pair), score) for pair, score in zip(pairs, model.score_pairs(pairs)))
        for (row, (left, right)), score in scored:
            print(f"{left}{'' if right is None else ' ' + str(right)}\t{score:.6f}")
            if out is not None:
                out.write(row, score)
    except BaseException:
        if out is not None:
            out.abort()  # no half-written CSV
        raise
    if out is not None:
        out.close()
    if args.manifest and args.maps:
        pairs = [pair for _, pair in manifest.manifest_rows(args.manifest)]
    if args.maps:
        from siqa.inference.maps import write_maps

        written = write_maps(model, pairs, manifest.map_names(pairs), args.maps)
        print(f"# maps: {counted(len(written), 'file')} in {args.maps}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
