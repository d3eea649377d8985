"""Train the multi-task stereo IQA model and test it on held-out scenes.

    python train.py [--config config.yaml] [key.sub=value ...] [--resume] [--debug]
    torchrun --nproc_per_node=N train.py ...      (several GPUs, or several CPU processes)
"""
import argparse
import functools
import os
import sys

from siqa.errors import UserError, run_cli


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--config", help="a YAML file of overrides (default: config.yaml)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in out_dir from its last complete checkpoint "
                             "(the settings that may change: docs/usage.md, Resuming)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = parser.parse_intermixed_args(argv)  # key=value before and after --resume

    from siqa import config  # config mistakes are reported before torch is imported

    cfg = config.load_config(args.config, args.overrides)
    out_dir = config.run_dir_of(cfg)
    changes = {}
    if args.resume:
        if not (out_dir / "config.yaml").is_file():
            raise UserError(f"nothing to resume in {out_dir} (no config.yaml); check out_dir")
        saved = config.load_config(out_dir / "config.yaml")
        cfg = config.load_config(args.config, args.overrides, base=saved)
        changes = config.resume_changes(saved, cfg)  # the same run, or a UserError
    elif cfg["train"]["splits"] is not None:  # array tasks share out_dir: each its own splits
        for d in [out_dir, *(out_dir / f"split_{r}" for r in cfg["train"]["splits"])]:
            if any((d / name).exists() for name in ("last.pt", "metrics.json")):
                raise UserError(f"{d} already holds a run: add --resume to continue it, "
                                f"or choose another out_dir=...")
    elif any((out_dir / name).exists() for name in ("config.yaml", "last.pt", "metrics.json")):
        raise UserError(f"{out_dir} already holds a run: add --resume to continue it, "
                        f"or choose another out_dir=...")
    config.check_effect(cfg, args.overrides)  # no key without an effect
    if cfg["train"]["deterministic"] is True:  # cuBLAS reads it once, when CUDA starts
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    import torch

    from siqa import distributed, experiment

    if args.resume and experiment.finished(cfg):
        print(f"{out_dir} is finished: {config.resolve_auto(cfg)['train']['epochs']} epochs "
              f"trained and tested; nothing to resume (a longer run: --resume train.epochs=N)")
        return 0
    if cfg["train"]["threads"]:
        torch.set_num_threads(cfg["train"]["threads"])
    dist = distributed.setup(cfg["device"])
    try:
        experiment.train(cfg, resume=args.resume, dist=dist, progress=sys.stderr.isatty(),
                         log=functools.partial(print, flush=True) if dist.is_main else (lambda *a: None),
                         changes=changes)
    finally:
        distributed.teardown()
    if dist.is_main:
        print(f"run written to {out_dir}; TensorBoard: tensorboard --logdir {cfg['tensorboard']['dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
