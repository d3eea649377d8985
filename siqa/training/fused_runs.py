"""The fused driver: a run's splits trained as one network (FusedRuns, below), and the one
line of a fused run that did not fit on its GPU. The vmapped step itself is
siqa.training.fused's; each split's own work (validation, checkpoints, test), its
SplitRun's (siqa.training.split_run).
"""
import re
import time
from contextlib import ExitStack

import torch

from siqa.errors import UserError
from siqa.progress import bar as progress_bar
from siqa.training import preempt
from siqa.training.fused import FusedSplits
from siqa.training.split_run import first_epoch
from siqa.training.step import fused_step, step_of


class FusedRuns:
    """The splits of `runs` (SplitRuns of one plan) trained as one fused network
    (train.concurrent_splits=fused, siqa.training.fused): each split prepares, validates,
    checkpoints and tests as it does alone; the epochs' steps are FusedSplits' rounds.

        each split: prepare (data, network, optimizer, last.pt on --resume), then its random
                    stream handed to its own generator
        FusedSplits(the K networks, the K generators; captured rounds on CUDA), the splits'
                    training patches concatenated once; on --resume their optimizer states
        per epoch:  K orders -> the fused rounds (one vmapped step per batch size)
                    -> split k: its weights into its network, then its own end of the epoch
    """

    def __init__(self, runs, progress, log):
        self.runs, self.progress, self.log = runs, progress, log
        self.cfg, self.t, self.device = runs[0].cfg, runs[0].t, runs[0].dist.device

    def steps(self, resume):
        """The fused run as a generator of its rounds; returns the splits' test reports."""
        generators = []
        for run in self.runs:  # each one's stream, where its run alone would be now
            run.prepare(resume, fused=True)
            generators.append(self._generator())
        starts = {run.start_epoch for run in self.runs}
        if len(starts) > 1:
            raise UserError(f"--resume with train.concurrent_splits=fused: the splits stopped at "
                            f"different epochs ({sorted(starts)}); resume them one after another "
                            "(train.concurrent_splits=false)")
        first = self.runs[0]
        self.fused = FusedSplits.from_config(
            [run.model for run in self.runs], generators, self.cfg, first.amp_dtype,
            initial_lr=first.optimizer.param_groups[0].get("initial_lr"),
            step=fused_step(step_of(self.t.step, self.device, first.dist.world)), log=self.log)
        views = self.fused.concatenate([run.data["train"] for run in self.runs])
        for k, run in enumerate(self.runs):
            run.data["train"] = views[k]  # one copy of the training patches, the concatenated one
            if run.start_epoch:
                self.fused.load_split_state(k, optimizer=run.optimizer.state_dict())
            run.fused = (self.fused, k)
        with ExitStack() as stack:
            for run in self.runs:
                stack.enter_context(run.training())
            for epoch in range(starts.pop(), self.t.epochs):
                yield from self._epoch(epoch)
        return [run.finish() for run in self.runs]

    def _generator(self):
        """A generator holding the process's current random state on the run's device."""
        if self.device.type == "cuda":
            return torch.Generator(self.device).set_state(torch.cuda.get_rng_state(self.device))
        return torch.Generator().set_state(torch.get_rng_state())

    def _epoch(self, epoch):
        started, runs = time.perf_counter(), self.runs
        orders = [run.order(epoch) for run in runs]
        self.fused.set_lr(float(runs[0].optimizer.param_groups[0]["lr"]))  # one schedule for all
        bar = progress_bar(total=sum(len(o) for o in orders), unit="patch", leave=False,
                           desc=f"epoch {epoch + 1}/{self.t.epochs}, {len(runs)} splits fused",
                           progress=first_epoch(self.progress, epoch, runs[0].start_epoch))
        rounds = self.fused.epoch([run.data["train"] for run in runs], orders, runs[0].batch, bar)
        try:
            losses = yield from preempt.until_stopped(rounds, runs[0].stop)
        except torch.cuda.OutOfMemoryError as err:
            raise UserError(out_of_memory(err, len(runs), runs[0].batch)) from None
        bar.close()
        for k, run in enumerate(runs):
            self.fused.load_into(k, run.model)  # what split k scores and checkpoints
            run.end_epoch(epoch, losses[k], started)


def out_of_memory(err, splits, batch) -> str:
    """The one line of a fused run that did not fit on its GPU."""
    asked = re.search(r"Tried to allocate [0-9.]+ [KMGT]?i?B", str(err))
    return (f"train.concurrent_splits=fused: out of GPU memory training {splits} splits at once at "
            f"train.batch_size={batch} ({asked.group(0) if asked else 'CUDA out of memory'}); the "
            "run folder holds every completed epoch: --resume with fewer splits at once "
            "(train.splits=[...] in several jobs) or train.concurrent_splits=false")
