"""A training run's state on disk: best.pt and last.pt of each split, written off the
critical path and always in a pair a resume can trust, and each process's random streams.

    epoch k ends --> BackgroundSaver: CPU copy now, hash + atomic write on a thread
                 --> BestLastPair: best.pt (when validation improved), then last.pt
    --resume     --> reconcile_best: best.pt put back to the one that goes with last.pt
                 --> restore_rank_rng: this rank's dropout stream where it stopped

The file format itself (a plain torch.save dict with its SHA-256) is siqa/checkpoint.py.
"""
import os
import queue
import shutil
import threading

import numpy as np
import torch

from siqa.checkpoint import load_checkpoint, map_tensors, restore_rng, save_checkpoint
from siqa.runfolder import SplitFolder


def seed_rank_stream(seed, rank):
    """Give this rank its own random stream once the model is initialised (identically on
    every rank, from `seed`): rank 0 continues the initialisation's stream, so a single
    process trains as one process alone does; rank r > 0 is reseeded from (seed, r), so the
    ranks draw different dropout masks (with one seed they would all draw the same)."""
    if rank:
        torch.manual_seed(int(np.random.SeedSequence([seed, rank]).generate_state(1)[0]))


def rank_states(saved):
    """The per-rank list of RNG states of a checkpoint (an older one holds one dict)."""
    return [saved] if isinstance(saved, dict) else list(saved)


def restore_rank_rng(saved, dist, seed, epoch) -> bool:
    """Restore this rank's own RNG state from a checkpoint; False (and a fresh stream
    seeded by seed, epoch and rank) when it was written by another number of processes."""
    states = rank_states(saved)
    if len(states) == dist.world:
        restore_rng(states[dist.rank], dist.device)
        return True
    torch.manual_seed(int(np.random.SeedSequence([seed, epoch, dist.rank]).generate_state(1)[0]))
    return False


def cpu_copy(state):
    """`state` with every tensor copied (detached) to the CPU."""
    return map_tensors(state, lambda x: x.detach().to("cpu", copy=True))


class BestLastPair:
    """Writes best.pt and last.pt (through `saver`, in order) so that a resume always finds
    the best.pt that goes with its last.pt.

    With train.checkpoint_every > 1 (or a kill between the two writes of an epoch) best.pt
    can be written after the last.pt a resume starts from. So before best.pt is first
    replaced after a last.pt, the old one is kept as a hard link `.best-at-last.pt`, which is
    removed once the next last.pt is on disk. `reconcile_best` at resume puts it back when
    last.pt did not follow:

        last.pt(k) ... best.pt(j > k) [link: best.pt(b <= k)] ... last.pt(m >= j) [unlink]
    """

    def __init__(self, run_dir, saver):
        self.folder, self.saver = SplitFolder(run_dir), saver
        self.backed_up = False

    def save_best(self, state):
        if not self.backed_up:
            self.saver.call(_backup_best, self.folder)
            self.backed_up = True
        self.saver.save(self.folder.best, state)

    def save_last(self, state):
        self.saver.save(self.folder.last, state)
        self.saver.call(_unlink, self.folder.best_backup)
        self.backed_up = False


def _backup_best(folder):
    best, backup = folder.best, folder.best_backup
    _unlink(backup)
    if best.is_file():
        try:
            os.link(best, backup)
        except OSError:  # a file system without hard links
            shutil.copyfile(best, backup)


def _unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def saved_epoch(path) -> int:
    """The epoch after which the checkpoint `path` was written."""
    return load_checkpoint(path)["epoch"]


def reconcile_best(run_dir):
    """Before resuming: make best.pt the one that goes with last.pt (see BestLastPair).
    Returns what was done: None, "restored" (the older best.pt put back) or "removed" (a
    best.pt newer than a last.pt without any best, or without a last.pt: the resumed run
    writes it again)."""
    folder = SplitFolder(run_dir)
    best, backup, last = folder.best, folder.best_backup, folder.last
    last_best = load_checkpoint(last)["best"] if last.is_file() else None
    best_epoch = load_checkpoint(best)["epoch"] if best.is_file() else None
    done = None
    if last_best is not None and best_epoch != last_best["epoch"] and backup.is_file():
        os.replace(backup, best)
        done = "restored"
    elif last_best is None and best_epoch is not None:
        _unlink(best)
        done = "removed"
    _unlink(backup)
    return done


class BackgroundSaver:
    """Checkpoints written off the critical path: the state is copied to the CPU at once (so
    it is the state at this epoch's end), then hashed and written atomically by one thread,
    in order, while the next epoch trains (at most two copies wait: the memory stays bounded).
    A failed write is raised at the next `save` or at `wait`."""

    def __init__(self):
        self._queue = queue.Queue(maxsize=2)
        self._error = None
        self._thread = None

    def save(self, path, state):
        # detached copies on the CPU: training goes on changing the live tensors
        self.call(save_checkpoint, path, cpu_copy(state))

    def call(self, fn, *args):
        """Run fn(*args) on the writer thread, after the writes queued before it."""
        self._raise()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="checkpoint-writer", daemon=True)
            self._thread.start()
        self._queue.put((fn, args))

    def _run(self):
        while True:
            fn, args = self._queue.get()
            if fn is None:  # close(): the thread ends (its malloc arena is then reused)
                self._queue.task_done()
                return
            try:
                if self._error is None:
                    fn(*args)
            except BaseException as err:  # handed to the training thread
                self._error = err
            finally:
                # Not held while waiting for the next task: the thread lives on after its
                # run, and a snapshot left here kept each finished split's last.pt state
                # (weights and optimizer, ~116 MB) alive for the rest of the process.
                fn = args = None
                self._queue.task_done()

    def _raise(self):
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def wait(self):
        """Return once every queued checkpoint is on disk."""
        self._queue.join()
        self._raise()

    def close(self):
        """wait(), then end the writer thread (a later save starts another)."""
        try:
            self.wait()
        finally:
            if self._thread is not None:
                self._queue.put((None, ()))
                self._thread.join()
                self._thread = None
