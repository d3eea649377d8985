"""Preemption: SIGTERM / SIGINT mid-epoch stops the run with a consistent last.pt, a line
saying how to resume and exit 128 + signal; --resume then ends exactly as the
uninterrupted run (metrics, predictions, checkpoint weights) -- in one process, with
concurrent repeats, and under torchrun (gloo)."""
import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import ROOT, python_path, run_entry, tiny_overrides

EXTRA = {"train.epochs": 3, "train.batch_size": 8}
# The signal is sent when a line of the first epoch is read: tests/paced pauses after every
# training step, so that the next epoch lasts long enough for the signal to land inside it.
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "paced"), python_path()]),
       "OMP_NUM_THREADS": "1"}


def interrupted(cmd, sig, after):
    """Run `cmd`, send `sig` once a stdout line contains `after` (the first epoch's line:
    the run is then at the start of its second epoch); (returncode, stdout, stderr)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=ENV, bufsize=1)
    out = []
    for line in proc.stdout:
        out.append(line)
        if after in line:
            proc.send_signal(sig)
            break
    rest, err = proc.communicate(timeout=600)
    return proc.returncode, "".join(out) + rest, err


def results(run):
    """What an interrupted-and-resumed run must equal: metrics (less the protocol card, whose
    out_dir and wall time differ), predictions, and the weights of best.pt and last.pt."""
    from siqa.checkpoint import load_checkpoint

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics.pop("protocol")["selection"]
    weights = {name: load_checkpoint(run / name)["model"] for name in ("best.pt", "last.pt")}
    return metrics, (run / "predictions.csv").read_text(), weights


def assert_same(got, want):
    import torch

    assert got[0] == want[0]
    assert got[1] == want[1]
    for name in want[2]:
        assert got[2][name].keys() == want[2][name].keys()
        for key in want[2][name]:
            assert torch.equal(got[2][name][key], want[2][name][key]), (name, key)


def no_leftovers(run):
    return [p.name for p in run.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".best")]


@pytest.fixture(scope="module")
def whole(tiny_manifest, tmp_path_factory):
    work = tmp_path_factory.mktemp("whole")
    proc = run_entry("train.py", *tiny_overrides(tiny_manifest, work, **EXTRA))
    assert proc.returncode == 0, proc.stderr
    return results(work / "run")


@pytest.mark.parametrize("sig, code, every", [(signal.SIGTERM, 143, 1), (signal.SIGINT, 130, 2)])
def test_signal_mid_epoch_then_resume_equals_uninterrupted(tiny_manifest, tmp_path, whole, sig,
                                                           code, every):
    """checkpoint_every=2: last.pt was not written after epoch 1, the stop writes it."""
    from siqa.checkpoint import load_checkpoint

    run = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "train.py"),
           *tiny_overrides(tiny_manifest, tmp_path, **EXTRA, **{"train.checkpoint_every": every})]
    rc, out, err = interrupted(cmd, sig, "epoch 1/3")
    assert rc == code, err
    assert "epoch 2/3" not in out and not (run / "metrics.json").exists()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"stopped by {signal.Signals(sig).name}")
    assert f"train.py --resume out_dir={run}" in lines[0]
    assert load_checkpoint(run / "last.pt")["epoch"] == 1
    assert no_leftovers(run) == []

    resumed = run_entry("train.py", "--resume", f"out_dir={run}")
    assert resumed.returncode == 0, resumed.stderr
    assert "after epoch 1" in resumed.stdout
    assert_same(results(run), whole)


@pytest.mark.parametrize("mode", ["true", "fused"])
def test_sigterm_with_concurrent_splits(tiny_manifest, tmp_path, mode):
    """The splits at once (on streams, or fused) stopped by SIGTERM in their second epoch
    resume to the end of the uninterrupted run: for `true` that is the splits trained one
    after another, for `fused` the uninterrupted fused run (the fused arithmetic equals the
    sequential one to rounding only)."""
    extra = {**EXTRA, "train.repeats": 2}
    reference = {} if mode == "true" else {"train.concurrent_splits": mode}
    ref = run_entry("train.py", *tiny_overrides(tiny_manifest, tmp_path / "a", **extra, **reference))
    assert ref.returncode == 0, ref.stderr
    work = tmp_path / "b"
    cmd = [sys.executable, str(ROOT / "train.py"),
           *tiny_overrides(tiny_manifest, work, **extra, **{"train.concurrent_splits": mode})]
    rc, out, err = interrupted(cmd, signal.SIGTERM, "split 1: epoch 1/3")
    assert rc == 143, err
    assert "resume with" in err and not (work / "run" / "summary.json").exists()
    from siqa.checkpoint import load_checkpoint

    for r in (0, 1):  # both splits wrote the start of their abandoned epoch
        assert load_checkpoint(work / "run" / f"split_{r}" / "last.pt")["epoch"] in (1, 2)
    resumed = run_entry("train.py", "--resume", f"out_dir={work / 'run'}")
    assert resumed.returncode == 0, resumed.stderr
    for r in (0, 1):
        assert_same(results(work / "run" / f"split_{r}"), results(tmp_path / "a" / "run" / f"split_{r}"))


def test_sigterm_to_torchrun_stops_every_rank_then_resumes_exactly(tiny_manifest, tmp_path):
    from siqa.checkpoint import load_checkpoint

    def torchrun(*args):
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node=2", str(ROOT / "train.py"), *map(str, args)]

    ref = subprocess.run(torchrun(*tiny_overrides(tiny_manifest, tmp_path / "a", **EXTRA)),
                         capture_output=True, text=True, timeout=600, env=ENV)
    assert ref.returncode == 0, ref.stderr[-3000:]
    run = tmp_path / "b" / "run"
    rc, out, err = interrupted(torchrun(*tiny_overrides(tiny_manifest, tmp_path / "b", **EXTRA)),
                               signal.SIGTERM, "epoch 1/3")
    assert rc != 0  # torchrun's own report of a signal
    assert err.count("stopped by SIGTERM") == 1  # rank 0 says it; every rank stopped
    assert "torchrun --nproc_per_node=N train.py --resume" in err
    assert load_checkpoint(run / "last.pt")["epoch"] == 1 and not (run / "metrics.json").exists()
    resumed = subprocess.run(torchrun("--resume", f"out_dir={run}"), capture_output=True,
                             text=True, timeout=600, env=ENV)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "after epoch 1" in resumed.stdout
    assert_same(results(run), results(tmp_path / "a" / "run"))


def test_a_second_sigterm_while_stopping_ends_the_run_without_a_traceback(tmp_path):
    """SIGTERM, then another while the stopped run shuts down (here: in
    distributed.teardown, where a second Preempted must not leave the process with a
    traceback): the one line of the first stop, exit 143, nothing else on stderr. The
    first signal is sent by train (replaced: no data, no training), the second by teardown."""
    script = (
        "import signal, sys, runpy\n"
        "import siqa.training.run as run, siqa.training.distributed as distributed\n"
        "def train(*args, **kwargs):\n"
        "    signal.raise_signal(signal.SIGTERM)\n"
        "def teardown():\n"
        "    signal.raise_signal(signal.SIGTERM)\n"
        "    raise AssertionError('the second SIGTERM did not end the process')\n"
        "run.train, distributed.teardown = train, teardown\n"
        f"sys.argv = ['train.py', 'out_dir={tmp_path / 'run'}']\n"
        f"runpy.run_path({str(ROOT / 'train.py')!r}, run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=ENV, timeout=600)
    assert proc.returncode == 143, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"stopped by SIGTERM before training started (nothing written to {tmp_path / 'run'}): "
        "run the same command again"]


def test_a_signal_once_stopping_is_a_quiet_exit_with_the_first_signals_code(monkeypatch):
    from siqa.training import preempt

    monkeypatch.setattr(preempt, "_state", {"signum": None, "deferring": 1, "installed": True,
                                            "stopping": False})
    preempt._handler(signal.SIGTERM, None)  # while training: the flag, the step finishes
    assert preempt.requested() == signal.SIGTERM
    with pytest.raises(preempt.Preempted):  # a second one while training: at once
        preempt._handler(signal.SIGINT, None)
    preempt.stopping()
    with pytest.raises(SystemExit) as ended:  # once stopping: the process ends
        preempt._handler(signal.SIGINT, None)
    assert ended.value.code == 143
