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
    locks = []
    if os.environ.get("RANK", "0") == "0":  # one job per run folder (rank 0 is the writer)
        from siqa.files import RunLock, remove_dead_temporaries

        # array tasks sharing out_dir (train.splits) each own the folders of their splits
        parts = ([f"split_{r}" for r in cfg["train"]["splits"]]
                 if cfg["train"]["splits"] is not None else [None])
        try:
            for part in parts:
                locks.append(RunLock(out_dir, part).acquire())
        except BaseException:
            release(locks)
            raise
        remove_dead_temporaries(out_dir, recursive=True, all_dead=True)  # of killed writes
    try:
        return run(args, cfg, out_dir)
    finally:  # also when main is called in a process that goes on (tests, notebooks)
        release(locks)


def release(locks):
    for lock in locks:
        lock.release()


def run(args, cfg, out_dir):
    """main, once this process owns the run folder."""
    from siqa import config

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

    from siqa import distributed, experiment, preempt

    if args.resume and experiment.finished(cfg):
        print(f"{out_dir} is finished: {config.resolve_auto(cfg)['train']['epochs']} epochs "
              f"trained and tested; nothing to resume (a longer run: --resume train.epochs=N)")
        return 0
    if cfg["train"]["threads"]:
        torch.set_num_threads(cfg["train"]["threads"])
    preempt.install()  # SIGTERM / SIGINT: stop after the current step, last.pt consistent
    dist = distributed.setup(cfg["device"])
    try:
        experiment.train(cfg, resume=args.resume, dist=dist, progress=sys.stderr.isatty(),
                         log=functools.partial(print, flush=True) if dist.is_main else (lambda *a: None),
                         changes=changes)
    except preempt.Preempted as stopped:  # every rank stops; rank 0 says how to go on
        launcher = "torchrun --nproc_per_node=N " if dist.world > 1 else "python "
        if dist.is_main and (out_dir / "config.yaml").is_file():
            print(f"{stopped}: {out_dir} holds its last completed epoch; resume with: "
                  f"{launcher}train.py --resume out_dir={out_dir}", file=sys.stderr, flush=True)
        elif dist.is_main:
            print(f"{stopped} before training started (nothing written to {out_dir}): "
                  "run the same command again", file=sys.stderr, flush=True)
        return stopped.exit_code
    finally:
        distributed.teardown()
    if dist.is_main:
        print(f"run written to {out_dir}; TensorBoard: tensorboard --logdir {cfg['tensorboard']['dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
