"""benchmarks/train_throughput.py --model: every network through the training step train.py
runs (siqa.training.step.TrainStep with the network's own spec and patch shape), one row each.
Figures only: how fast is for the benchmark to print, never asserted here."""
import sys
from pathlib import Path

import pytest

from siqa.models import MODELS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import train_throughput as bench  # noqa: E402


def test_every_network_gives_one_row_of_positive_figures(process_numerics, one_torch_thread):
    names = sorted(MODELS)
    rows = bench.measure_models(names, steps=1, warmup=1, pairs=1, val_pairs=0, batch=2)
    assert [r["model"] for r in rows] == names
    for r in rows:
        spec = MODELS[r["model"]].spec
        assert r["input"] == f"{spec.channels}x{spec.patch}x{spec.patch}" and r["batch"] == 2
        assert r["timed_steps"] == 1 and r["rate"] > 0 and r["ms_per_step"] > 0
        assert r["rate"] == pytest.approx(1000 * r["batch"] / r["ms_per_step"])


def test_padnet_gets_a_small_batch_on_the_cpu():
    args = bench.make_parser().parse_args(["--model", "padnet"])
    import torch

    assert bench.batch_of(args, torch.device("cpu")) == 4
    assert bench.batch_of(bench.make_parser().parse_args([]), torch.device("cpu")) == bench.BATCH
