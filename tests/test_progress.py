"""Progress where stderr is a file (a cluster's log): a plain line every progress_every
seconds while a run prepares its data and trains its first epoch, nothing for a shorter
stage, a bar on a terminal (siqa/progress.py). Timed by a fake clock, or an interval of 0."""
import io

import pytest

from conftest import tiny_overrides
from siqa import config as config_mod
from siqa import progress
from siqa.training import run as runner
from siqa.training import split_run
from siqa.training.distributed import Dist


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_a_line_every_interval_and_none_for_a_short_stage(monkeypatch, capsys):
    clock = FakeClock()
    monkeypatch.setattr(progress, "clock", clock)
    bar = progress.bar(total=40, desc="NSS targets", unit="pair", progress=progress.Every(10))
    for _ in range(10):  # 4 s of work: no line
        clock.now += 0.4
        bar.update(1)
    assert capsys.readouterr().err == ""
    for _ in range(30):  # 12 s more: one line at 10 s, at the update that reaches it
        clock.now += 0.4
        bar.update(1)
    bar.close()
    assert capsys.readouterr().err.splitlines() == ["NSS targets: 25/40 pairs (62 %), 10 s"]
    clock.now = 0.0
    with progress.bar(["a", "b"], desc="patches", unit="patch", progress=progress.Every(10)) as it:
        for _ in it:
            clock.now += 11
    assert capsys.readouterr().err.splitlines() == ["patches: 1/2 patches (50 %), 11 s",
                                                    "patches: 2/2 patches (100 %), 22 s"]


def test_lines_for_a_file_bars_for_a_terminal_nothing_when_off():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    assert progress.for_stream(io.StringIO(), 10.0) == progress.Every(10.0)
    assert progress.for_stream(io.StringIO(), 0) is False  # progress_every=0: none
    assert progress.for_stream(Terminal(), 10.0) is True
    assert progress.shown(progress.Every(3), True) == progress.Every(3)
    assert progress.shown(progress.Every(3), False) is False
    assert progress.bar(total=3, progress=False).disable
    assert not isinstance(progress.bar(total=3, progress=True), progress.Lines)


def test_a_run_logged_to_a_file_shows_its_preparation_and_first_epoch(
        tiny_manifest, tmp_path, capsys, one_torch_thread):
    """Every update a line (interval 0): the NSS targets, the patches of each part, the
    first epoch; the second epoch has its own log line and no progress."""
    cfg = config_mod.load_config(overrides=tiny_overrides(
        tiny_manifest, tmp_path, **{"train.epochs": 2, "train.keep_last": False}))
    runner.train(cfg, dist=Dist(), progress=progress.Every(0.0), log=lambda line: None)
    err = capsys.readouterr().err.splitlines()
    stages = [line.split(":")[0] for line in err]
    assert {"NSS targets", "patches", "epoch 1/2"} == set(stages)
    assert stages.index("NSS targets") < stages.index("patches") < stages.index("epoch 1/2")
    assert err[stages.index("NSS targets")].startswith("NSS targets: 1/24 pairs (4 %), ")
    assert err[-1].startswith("epoch 1/2: ") and " patches (100 %), " in err[-1]


@pytest.mark.parametrize("mode,expected", [(progress.Every(10), False), (True, True), (False, False)])
def test_later_epochs_show_progress_only_on_a_terminal(mode, expected):
    assert (split_run.first_epoch(mode, 0, 0) == mode)
    assert bool(split_run.first_epoch(mode, 3, 0)) is expected
