"""Several content splits trained at once in one process (train.concurrent_splits).

A split's run is a generator that yields after every training step
(siqa.training.split_run.SplitRun.steps, siqa.training.step.epoch_steps). `interleave` advances the runs in
turn, one step each, until every one has returned:

    round 1: split 0 step, split 1 step, ..., split N-1 step
    round 2: split 0 step, ...                (a finished split drops out)

so each split runs exactly the code it runs alone. What would otherwise pass from one split
to the next is kept apart:

- the global random streams (dropout masks): each split has its own CPU generator state,
  swapped in while its step runs, and on CUDA its own state of the device's generator,
  installed with `graphsafe_set_state` (a captured step, train.step=graph, is bound to the
  state that was installed when it was captured, so every split's graph draws from its own);
- on CUDA, each split issues its work on its own stream, so that the GPU can run one split's
  kernels while the host launches the next split's step.

On the CPU the steps simply alternate: the result equals training the splits one after
another (tests/test_concurrent.py), the time too.
"""
from contextlib import contextmanager, nullcontext

import torch


def finish(run):
    """Run a step generator to its end; its return value."""
    while True:
        try:
            next(run)
        except StopIteration as stop:
            return stop.value


class _SplitSlot:
    """One split's random states and CUDA stream, all cloned from the current ones;
    `generator`: the CUDA device's default generator (None on the CPU)."""

    def __init__(self, device, generator):
        self.cpu_state = torch.get_rng_state()
        self.generator, self.cuda_state, self.stream = generator, None, None
        if generator is not None:
            self.cuda_state = generator.clone_state()
            self.stream = torch.cuda.Stream(device)
            self.stream.wait_stream(torch.cuda.current_stream(device))

    @contextmanager
    def active(self):
        torch.set_rng_state(self.cpu_state)
        if self.generator is not None:
            self.generator.graphsafe_set_state(self.cuda_state)
        try:
            with torch.cuda.stream(self.stream) if self.stream is not None else nullcontext():
                yield
        finally:
            self.cpu_state = torch.get_rng_state()


def interleave(runs, device):
    """Advance the generators `runs` one step each in turn until all have returned; their
    return values, in order. An error in one split stops them all (each run's own cleanup,
    e.g. its pending checkpoint writes, still runs)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.init()  # the default generators exist once CUDA is initialised
        device = torch.device("cuda", device.index if device.index is not None
                              else torch.cuda.current_device())
    cpu_before = torch.get_rng_state()
    generator = torch.cuda.default_generators[device.index] if device.type == "cuda" else None
    cuda_before = generator.graphsafe_get_state() if generator is not None else None
    slots = [_SplitSlot(device, generator) for _ in runs]
    results = [None] * len(runs)
    running = list(range(len(runs)))
    try:
        while running:
            for i in list(running):
                with slots[i].active():
                    try:
                        next(runs[i])
                    except StopIteration as stop:
                        results[i] = stop.value
                        running.remove(i)
    finally:
        for run in runs:
            run.close()
        torch.set_rng_state(cpu_before)
        if generator is not None:
            generator.graphsafe_set_state(cuda_before)
            for slot in slots:
                torch.cuda.current_stream(device).wait_stream(slot.stream)
    return results
