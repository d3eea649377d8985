"""Which splits of a run this process trains, and how: one after another, interleaved
step by step (train.concurrent_splits=true, siqa.training.concurrent) or fused into one
network (train.concurrent_splits=fused, siqa.training.fused_runs).

    the splits chosen (train.splits, or all) --> on --resume: a finished split's test report
    is read back (siqa.runfolder), the others continue from their last.pt --> the rest run
    --> every split's test report (None for those this process does not train)
"""
import ctypes
import ctypes.util
import gc
import json

from siqa import config as config_mod
from siqa.progress import shown
from siqa.runfolder import RunFolder
from siqa.settings import Settings
from siqa.training.checkpoints import saved_epoch
from siqa.training.concurrent import finish, interleave
from siqa.training.fused_runs import FusedRuns
from siqa.training.preflight import chosen_splits
from siqa.training.split_run import SplitRun


def train_splits(plan, resume, dist, progress, log) -> list:
    """The test report of every split (None for those this process does not train); a
    finished split of a resumed run is read back, not trained again."""
    reports = [None] * len(plan.splits)
    todo = []
    t = Settings(plan.cfg).train
    epochs = t.epochs
    for r in plan.chosen:
        split = plan.split_folder(r)
        if resume and split.finished(epochs, saved_epoch):
            reports[r] = json.loads(split.metrics.read_text())["test"]
        else:
            if resume:
                split.check_extendable(epochs)
            todo.append(r)
    mode = t.concurrent_splits if len(todo) > 1 else False
    concurrent = bool(mode)

    def split_run(r):
        # several splits: each line says whose it is (concurrently they interleave, no bars)
        split_log = (lambda line: log(f"split {r}: {line}")) if len(plan.splits) > 1 else log
        return SplitRun(plan, r, dist, progress=shown(progress, not concurrent), log=split_log,
                        concurrent=concurrent)

    def steps(r):
        return split_run(r).steps(resume)

    if mode == "fused":
        fused = FusedRuns([split_run(r) for r in todo], progress=shown(progress, dist.is_main),
                          log=log)
        for r, report in zip(todo, finish(fused.steps(resume))):
            reports[r] = report
    elif concurrent:
        for r, report in zip(todo, interleave([steps(r) for r in todo], dist.device)):
            reports[r] = report
    else:
        for r in todo:
            reports[r] = finish(steps(r))
            release_freed_memory()  # the next split does not grow on this one's free blocks
    return reports


def release_freed_memory():
    """Hand the memory freed by a finished split back to the system (glibc's malloc_trim).

    A split frees its patches, model and optimizer, but glibc keeps freed heap blocks, and
    once large blocks have been freed it raises its mmap threshold, so the next split's
    large tensors come from a heap whose holes they only partly fit: the peak grew by tens of
    MB a split without it (docs/performance.md). A no-op where there is no glibc."""
    gc.collect()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def finished(cfg) -> bool:
    """Every split this run trains (train.splits, or all) reached train.epochs and was
    tested, and a whole run of several splits wrote its summary (siqa.runfolder). The splits
    are counted in the run's own splits.json (k-fold: repeats x folds; a split file: its own
    count)."""
    folder = RunFolder(config_mod.run_dir_of(cfg))
    if not folder.splits_file.is_file():  # no split has started
        return False
    count = folder.split_count()
    chosen = [0] if count == 1 else chosen_splits(cfg, count)
    t = Settings(cfg).train
    return folder.finished(chosen, count, t.epochs, saved_epoch, whole=t.splits is None)
