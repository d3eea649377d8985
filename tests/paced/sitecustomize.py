"""Paced training steps, for the tests that stop a run with a signal in its second epoch
(tests/test_preemption.py, test_keep_last.py).

A process whose PYTHONPATH starts with this folder imports this module at its start; when it
then imports siqa.training.preempt, every training step of the run (siqa's own steps, per
split or fused, all of which pass through preempt.until_stopped) is followed by a pause of
SIQA_TEST_PACE_S seconds (default 0.05). The test sends its signal when it reads a line of the
first epoch; an epoch of the tests' tiny network lasts milliseconds, and the pauses make it
last long enough for the signal to land inside the next one. The steps, their order, their
arithmetic and the stop's handling are siqa's own: only the wall time changes.
"""
import importlib.abc
import importlib.util
import os
import sys
import time

TARGET = "siqa.training.preempt"
PACE_S = float(os.environ.get("SIQA_TEST_PACE_S", "0.05"))


def paced(until_stopped):
    def until_stopped_paced(steps, stop):
        def slowed():
            try:
                while True:
                    try:
                        next(steps)
                    except StopIteration as done:
                        return done.value
                    time.sleep(PACE_S)
                    yield
            finally:
                steps.close()
        return (yield from until_stopped(slowed(), stop))
    return until_stopped_paced


class PacePreempt(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        real_exec = spec.loader.exec_module

        def exec_module(module):
            real_exec(module)
            module.until_stopped = paced(module.until_stopped)
        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, PacePreempt())
