"""Sequential repeats do not keep the previous splits alive (the peak memory of N repeats
was growing by ~160 MB a split on the demo: docs/performance.md)."""
import gc
import weakref

from conftest import tiny_overrides
from siqa import config
from siqa.training import checkpoints, split_run
from siqa.training import run as runner


def test_nothing_of_a_finished_split_stays_alive(tiny_manifest, tmp_path, monkeypatch, one_torch_thread):
    kept = []
    real_build, real_copy = split_run.build_model, checkpoints.cpu_copy

    def build(cfg, device):
        model = real_build(cfg, device)
        kept.extend(weakref.ref(p) for p in model.parameters())
        return model

    def copy(state):  # the CPU snapshots that the checkpoint writer thread writes
        out = real_copy(state)
        kept.extend(weakref.ref(t) for t in out["model"].values())
        return out

    import threading

    before = set(threading.enumerate())  # writers of other tests' savers are not this run's
    monkeypatch.setattr(split_run, "build_model", build)
    monkeypatch.setattr(checkpoints, "cpu_copy", copy)
    cfg = config.load_config(overrides=tiny_overrides(tiny_manifest, tmp_path, **{
        "train.repeats": 3, "train.epochs": 1}))
    runner.train(cfg, progress=False, log=lambda *a: None)
    gc.collect()
    assert kept and [r for r in kept if r() is not None] == []
    assert not [t for t in set(threading.enumerate()) - before if t.name == "checkpoint-writer"]
