"""Devices and numerics, each CUDA mechanism shown on the CPU where it exists there:
resume with RNG states loaded onto another device, the device index passed on, the
single-process CUDA device made current (tests/test_cuda_host.py, under torch's own checks),
a graph-mode optimizer state resumed by an eager step, scipy_free_loc sent to the CPU pool, the
determinism switches, last.pt every k epochs and written in the background. The tests
marked `cuda` run the same on a GPU and are skipped without one."""
import json

import numpy as np
import pytest
import torch

from conftest import needs_cuda, tiny_overrides
from siqa import config as config_mod
from siqa.checkpoint import load_checkpoint, restore_rng, rng_state
from siqa.device import configure_numerics, select_device
from siqa.errors import UserError
from siqa.training import checkpoints, plan, split_run
from siqa.training import run as runner
from siqa.training.distributed import Dist
from siqa.training.logbook import Logbook


def tiny_cfg(manifest, work, **extra):
    return config_mod.load_config(overrides=tiny_overrides(manifest, work, **extra))


def run(cfg, resume=False, device="cpu"):
    lines = []
    runner.train(cfg, resume=resume, dist=Dist(device=select_device(device)), progress=False,
                     log=lines.append)
    return lines


def metrics(work):
    """metrics.json without its protocol card (out_dir and wall time differ between runs)."""
    m = json.loads((work / "run" / "metrics.json").read_text())
    assert m.pop("protocol")["selection"]
    return m


# ----------------------------------------------------------------- resume and RNG states
def test_rng_state_loaded_onto_another_device_is_the_crash(tmp_path):
    """The mechanism of the CUDA resume crash: set_rng_state takes CPU byte tensors only.
    map_location='meta' stands for the GPU: states loaded there cannot be restored."""
    from siqa.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "c.pt", {"rng": rng_state()})
    moved = load_checkpoint(tmp_path / "c.pt", map_location="meta")["rng"]
    with pytest.raises(UserError, match="map_location='cpu'"):
        restore_rng(moved)
    with pytest.raises((RuntimeError, TypeError)):
        torch.set_rng_state(moved["torch"])


EXTRA = {"train.epochs": 3, "train.checkpoint_every": 2, "train.scatter_every": 2}


@pytest.fixture(scope="module")
def whole_run(tiny_manifest, tmp_path_factory):
    """3 epochs uninterrupted, last.pt every 2 epochs, a scatter plot every 2 validations;
    returns (run folder, epochs whose scatter plot was drawn)."""
    work = tmp_path_factory.mktemp("whole")
    drawn = []
    real = Logbook.scatter
    Logbook.scatter = lambda self, pred, pairs, epoch: drawn.append(epoch)
    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    try:
        torch.set_num_threads(1)
        run(tiny_cfg(tiny_manifest, work, **EXTRA))
    finally:
        Logbook.scatter = real
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1])
    return work, drawn


def test_scatter_every_k_validations(whole_run):
    assert whole_run[1] == [2, 3]  # every 2nd validation, and the last


def test_checkpoint_holds_one_rng_state_per_rank_of_this_device_only(whole_run):
    rng = load_checkpoint(whole_run[0] / "run" / "last.pt")["rng"]
    assert isinstance(rng, list) and len(rng) == 1  # one process: one rank
    assert set(rng[0]) == {"torch"}  # a CPU run saves no CUDA state, not even with GPUs present
    assert rng[0]["torch"].dtype == torch.uint8


def test_checkpoint_every_k_then_resume_on_cpu_whatever_the_device(whole_run, tiny_manifest,
                                                                  tmp_path, monkeypatch,
                                                                  one_torch_thread,
                                                                  process_numerics):
    """A run stopped inside epoch 3 with last.pt every 2 epochs resumes from epoch 2 and ends
    exactly as the uninterrupted run. The resume never maps last.pt onto the training
    device: a loader that sends every device-mapped load to 'meta' (as map_location=<the
    GPU> left the RNG states on the GPU, where set_rng_state cannot take them) still resumes."""
    real_epoch = split_run.epoch_steps
    calls = []

    def stopped_in_epoch_3(*args, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return (yield from real_epoch(*args, **kw))

    monkeypatch.setattr(split_run, "epoch_steps", stopped_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_cfg(tiny_manifest, tmp_path, **EXTRA))
    monkeypatch.setattr(split_run, "epoch_steps", real_epoch)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 2  # not 1, not 3

    real_load = split_run.load_checkpoint
    seen = []

    def load_as_on_gpu(path, map_location="cpu", **kw):
        seen.append(map_location)
        return real_load(path, map_location="meta" if map_location != "cpu" else "cpu", **kw)

    monkeypatch.setattr(split_run, "load_checkpoint", load_as_on_gpu)
    lines = run(tiny_cfg(tiny_manifest, tmp_path, **EXTRA), resume=True)
    assert any("after epoch 2" in line for line in lines)
    assert seen and all(m == "cpu" for m in seen)
    assert metrics(tmp_path) == metrics(whole_run[0])


def test_a_graph_runs_optimizer_state_resumes_as_this_runs_own(tiny_manifest, tmp_path, monkeypatch,
                                                                one_torch_thread, process_numerics):
    """train.step=graph makes the learning rate a device tensor and turns on fused SGD, and
    its last.pt stores both. A resume with train.step=eager must step as an eager run does
    (float learning rate, the default kernels), with the saved learning rate and momentum."""
    run(tiny_cfg(tiny_manifest, tmp_path, **{"train.epochs": 1}))
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    momentum = {k: v["momentum_buffer"].clone() for k, v in state["optimizer"]["state"].items()}
    for group in state["optimizer"]["param_groups"]:  # what _make_capturable leaves (on a GPU)
        group.update(lr=torch.tensor(group["lr"], dtype=torch.float32), fused=True, foreach=False)
    from siqa.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "run" / "last.pt", state)
    seen = []
    real_step = split_run.TrainStep
    monkeypatch.setattr(split_run, "TrainStep",
                        lambda mode, model, optimizer, *a, **kw: seen.append(optimizer) or
                        real_step(mode, model, optimizer, *a, **kw))
    run(tiny_cfg(tiny_manifest, tmp_path, **{"train.epochs": 1}), resume=True)  # finished: skipped
    run(tiny_cfg(tiny_manifest, tmp_path, **{"train.epochs": 2}), resume=True)
    (optimizer,) = seen
    fresh = torch.optim.SGD([torch.zeros(1)], lr=0.5, momentum=0.9)
    for group in optimizer.param_groups:
        assert type(group["lr"]) is float and group["lr"] == pytest.approx(1e-3)
        for key in ("fused", "foreach", "capturable"):
            assert group.get(key) == fresh.param_groups[0].get(key), key
    assert len(momentum) == len(optimizer.state) > 0  # the saved momentum was loaded (then stepped)


def test_load_optimizer_state_keeps_the_saved_numbers():
    """The saved learning rate (a tensor from a graph run), momentum and weight decay are
    kept; only the execution options become this optimizer's own."""
    from siqa.training.step import _make_capturable

    w = torch.nn.Parameter(torch.ones(3))
    captured = torch.optim.SGD([w], lr=0.25, momentum=0.9, weight_decay=0.01)
    _make_capturable(captured, torch.device("cpu"))
    w.grad = torch.full((3,), 2.0)
    captured.step()
    saved = captured.state_dict()
    v = torch.nn.Parameter(torch.zeros(3))
    eager = torch.optim.SGD([v], lr=1.0, momentum=0.5)
    split_run.load_optimizer_state(eager, saved)
    group = eager.param_groups[0]
    assert group["lr"] == 0.25 and type(group["lr"]) is float
    assert (group["momentum"], group["weight_decay"]) == (0.9, 0.01)
    assert group["fused"] is None and group["foreach"] is None
    assert torch.equal(eager.state[v]["momentum_buffer"], captured.state[w]["momentum_buffer"])


def test_concurrent_splits_tell_their_step_so(tiny_manifest, tmp_path, monkeypatch, one_torch_thread,
                                             process_numerics):
    """train.concurrent_splits hands `concurrent=True` to each split's TrainStep (compile
    then leaves out the compiler's CUDA graphs, siqa.scoring.compile_mode); one split alone
    does not."""
    flags = []
    real_step = split_run.TrainStep
    monkeypatch.setattr(split_run, "TrainStep",
                        lambda *a, concurrent=False, **kw: flags.append(concurrent) or real_step(*a, **kw))
    run(tiny_cfg(tiny_manifest, tmp_path / "a", **{"train.epochs": 1, "train.repeats": 2,
                                                   "train.concurrent_splits": True}))
    run(tiny_cfg(tiny_manifest, tmp_path / "b", **{"train.epochs": 1}))
    assert flags == [True, True, False]


def test_resume_from_an_older_single_state_checkpoint():
    """Checkpoints written before per-rank states hold one dict: it is rank 0's."""
    torch.manual_seed(5)
    old = rng_state()
    want = torch.rand(4)
    assert checkpoints.restore_rank_rng(old, Dist(), seed=0, epoch=1)
    assert torch.equal(torch.rand(4), want)


def test_background_saver_writes_in_order_and_reports_a_failed_write(tmp_path):
    saver = checkpoints.BackgroundSaver()
    weights = torch.arange(4.0)
    saver.save(tmp_path / "a.pt", {"w": weights})
    weights += 100  # training goes on: the checkpoint keeps the state at save time
    saver.save(tmp_path / "a.pt", {"w": weights.clone(), "second": 1})
    saver.wait()
    state = load_checkpoint(tmp_path / "a.pt")
    assert state["second"] == 1 and torch.equal(state["w"], torch.arange(4.0) + 100)
    (tmp_path / "file").write_text("x")
    saver.save(tmp_path / "file" / "b.pt", {"w": weights})  # a folder that is a file
    with pytest.raises(OSError):
        saver.wait()
    saver.close()  # its writer thread ends


# ----------------------------------------------------------------- devices
def test_nss_precompute_gets_the_device_with_its_index(tiny_manifest, tmp_path, monkeypatch):
    seen = {}

    class Stop(Exception):
        pass

    def fake_nss(pairs, nss_cfg=None, progress=True, device="cpu"):
        seen["device"] = device
        raise Stop

    monkeypatch.setattr(plan, "nss_from_config", fake_nss)
    # the switches a CUDA run would set, without setting them in this process
    monkeypatch.setattr(plan, "configure_numerics",
                        lambda *a: {"deterministic": True, "tf32": False})
    with pytest.raises(Stop):
        runner.train(tiny_cfg(tiny_manifest, tmp_path), dist=Dist(device=torch.device("cuda", 1)),
                         progress=False, log=lambda *a: None)
    assert str(seen["device"]) == "cuda:1"


def test_nss_cache_batches_on_the_named_gpu(tiny_manifest, tmp_path, monkeypatch):
    from siqa.data import load_database
    from siqa.nss import cache

    pairs = load_database("csv", manifest=tiny_manifest)[:3]
    seen = []

    def fake_batch(lefts, rights, marginal, preprocess, device):
        seen.append(device)
        return np.ones((len(lefts), 108))

    monkeypatch.setattr(cache, "nss_features_batch", fake_batch)
    cache.nss_targets([(p.left, p.right) for p in pairs], cache_dir=tmp_path, device="cuda:1",
                      progress=False)
    assert seen and all(str(d) == "cuda:1" for d in seen)


class InProcessPool:
    """Stands in for ProcessPoolExecutor: runs the jobs here, records that it was used."""

    used = []

    def __init__(self, workers, **kw):
        InProcessPool.used.append(workers)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def submit(self, fn, *args):
        from concurrent.futures import Future

        fut = Future()
        fut.set_result(fn(*args))
        return fut


def test_scipy_free_loc_on_cuda_goes_to_the_cpu_pool(tiny_manifest, tmp_path, monkeypatch):
    import concurrent.futures

    from siqa.data import load_database
    from siqa.nss import cache

    pairs = [(p.left, p.right) for p in load_database("csv", manifest=tiny_manifest)[:2]]

    def no_gpu(*a, **kw):
        raise AssertionError("scipy_free_loc must not take the GPU path")

    monkeypatch.setattr(cache, "nss_features_batch", no_gpu)
    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", InProcessPool)
    InProcessPool.used.clear()
    got = cache.nss_targets(pairs, marginal="scipy_free_loc", cache_dir=tmp_path / "gpu",
                            workers=2, device="cuda", progress=False)
    assert InProcessPool.used == [2]
    want = np.stack([cache.compute_pair(left, right, "scipy_free_loc") for left, right in pairs])
    np.testing.assert_array_equal(got, want)


# ----------------------------------------------------------------- determinism
def test_determinism_auto_is_on_for_cpu_off_for_cuda(monkeypatch, process_numerics):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    assert configure_numerics("auto", "auto", torch.device("cpu")) == {
        "deterministic": True, "tf32": False}
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    import os

    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    # the switches only: no CUDA call is made, so a CPU machine can check the CUDA choice
    assert configure_numerics("auto", "auto", torch.device("cuda")) == {
        "deterministic": False, "tf32": True}
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.benchmark and torch.backends.cuda.matmul.allow_tf32
    assert torch.backends.cudnn.allow_tf32
    assert configure_numerics(True, False, torch.device("cuda")) == {
        "deterministic": True, "tf32": False}
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32


@pytest.mark.parametrize("key,value,ok", [
    ("train.deterministic", "auto", True), ("train.deterministic", "false", True),
    ("train.deterministic", "maybe", False), ("train.deterministic", "1", False),
    ("train.tf32", "true", True), ("train.checkpoint_every", "0", False),
    ("train.scatter_every", "3", True), ("dataset.demo_size", "full", True),
    ("dataset.demo_size", "huge", False),
])
def test_new_config_keys(key, value, ok):
    if ok:
        config_mod.load_config(overrides=[f"{key}={value}"])
    else:
        with pytest.raises(UserError, match=key):
            config_mod.load_config(overrides=[f"{key}={value}"])


# ----------------------------------------------------------------- on a GPU
@needs_cuda
def test_cuda_rng_state_of_this_device_restores_after_a_gpu_load(tmp_path):
    from siqa.checkpoint import save_checkpoint

    device = torch.device("cuda", torch.cuda.device_count() - 1)
    torch.manual_seed(7)
    state = rng_state(device)
    assert state["cuda"].dtype == torch.uint8 and state["cuda"].device.type == "cpu"
    want = torch.rand(8, device=device)
    save_checkpoint(tmp_path / "c.pt", {"rng": state})
    on_gpu = load_checkpoint(tmp_path / "c.pt", map_location=device)["rng"]  # the old crash
    restore_rng(on_gpu, device)
    assert torch.equal(torch.rand(8, device=device), want)
    # an older checkpoint's list of every visible GPU's state
    restore_rng({"torch": state["torch"], "cuda": [state["cuda"]] * (device.index + 1)}, device)
    assert torch.equal(torch.rand(8, device=device), want)


@needs_cuda
def test_cuda_deterministic_resume_equals_uninterrupted(tiny_manifest, tmp_path, process_numerics):
    extra = {"device": "cuda", "train.deterministic": True, "train.tf32": False}
    run(tiny_cfg(tiny_manifest, tmp_path / "whole", **extra, **{"train.epochs": 2}), device="cuda")
    run(tiny_cfg(tiny_manifest, tmp_path / "cut", **extra, **{"train.epochs": 1}), device="cuda")
    run(tiny_cfg(tiny_manifest, tmp_path / "cut", **extra, **{"train.epochs": 2}), resume=True,
        device="cuda")
    assert metrics(tmp_path / "cut") == metrics(tmp_path / "whole")


@needs_cuda
def test_cuda_nss_on_the_named_device_equals_cpu(tiny_manifest, tmp_path):
    from siqa.data import load_database
    from siqa.nss import cache

    pairs = [(p.left, p.right) for p in load_database("csv", manifest=tiny_manifest)[:4]]
    device = f"cuda:{torch.cuda.device_count() - 1}"
    gpu = cache.nss_targets(pairs, cache_dir=tmp_path / "gpu", device=device, progress=False)
    cpu = cache.nss_targets(pairs, cache_dir=tmp_path / "cpu", workers=1, progress=False)
    np.testing.assert_allclose(gpu, cpu, rtol=0, atol=1e-8)
