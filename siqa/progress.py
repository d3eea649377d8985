"""Progress while a run prepares its data and trains its first epoch: a bar on a terminal, a
plain line every few seconds where stderr is a file (a cluster's log), nothing when asked
for nothing.

    progress=True       a tqdm bar on stderr (a person at a terminal)
    progress=Every(10)  "NSS targets: 41/104 pairs (39 %), 10 s" on stderr every 10 seconds
                        of a stage, and nothing for a stage shorter than that (the setting
                        progress_every)
    progress=False      nothing (tests, notebooks that ask for quiet)

`for_stream(sys.stderr, seconds)` gives True or Every(seconds) (False for 0 seconds); every
progress=... parameter of the package takes any of the three, and `bar` makes what it asks
for (tqdm's interface as the package uses it: iteration, update, close, with-block).
"""
import sys
import time
from dataclasses import dataclass

clock = time.monotonic  # read through the module, so that a test can give it a fake clock


@dataclass(frozen=True)
class Every:
    """Plain progress lines, one every `seconds` of a stage."""

    seconds: float


def for_stream(stream, seconds) -> object:
    """True (bars) where `stream` is a terminal; elsewhere Every(seconds), or False for 0."""
    if stream.isatty():
        return True
    return Every(float(seconds)) if seconds > 0 else False


def shown(progress, condition) -> object:
    """`progress` where `condition` holds, else False."""
    return progress if condition else False


def bar(iterable=None, total=None, desc="", unit="it", progress=True, leave=True):
    """A progress display of `progress`'s kind (see the module docstring)."""
    if isinstance(progress, Every):
        return Lines(iterable, total, desc, unit, progress.seconds)
    from tqdm.auto import tqdm  # loads slowly: only where a bar is drawn

    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, disable=not progress)


class Lines:
    """A stage's progress as a line on stderr every `every` seconds (of `clock`)."""

    def __init__(self, iterable=None, total=None, desc="", unit="it", every=10.0):
        self.iterable, self.desc, self.unit, self.every = iterable, desc, unit, every
        self.total = len(iterable) if total is None and hasattr(iterable, "__len__") else total
        self.n = 0
        self.start = self.last = clock()

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)

    def update(self, n=1):
        self.n += n
        now = clock()
        if now - self.last >= self.every:
            self.last = now
            print(self.line(now), file=sys.stderr, flush=True)

    def line(self, now) -> str:
        done = f"{self.n}/{self.total}" if self.total else str(self.n)
        share = f" ({100 * self.n / self.total:.0f} %)" if self.total else ""
        plural = self.unit + ("es" if self.unit.endswith(("ch", "sh", "s", "x")) else "s")
        return f"{self.desc}: {done} {plural}{share}, {now - self.start:.0f} s"

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
