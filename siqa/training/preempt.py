"""Stopping a training run cleanly on SIGTERM (a cluster's preemption) or SIGINT (Ctrl-C).

    signal --> flag --> the epoch loop sees it after the current step (under torchrun the
               ranks agree every `CHECK_EVERY` steps, so that all stop at the same step)
           --> the interrupted epoch is abandoned; last.pt holds the state at its start
               (the last completed epoch: weights, optimizer, scheduler, every rank's RNG)
           --> Preempted --> train.py prints how to resume and exits 128 + signal
               (143 for SIGTERM, 130 for SIGINT)

`--resume` then restarts the interrupted epoch from its start with the saved RNG state, so
it ends exactly as the uninterrupted run would (on the CPU: metrics, predictions, weights).

Outside the epoch loop (reading the data, the NSS cache, the test of the best checkpoint)
there is no step to finish: the signal raises Preempted at once. Every file is written
atomically, so whatever was being written is either complete or absent. A second signal
during the epoch loop also stops at once (the last.pt on disk stays consistent, only older).
Once the stopped run shuts down (`stopping`: its last lines, leaving torchrun's process
groups), another signal ends the process at once, with the first signal's exit code and no
traceback.
"""
import signal
import threading

import torch
import torch.distributed as tdist

CHECK_EVERY = 8  # under torchrun: steps between the ranks' agreements on stopping

_lock = threading.Lock()
_state = {"signum": None, "deferring": 0, "installed": False, "stopping": False}


class Preempted(Exception):
    """Training stopped by a signal; the run folder holds a consistent last.pt."""

    def __init__(self, signum):
        self.signum = signum
        super().__init__(f"stopped by {signal_name(signum)}")

    @property
    def exit_code(self):
        return 128 + self.signum


def signal_name(signum):
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _handler(signum, frame):
    if _state["stopping"]:  # the run is already on its way out: end it now, quietly
        raise SystemExit(128 + (_state["signum"] or signum))
    first = _state["signum"] is None
    _state["signum"] = signum if first else _state["signum"]
    if not _state["deferring"] or not first:
        raise Preempted(signum)


def install():
    """Catch SIGTERM and SIGINT in this process (call from the main thread); no signal
    received yet."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _handler)
    _state.update(signum=None, installed=True, stopping=False)


def stopping():
    """From here on the process is shutting down (a stopped run says how to resume and
    leaves its process groups; a finished one too): a signal ends it at once (SystemExit,
    128 + the first signal), without a traceback from wherever it lands."""
    _state["stopping"] = True


def requested():
    """The signal number received, or None."""
    return _state["signum"]


def installed():
    """Whether a signal can stop training in this process (train.py installs the handler)."""
    return _state["installed"]


def defer():
    """From here until `undefer`, a first signal only sets the flag: the epoch loop stops
    after the current step. Nested: concurrent splits each defer while they train."""
    with _lock:
        _state["deferring"] += 1


def undefer():
    with _lock:
        _state["deferring"] -= 1


class Stopper:
    """Whether to stop now, the same answer on every rank.

    One process: the flag, after every step. Under torchrun every `CHECK_EVERY` steps the
    ranks all-reduce their flags on the host (gloo) group, which does not wait for the GPU:
    a signal seen by any rank stops them all at the same step."""

    def __init__(self, dist):
        self.dist = dist
        self.count = 0

    def __call__(self):
        self.count += 1
        if self.dist.world == 1:
            return requested() is not None
        if self.count % CHECK_EVERY:
            return False
        return self.agree()

    def agree(self):
        """Whether any rank received a signal (a collective under torchrun)."""
        if self.dist.world == 1:
            return requested() is not None
        flag = torch.tensor([requested() or 0], dtype=torch.int64)
        tdist.all_reduce(flag, op=tdist.ReduceOp.MAX, group=self.dist.host_group)
        if flag.item() and requested() is None:
            _state["signum"] = int(flag.item())
        return bool(flag.item())


def until_stopped(steps, stop):
    """`yield from steps`, but raise Preempted once `stop()` says so after a step (the
    remaining steps of the generator are abandoned)."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value
        if stop():
            steps.close()
            raise Preempted(requested() or signal.SIGTERM)
        yield
