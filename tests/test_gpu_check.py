"""benchmarks/gpu_check.py: its arithmetic and parsing against hand-computed values, and a
smoke run on the CPU (--quick: the tiny synthetic database; the pytest and throughput
steps, which cost minutes on a CPU and are exercised elsewhere, left out)."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_projection_of_the_500_epoch_protocol(gpu_check):
    # 79,716 training patch pairs at 100k/s + 26,572 scored at 300k/s, 500 times
    one = 500 * (79_716 / 100_000 + 26_572 / 300_000)
    assert gpu_check.project(100_000, 300_000) == pytest.approx(one)
    assert gpu_check.project(100_000, 300_000, splits=10) == pytest.approx(10 * one)
    concurrent = 500 * (10 * 79_716 / 250_000 + 10 * 26_572 / 300_000)
    assert gpu_check.project(100_000, 300_000, 10, aggregate_rate=250_000) == pytest.approx(concurrent)


def test_parses_train_py_epoch_lines(gpu_check):
    log = ("epoch 1/3 loss 2.0 (quality 1.0, nss 0.04) | val SROCC 0.5000 PLCC 0.6 RMSE 9.000 [1.5s]\n"
           "epoch 2/3 loss 1.0 (quality 0.5, nss 0.02) [0.5s]\n"
           "epoch 3/3 loss 0.9 (quality 0.4, nss 0.02) | val SROCC n/a PLCC n/a RMSE 9.000 [2.0s]\n")
    assert gpu_check.val_curve(log) == [(1, 0.5), (3, None)]
    assert gpu_check.epoch_seconds(log) == [1.5, 0.5, 2.0]
    assert gpu_check.numbers_diff({"a": [1, 2.5], "b": {"c": 3}}, {"a": [1, 2.0], "b": {"c": 3.25}}) == 0.5


def test_unknown_step_is_refused(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), str(tmp_path),
                           "--only", "nope"], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "unknown step" in proc.stderr


def quick_cpu_check(tmp_path, *flags):
    """Run `gpu_check.py OUT --device cpu --quick FLAGS` to its end; returns OUT."""
    out = tmp_path / "check"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), str(out),
                           "--device", "cpu", "--quick", *flags],
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def test_quick_cpu_run_writes_its_reports(tmp_path):
    out = quick_cpu_check(tmp_path, "--skip", "tests,throughput")
    report = json.loads((out / "gpu_check.json").read_text())
    steps = report["steps"]
    assert list(steps) == ["demo", "resume", "nss", "projection", "protocol"]
    for name in ("demo", "resume", "nss", "protocol"):
        assert steps[name]["status"] == "ok", (name, steps[name])
    assert steps["resume"]["result"]["identical"] is True
    assert steps["nss"]["result"]["max_abs_diff"] <= 1e-8
    # without the throughput step there is nothing to project from: recorded, not fatal
    assert steps["projection"]["status"] == "failed" and "throughput" in steps["projection"]["error"]
    for norm in ("reference", "contrast"):
        run = steps["protocol"]["result"][norm]
        assert run["epochs_done"] == 2 and run["test"] is not None
    md = (out / "gpu_check.md").read_text()
    assert "| resume | ok |" in md and "| projection | failed |" in md


def test_quick_cpu_throughput_times_one_split_and_two_at_once(tmp_path):
    """The throughput step runs benchmarks/train_throughput.py per variant, and --splits for
    the splits trained at once (on the CPU two, eagerly: a smoke test of that path)."""
    out = quick_cpu_check(tmp_path, "--only", "throughput")
    rates = json.loads((out / "gpu_check.json").read_text())["steps"]["throughput"]["result"]
    assert set(rates) == {"eager/fp32", "concurrent x2 eager/fp32"}
    together = rates["concurrent x2 eager/fp32"]
    assert together["splits"] == 2 and together["patch_pairs_per_s"] > 0
    assert rates["eager/fp32"]["splits"] == 1
