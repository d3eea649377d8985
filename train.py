"""Train the multi-task stereo IQA model and test it on held-out scenes.

    python train.py [--config config.yaml] [key.sub=value ...] [--resume] [--debug]
    python train.py --list-settings               (every key: default, values, meaning)
    torchrun --nproc_per_node=N train.py ...      (several GPUs, or several CPU processes)
"""
import argparse
import sys

from siqa.errors import run_cli


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--config", help="a YAML file of overrides (default: config.yaml)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in out_dir from its last complete checkpoint "
                             "(the settings that may change: docs/usage.md, Resuming)")
    parser.add_argument("--list-settings", action="store_true",
                        help="print every setting (key = default, its meaning, the values it "
                             "takes) and exit")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="any setting (train.py --list-settings; config.yaml)")
    args = parser.parse_intermixed_args(argv)  # key=value before and after --resume
    if args.list_settings:
        from siqa.settings import listing

        sys.stdout.write(listing())
        return 0

    from siqa.training.launch import launch

    return launch(args.config, args.overrides, resume=args.resume)


if __name__ == "__main__":
    sys.exit(run_cli(main))
