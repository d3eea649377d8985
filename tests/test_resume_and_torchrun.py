"""Interrupted runs resume exactly; torchrun (gloo, CPU) trains with DDP and its test
metrics equal a single-process evaluation of the same checkpoint."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, make_tiny_database, python_path, run_entry, tiny_overrides


@pytest.fixture(scope="module")
def larger_manifest(tmp_path_factory):
    # 256x192 views: 70 patches a view, so that an epoch lasts long enough to be interrupted
    return make_tiny_database(tmp_path_factory.mktemp("db"), scenes=6, levels=3, size=(256, 192))


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(larger_manifest, tmp_path):
    extra = {"train.epochs": 3, "train.batch_size": 8}
    whole = run_entry("train.py", *tiny_overrides(larger_manifest, tmp_path / "a", **extra))
    assert whole.returncode == 0, whole.stderr

    work = tmp_path / "b"
    args = [sys.executable, str(ROOT / "train.py"), *tiny_overrides(larger_manifest, work, **extra)]
    # tests/paced: a pause after every step, so that the kill lands inside epoch 2
    paced = os.pathsep.join([str(ROOT / "tests" / "paced"), python_path()])
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": paced})
    last = work / "run" / "last.pt"
    deadline = time.time() + 300
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert last.exists(), proc.communicate()[1].decode()[-2000:]
    time.sleep(0.5)  # into epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    from siqa.checkpoint import load_checkpoint

    epoch_at_kill = load_checkpoint(last)["epoch"]
    assert epoch_at_kill < 3 and not (work / "run" / "metrics.json").exists(), "killed too late"

    resumed = run_entry("train.py", "--resume", f"out_dir={work / 'run'}")
    assert resumed.returncode == 0, resumed.stderr
    assert f"after epoch {epoch_at_kill}" in resumed.stdout
    got = json.loads((work / "run" / "metrics.json").read_text())
    want = json.loads((tmp_path / "a" / "run" / "metrics.json").read_text())
    for m in (got, want):  # the protocol cards differ (out_dir, wall time); the results may not
        assert m.pop("protocol")["selection"]
    assert got == want


def test_torchrun_two_processes_gloo(tiny_manifest, tmp_path):
    env = {**os.environ, "PYTHONPATH": python_path(), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "train.py"), *tiny_overrides(tiny_manifest, tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert proc.stdout.count("test (") == 1  # only rank 0 reports and writes
    ev = run_entry("evaluate.py", "--checkpoint", run / "best.pt", "--out", tmp_path / "ev")
    assert ev.returncode == 0, ev.stderr
    single = json.loads((tmp_path / "ev" / "metrics.json").read_text())["test"]
    for key in ("srocc", "plcc", "krocc", "rmse", "n"):
        assert single[key] == pytest.approx(metrics["test"][key], rel=1e-9, abs=1e-12), key


def _torchrun(*args, timeout=600):
    env = {**os.environ, "PYTHONPATH": python_path(), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def test_ddp_ranks_share_initial_weights_but_not_dropout_masks(tmp_path):
    out = tmp_path / "probe.json"
    proc = _torchrun(ROOT / "tests" / "ddp_rng_probe.py", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    probe = json.loads(out.read_text())
    r0, r1 = probe["ranks"]
    assert probe["world"] == 2
    # the model is initialised from the one seed on every rank ...
    assert r0["weights"] == r1["weights"] and r0["weights_head"] == r1["weights_head"]
    # ... and each rank then draws its own dropout masks (with one seed they were equal)
    assert r0["mask"] != r1["mask"]
    assert 0.4 < sum(r0["mask"]) / len(r0["mask"]) < 0.6
    assert r0["quality"] != r1["quality"]  # the model's dropout layers included
    # each rank's state is saved and restored as its own
    for r in (r0, r1):
        assert r["exact"] is True and r["again"] == r["after"]
        assert r["mismatched"] is False  # a checkpoint of another world size: a fresh stream
    assert r0["after"] != r1["after"]


def test_torchrun_resume_restores_each_ranks_rng(tiny_manifest, tmp_path):
    """2 ranks: 1 epoch, then --resume to 2 epochs, equals 2 epochs uninterrupted. Rank 1
    draws its own dropout masks, so giving it rank 0's saved state would change the result."""
    whole = _torchrun(ROOT / "train.py", *tiny_overrides(tiny_manifest, tmp_path / "a"))
    assert whole.returncode == 0, whole.stderr[-3000:]
    part = _torchrun(ROOT / "train.py", *tiny_overrides(tiny_manifest, tmp_path / "b", **{"train.epochs": 1}))
    assert part.returncode == 0, part.stderr[-3000:]
    from siqa.checkpoint import load_checkpoint

    rng = load_checkpoint(tmp_path / "b" / "run" / "last.pt")["rng"]
    assert len(rng) == 2 and not torch_equal(rng[0]["torch"], rng[1]["torch"])
    resumed = _torchrun(ROOT / "train.py", "--resume", f"out_dir={tmp_path / 'b' / 'run'}",
                        "train.epochs=2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "after epoch 1" in resumed.stdout
    got = json.loads((tmp_path / "b" / "run" / "metrics.json").read_text())
    want = json.loads((tmp_path / "a" / "run" / "metrics.json").read_text())
    for m in (got, want):  # the protocol cards differ (out_dir, wall time); the results may not
        assert m.pop("protocol")["selection"]
    assert got == want


def torch_equal(a, b):
    import torch

    return torch.equal(a, b)
