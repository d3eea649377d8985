"""Export a checkpoint's patch-level network (both outputs) to ONNX or TorchScript.

    python export.py --checkpoint runs/demo/best.pt --format onnx --out siqa.onnx [--batch dynamic|N]
    python export.py --checkpoint runs/demo/best.pt --format torchscript --out siqa.pt

The exported model maps (B, 1, 32, 32) left/right patches to quality (B,) and nss (B, 108);
patch extraction, normalisation and the mean over a pair's patches stay outside it (the
file's "siqa" metadata and the README give the rule).
"""
import argparse
import sys

from siqa.errors import run_cli


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--format", required=True, choices=["onnx", "torchscript"])
    parser.add_argument("--out", required=True, help="the file to write")
    parser.add_argument("--batch", default="dynamic", help="'dynamic' (default) or a fixed batch size")
    parser.add_argument("--no-check", action="store_true",
                        help="skip comparing the exported file with PyTorch")
    args = parser.parse_args(argv)

    from siqa.inference.export import export

    result = export(args.checkpoint, args.format, args.out, batch=args.batch, check=not args.no_check)
    print(f"wrote {result.path} ({result.format}, batch {result.batch})")
    diffs = ", ".join(f"{k} {v:.3g}" for k, v in result.max_abs_diff.items() if v is not None)
    print(f"check against PyTorch ({result.checked_with}): max |difference| {diffs}" if diffs
          else f"check against PyTorch: {result.checked_with}")
    if result.warning:
        print(f"warning: {result.warning}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
