"""Interrupted runs resume exactly; torchrun (gloo, CPU) trains with DDP and its test
metrics equal a single-process evaluation of the same checkpoint."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, make_tiny_database, run_entry, tiny_overrides


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
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
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
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
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
