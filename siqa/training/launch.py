"""train.py's job around a run: one process per run folder, --resume's checks, the
process's threads and devices, and a clean stop on SIGTERM / SIGINT.

    lock out_dir (each split folder for array tasks) -> config (--resume: the recorded one of
    the folder named, changes checked, paths compared as folders; every path made absolute,
    as the run records it) -> threads, preemption
    handler, torchrun's process groups -> siqa.training.run.train -> how to resume, or where the run and its curves are
"""
import functools
import os
import sys
from pathlib import Path

from siqa import config
from siqa.errors import UserError, counted
from siqa.files import RunLock, remove_dead_temporaries
from siqa.runfolder import CONFIG, RunFolder, split_name
from siqa.settings import Settings


def launch(config_path, overrides, resume=False) -> int:
    """Train as `python train.py [--config FILE] [--resume] key=value ...` does; the exit code.
    The run folder is locked before torch loads (seconds): a second job on it is refused at
    once."""
    cfg = config.load_config(config_path, overrides, resolve=False)
    out_dir = config.run_dir_of(cfg)
    locks = []
    if os.environ.get("RANK", "0") == "0":  # one job per run folder (rank 0 is the writer)
        # array tasks sharing out_dir (train.splits) each own the folders of their splits
        chosen = Settings(cfg).train.splits
        parts = [split_name(r) for r in chosen] if chosen is not None else [None]
        try:
            for part in parts:
                locks.append(RunLock(out_dir, part).acquire())
        except BaseException:
            _release(locks)
            raise
        remove_dead_temporaries(out_dir, recursive=True, all_dead=True)  # of killed writes
    try:
        return _run(config_path, overrides, resume, cfg, out_dir)
    finally:  # also when called in a process that goes on (tests, notebooks)
        _release(locks)


def _release(locks):
    for lock in locks:
        lock.release()


def _run(config_path, overrides, resume, cfg, out_dir):
    """launch, once this process owns the run folder."""
    import torch  # the heavy part, once the folder is ours (see launch)

    from siqa.progress import for_stream
    from siqa.training import distributed, preempt
    from siqa.training.run import train
    from siqa.training.schedule import finished

    cfg = config.load_config(config_path, overrides)
    changes = {}
    if resume:
        saved = recorded_config(out_dir)
        cfg = config.load_config(config_path, overrides, base=saved)
        if not config.same_path(config.run_dir_of(cfg), out_dir):  # recorded elsewhere (a copy):
            cfg["out_dir"] = str(out_dir)  # the folder named is the run resumed
        cfg = config.absolute_paths(cfg)  # what was given here: from here
        changes = config.resume_changes(saved, cfg)  # the same run (paths as folders), or a UserError
    else:
        refuse_existing_run(cfg, out_dir)
        cfg = config.absolute_paths(cfg)
    config.check_effect(cfg, overrides)  # no key without an effect
    settings = Settings(cfg)
    if settings.train.deterministic is True:  # cuBLAS reads it once, when CUDA starts
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if resume and finished(cfg):
        print(f"{Path(out_dir).resolve()} is finished: {counted(settings.train.epochs, 'epoch')} trained and tested; "
              "nothing to resume (a longer run: --resume train.epochs=N)")
        return 0
    if settings.train.threads:
        torch.set_num_threads(settings.train.threads)
    preempt.install()  # SIGTERM / SIGINT: stop after the current step, last.pt consistent
    dist = distributed.setup(settings.device)
    try:
        train(cfg, resume=resume, dist=dist, progress=for_stream(sys.stderr, settings.progress_every),
              log=functools.partial(print, flush=True) if dist.is_main else (lambda *a: None),
              changes=changes)
    except preempt.Preempted as stopped:  # every rank stops; rank 0 says how to go on
        preempt.stopping()  # a second signal from here on ends the process, quietly
        launcher = "torchrun --nproc_per_node=N " if dist.world > 1 else "python "
        if dist.is_main and RunFolder(out_dir).config.is_file():
            print(f"{stopped}: {out_dir} holds its last completed epoch; resume with: "
                  f"{launcher}train.py --resume out_dir={out_dir}", file=sys.stderr, flush=True)
        elif dist.is_main:
            print(f"{stopped} before training started (nothing written to {out_dir}): "
                  "run the same command again", file=sys.stderr, flush=True)
        return stopped.exit_code
    finally:
        preempt.stopping()
        distributed.teardown()
    if dist.is_main:
        print(f"run written to {out_dir}; TensorBoard: {tensorboard_command(cfg)}")
    return 0


def recorded_config(out_dir) -> dict:
    """The config a run folder records, its relative paths (a run made before runs recorded
    absolute ones) taken from the folder the run was made from where that is known (the run
    folder less its relative out_dir), else from here; UserError naming the absolute folder
    where there is none."""
    folder = RunFolder(out_dir)
    if not folder.config.is_file():
        raise UserError(f"nothing to resume in {Path(out_dir).resolve()} (no {CONFIG}); "
                        "check out_dir")
    saved = config.load_config(folder.config)
    return config.absolute_paths(saved, config.made_in(out_dir, saved))


def refuse_existing_run(cfg, out_dir):
    """UserError where a new run would write over a run's files (array tasks sharing out_dir
    with train.splits: over their own splits' files)."""
    held = RunFolder(out_dir).occupied(Settings(cfg).train.splits)
    if held is not None:
        raise UserError(f"{held} already holds a run: add --resume to continue it, "
                        f"or choose another out_dir=...")


def tensorboard_command(cfg) -> str:
    """The command that shows the curves from here: the tensorboard beside this interpreter
    (the quick start's .venv is not activated, so a bare `tensorboard` is not on the PATH)."""
    exe, logdir = Path(sys.executable).parent / "tensorboard", Settings(cfg).tensorboard.dir
    if not exe.is_file():
        return f"{sys.executable} -m tensorboard.main --logdir {logdir}"
    try:
        exe = exe.relative_to(Path.cwd())
    except ValueError:
        pass
    return f"{exe} --logdir {logdir}"
