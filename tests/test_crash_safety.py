"""Nothing lost: a kill at any point of an epoch's checkpoint writes leaves a best.pt that goes
with the last.pt a resume starts from (and the resumed run ends as the uninterrupted one);
a write that fails (disk full) leaves the previous checkpoint, cache entry, split file and
report intact and stops with one line naming the path."""
import errno
import json
import os
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, python_path, run_entry, tiny_overrides
from siqa import config
from siqa.checkpoint import load_checkpoint, save_checkpoint
from siqa.evaluation import selection
from siqa.files import WriteFailed, atomic_write
from siqa.training import checkpoints
from siqa.training import run as runner


class Killed(BaseException):
    """The process dies here: no later write happens."""


def train(manifest, work, resume=False, **extra):
    cfg = config.load_config(overrides=tiny_overrides(manifest, work, **{
        "train.epochs": 4, "train.checkpoint_every": 2, **extra}))
    return runner.train(cfg, resume=resume, progress=False, log=lambda *a: None)


def model_of(path):
    return load_checkpoint(path)["model"]


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def every_epoch_better(monkeypatch):
    """Every validation improves: best.pt is written every epoch, also between two last.pt."""
    monkeypatch.setattr(selection, "better", lambda val, best: True)


def test_a_kill_at_every_point_of_the_checkpoint_writes(tiny_manifest, tmp_path, monkeypatch,
                                                        every_epoch_better, one_torch_thread):
    ops, bests = [], {}
    real_call = checkpoints.BackgroundSaver.call

    def recording(self, fn, *args):  # the reference run: every write, in order
        ops.append((fn.__name__, args[0].name if fn is save_checkpoint else ""))
        if fn is save_checkpoint and args[0].name == "best.pt":
            bests[args[1]["epoch"]] = args[1]["model"]
        return real_call(self, fn, *args)

    monkeypatch.setattr(checkpoints.BackgroundSaver, "call", recording)
    want = train(tiny_manifest, tmp_path / "whole")
    want_best = model_of(tmp_path / "whole" / "run" / "best.pt")
    # backup, best 1, best 2, last 2, unlink, backup, best 3, best 4, last 4, unlink
    assert [name for _, name in ops].count("best.pt") == 4 and len(ops) == 10
    restored = 0
    for k in range(len(ops)):  # the kill lands before write k: writes 0 .. k-1 are on disk
        count = [0]

        def dying(self, fn, *args):
            count[0] += 1
            if count[0] > k:
                def killed(*_):
                    raise Killed()
                return real_call(self, killed)
            return real_call(self, fn, *args)

        monkeypatch.setattr(checkpoints.BackgroundSaver, "call", dying)
        work = tmp_path / f"kill{k}"
        with pytest.raises(Killed):
            train(tiny_manifest, work)
        run = work / "run"
        monkeypatch.setattr(checkpoints.BackgroundSaver, "call", real_call)
        done = checkpoints.reconcile_best(run)
        restored += done == "restored"
        if (run / "last.pt").is_file() and load_checkpoint(run / "last.pt")["best"] is not None:
            best_epoch = load_checkpoint(run / "last.pt")["best"]["epoch"]
            assert load_checkpoint(run / "best.pt")["epoch"] == best_epoch, k
            assert same_weights(model_of(run / "best.pt"), bests[best_epoch]), k
        else:
            assert not (run / "best.pt").exists(), k
        assert not (run / ".best-at-last.pt").exists()
        got = train(tiny_manifest, work, resume=True)
        assert got == want, k
        assert same_weights(model_of(run / "best.pt"), want_best), k
    assert restored >= 2  # the kills between a best.pt and the last.pt that follows it


def enospc_for(name):
    """os.fsync that fails with ENOSPC for the temporary files of `name` (a full disk)."""
    real = os.fsync

    def fsync(fd):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(f".{name}."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)
    return fsync


def write_checkpoint(path, value):
    save_checkpoint(path, {"w": torch.full((4,), float(value))})


def write_cache_entry(path, value):
    from siqa.nss.cache import encode_entry

    atomic_write(path, encode_entry("k", {}, np.full(108, float(value))))


def write_splits(path, value):
    from siqa.data.splits import write_split_file

    write_split_file(path, {"value": value, "scenes": {"s0": 0}, "splits": [{"train": [0]}]})


def write_report(path, value):
    from siqa.evaluation.reports import write_json

    write_json(path, {"value": value})


@pytest.mark.parametrize("name, write", [("last.pt", write_checkpoint), ("ab.nss", write_cache_entry),
                                         ("splits.json", write_splits), ("metrics.json", write_report)])
def test_a_full_disk_leaves_the_previous_file_intact(tmp_path, monkeypatch, name, write):
    path = tmp_path / name
    write(path, 1)
    before = path.read_bytes()
    monkeypatch.setattr(os, "fsync", enospc_for(name))
    with pytest.raises(WriteFailed) as err:
        write(path, 2)
    assert isinstance(err.value, OSError) and err.value.errno == errno.ENOSPC
    assert str(err.value) == (f"cannot write {path}: No space left on device; "
                              f"any previous {name} is unchanged")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temporary file left


def test_a_full_disk_during_training_stops_with_one_line(tiny_manifest, tmp_path):
    """Epoch 1 is written; last.pt of epoch 2 cannot be: exit 2, one line naming it, the
    epoch-1 last.pt intact, and a later --resume continues from it."""
    first = run_entry("train.py", *tiny_overrides(tiny_manifest, tmp_path, **{"train.epochs": 1}))
    assert first.returncode == 0, first.stderr
    run = tmp_path / "run"
    before = (run / "last.pt").read_bytes()
    script = (f"import os, sys, runpy\nsys.path.insert(0, {str(ROOT / 'tests')!r})\n"
              f"from test_crash_safety import enospc_for\nos.fsync = enospc_for('last.pt')\n"
              f"sys.argv = ['train.py', '--resume', 'out_dir={run}', 'train.epochs=2']\n"
              f"runpy.run_path({str(ROOT / 'train.py')!r}, run_name='__main__')\n")
    import subprocess

    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": python_path()}, timeout=600)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: cannot write {run / 'last.pt'}: No space left on device; any previous last.pt is unchanged"]
    assert (run / "last.pt").read_bytes() == before
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    resumed = run_entry("train.py", "--resume", f"out_dir={run}", "train.epochs=2")
    assert resumed.returncode == 0 and "after epoch 1" in resumed.stdout, resumed.stderr
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 2
