"""Score stereo pairs with a trained checkpoint (no reference needed).

    python predict.py --checkpoint runs/demo/best.pt LEFT RIGHT [LEFT RIGHT ...] [--maps DIR]
    python predict.py --checkpoint runs/demo/best.pt --sbs SIDE_BY_SIDE [--maps DIR]
    python predict.py --checkpoint runs/demo/best.pt --manifest pairs.csv [--out pred.csv] [--maps DIR]
"""
import argparse
import sys

from siqa.errors import UserError, run_cli


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
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
    from siqa import predictor

    if args.manifest:
        rows, fields, pairs = predictor.read_manifest(args.manifest)
    else:
        views = args.views
        pairs = list(zip(views[::2], views[1::2])) if views else [(args.sbs, None)]
    model = siqa.load(args.checkpoint, device=args.device)
    scores = model.score_pairs(pairs)  # reads every file before anything is written
    print(f"# {model.describe_scale()}")
    for (left, right), score in zip(pairs, scores):
        print(f"{left}{'' if right is None else ' ' + str(right)}\t{score:.6f}")
    if args.out:
        predictor.write_predictions(args.out, rows, fields, scores)
    if args.maps:
        from siqa.maps import write_maps

        written = write_maps(model, pairs, predictor.map_names(pairs), args.maps)
        print(f"# maps: {len(written)} files in {args.maps}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
