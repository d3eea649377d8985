"""The CUDA host code run on a machine without a GPU, as far as such a machine can take it.

`one_gpu` (tests/cuda_harness.py) presents one GPU by replacing only the driver bindings, so
torch.cuda's own checks run. Under it each entry point is run in this process, with
device=auto, up to the first real CUDA work, where PyTorch's own "no driver" error must be
what stops it: any error of the project's host code before that point (the unindexed
device that torch.cuda.set_device refused, on every CUDA machine) fails the test.
FakeTensorMode then takes the scoring and the loss further (without the harness, which it
does not need): fake tensors on "cuda:0" run the forward passes and the aggregation with
PyTorch's device checks, which catches a tensor left on the CPU."""
import os
import subprocess
import sys
import traceback

import cuda_harness
import numpy as np
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from conftest import synthetic_split, tiny_overrides
from siqa.errors import UserError
from siqa.settings import Settings

CUDA0 = torch.device("cuda", 0)


@pytest.fixture
def one_gpu(monkeypatch, process_numerics):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    return cuda_harness.install(monkeypatch)


def stops_at_first_kernel(call):
    """Run `call`; it must end in PyTorch's missing-driver error. Returns the project's
    innermost frame on the way there, as (file name, function, source line)."""
    with pytest.raises(RuntimeError, match=cuda_harness.FIRST_KERNEL) as info:
        call()
    ours = [f for f in traceback.extract_tb(info.value.__traceback__)
            if "/siqa/" in f.filename or f.filename.endswith(("train.py", "evaluate.py", "predict.py"))]
    assert ours, "the error did not come through the project's code"
    return ours[-1].filename.rsplit("/", 1)[-1], ours[-1].name, ours[-1].line


# ------------------------------------------------------------------ the harness itself
def test_harness_keeps_torchs_own_checks(one_gpu):
    assert torch.cuda.is_available() and torch.cuda.device_count() == 1
    assert torch.cuda.current_device() == 0
    with pytest.raises(ValueError, match="specified index"):  # the crash of train.py at 8343d43
        torch.cuda.set_device(torch.device("cuda"))
    torch.cuda.set_device(CUDA0)
    with pytest.raises(RuntimeError, match="invalid device ordinal"):
        torch.cuda.set_device("cuda:1")
    torch.manual_seed(3)  # seeds the GPU's generator too, as on a GPU
    state = torch.cuda.get_rng_state(CUDA0)
    assert state.dtype == torch.uint8 and state.numel() == 16 and state[0] == 3
    with pytest.raises(TypeError, match="ByteTensor"):
        torch.cuda.set_rng_state(state.float(), CUDA0)
    with pytest.raises(RuntimeError, match=cuda_harness.FIRST_KERNEL):
        torch.zeros(1, device=CUDA0)
    generator = torch.cuda.default_generators[0]  # graph-safe states are shared, clones are not
    shared, clone = generator.graphsafe_get_state(), generator.clone_state()
    generator.manual_seed(11)
    assert shared.initial_seed() == 11 and clone.initial_seed() == 3
    generator.graphsafe_set_state(clone)
    generator.manual_seed(12)
    assert clone.initial_seed() == 12 and shared.initial_seed() == 11


def test_harness_is_gone_after_the_test():
    assert torch.cuda.is_available() == (torch.cuda.device_count() > 0)
    assert not isinstance(getattr(torch.cuda, "default_generators", ()) and
                          torch.cuda.default_generators[0], cuda_harness.Generator)


# ------------------------------------------------------------------ devices
def test_cuda_devices_always_carry_their_index(one_gpu):
    from siqa.device import select_device

    assert select_device("auto") == CUDA0
    assert select_device("cuda") == CUDA0
    assert select_device(torch.device("cuda")) == CUDA0
    assert select_device("cuda:0") == CUDA0
    assert select_device("cpu") == torch.device("cpu")
    with pytest.raises(UserError, match="only 1 CUDA device"):
        select_device("cuda:1")


def test_one_process_makes_its_device_current_through_torchs_set_device(one_gpu):
    from siqa.training import distributed

    assert distributed.setup("auto").device == CUDA0
    assert torch.cuda.current_device() == 0


# ------------------------------------------------------------------ the entry points
def test_train_py_with_device_auto_runs_to_the_first_kernel(one_gpu, tiny_manifest, tmp_path):
    """Cold NSS cache: the targets are computed on the GPU, the first real work there.
    Warm cache: the run goes on to the split's patches, moved to the GPU."""
    import train

    overrides = tiny_overrides(tiny_manifest, tmp_path, device="auto")
    assert stops_at_first_kernel(lambda: train.main(overrides))[0] in ("cache.py", "features.py",
                                                                       "transform.py")
    from siqa import config
    from siqa.data import load_database_from_config as load_pairs
    from siqa.data.nss import nss_from_config

    settings = Settings(config.load_config(overrides=overrides))
    nss_from_config(load_pairs(settings), settings, progress=False, device="cpu")
    file, _, line = stops_at_first_kernel(lambda: train.main(overrides))
    assert file == "inputs.py" and "t.to(device" in line  # SplitData.to
    assert torch.backends.cudnn.benchmark and torch.backends.cudnn.allow_tf32  # CUDA's numerics
    assert not (tmp_path / "run").exists()  # nothing half-written


def test_evaluate_py_applies_the_runs_numerics_and_runs_to_the_first_kernel(one_gpu, checkpoint,
                                                                          tmp_path):
    import evaluate

    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    where = stops_at_first_kernel(lambda: evaluate.main(["--checkpoint", str(checkpoint),
                                                         "--out", str(tmp_path / "eval")]))
    assert where[:2] == ("build.py", "build_model")
    # the run's train.tf32=auto / deterministic=auto, resolved for CUDA as train.py does;
    # scoring picks cuDNN's kernels by heuristics (the same in every process), not by timing
    assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    assert not torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
    assert not (tmp_path / "eval").exists()


def test_predict_py_and_siqa_load_run_to_the_first_kernel(one_gpu, checkpoint, tiny_manifest):
    import predict
    import siqa

    views = [str(tiny_manifest.parent / "s0_1_l.png"), str(tiny_manifest.parent / "s0_1_r.png")]
    # the checkpoint's tensors moved to cuda:0 (siqa.checkpoint's map_location)
    for call in (lambda: predict.main(["--checkpoint", str(checkpoint), *views]),
                 lambda: siqa.load(checkpoint, device="auto")):
        file, _, line = stops_at_first_kernel(call)
        assert file == "checkpoint.py" and "tensor.to(map_location)" in line


# ------------------------------------------------------------------ further, on fake tensors
NUMPY_OF_FAKE = r"\.numpy\(\) is not supported for tensor subclasses"


def test_scoring_on_fake_cuda_tensors_keeps_every_tensor_on_the_gpu():
    """predict_pairs (evaluate.py, validation) and StereoIQA's scoring (predict.py, the API)
    run their device work on fake cuda:0 tensors; the only thing they cannot do is read the
    values back (the final .numpy(), where the test stops). A tensor left on the CPU would
    raise FakeTensorDeviceMismatchError before."""
    from siqa.inference.api import StereoIQA
    from siqa.models.bourbia2021 import MultiTaskSIQA
    from siqa.scoring import predict_pairs

    data = synthetic_split(num_pairs=3, per_pair=5)
    views = np.random.default_rng(0).integers(0, 256, (2, 64, 80), dtype=np.uint8)
    network = MultiTaskSIQA().to(memory_format=torch.channels_last)  # as the runs build it
    api_network = MultiTaskSIQA()  # made real: modules are moved onto fake devices, not built there
    with FakeTensorMode(allow_non_fake_inputs=True):
        network = network.to(CUDA0)
        assert next(network.parameters()).device == CUDA0
        on_gpu = data.to(CUDA0)
        with pytest.raises(RuntimeError, match=NUMPY_OF_FAKE):
            predict_pairs(network, on_gpu)
        model = StereoIQA(api_network, {"name": "x", "higher_is_better": False, "score_min": 0,
                                            "score_max": 1}, device=CUDA0)
        assert next(model.network.parameters()).device == CUDA0
        with pytest.raises(RuntimeError, match=NUMPY_OF_FAKE):
            model.score(views[0], views[1])
        with pytest.raises(Exception, match=r"cpu.*cuda:0|cuda:0.*cpu"):  # what it catches: data left on the CPU
            predict_pairs(network, data)


def test_training_loss_on_fake_cuda_tensors():
    """The joint loss of a batch (gather, forward, both L1 terms) on the GPU. Not reached
    here: bf16 autocast (torch.autocast asks the driver whether the GPU has bf16 and turns
    itself off without one) and the backward pass; gpu_check runs both on a GPU."""
    from siqa.models.bourbia2021 import MultiTaskSIQA
    from siqa.training.step import epoch_order, joint_loss

    network = MultiTaskSIQA()
    with FakeTensorMode(allow_non_fake_inputs=True):
        network = network.to(CUDA0)
        data = synthetic_split(num_pairs=3, per_pair=5).to(CUDA0)
        idx = epoch_order(data.num_patches, seed=0, epoch=0)[:8].to(CUDA0)
        total, quality, nss = joint_loss(network, data, idx, 25.0, network.spec)
        assert total.device == CUDA0 and total.dtype == torch.float32 and total.dim() == 0


def test_scoring_picks_cudnn_kernels_by_heuristics_and_puts_the_switch_back(process_numerics):
    """Training on CUDA times cuDNN's kernels (benchmark mode); validation, test and
    evaluate.py scoring must not, or two processes may score with different kernels."""
    from siqa.models.bourbia2021 import MultiTaskSIQA
    from siqa.scoring import Scorer, predict_pairs

    class Recording(Scorer):
        seen = []

        def __call__(self, left, right, full=True):
            Recording.seen.append(torch.backends.cudnn.benchmark)
            return super().__call__(left, right, full)

    network = MultiTaskSIQA()
    torch.backends.cudnn.benchmark = True
    predict_pairs(network, synthetic_split(num_pairs=2, per_pair=3), batch_size=4,
                  scorer=Recording("eager", network))
    assert Recording.seen == [False, False] and torch.backends.cudnn.benchmark


# ------------------------------------------------------------------ combinations
def test_compile_uses_the_compilers_cuda_graphs_only_for_one_split_in_one_process(monkeypatch):
    from siqa.models.bourbia2021 import MultiTaskSIQA
    from siqa.scoring import compile_mode
    from siqa.training.step import TrainStep

    assert compile_mode(CUDA0) == "reduce-overhead"
    assert compile_mode(CUDA0, ddp=True) is None
    assert compile_mode(CUDA0, concurrent=True) is None
    assert compile_mode(torch.device("cpu")) is None
    modes = []
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: modes.append(kw["mode"]) or real(model, **kw))
    model = MultiTaskSIQA()
    with FakeTensorMode(allow_non_fake_inputs=True):
        model = model.to(CUDA0)
        sgd = torch.optim.SGD(model.parameters(), lr=1e-3)
        TrainStep("compile", model, sgd, 32, 25.0, concurrent=True)
        TrainStep("compile", model, sgd, 32, 25.0)
    assert modes == [None, None, "reduce-overhead", "reduce-overhead"]  # train step, scorer


# ------------------------------------------------------------------ the GPU box's image
def test_cuda_tests_are_collected_without_the_test_oracles(tmp_path):
    """The GPU image has no dtcwt: `pytest -m cuda tests` must still collect every module
    (at 8343d43 four modules imported it at collection and no CUDA test ran)."""
    from conftest import ROOT

    (tmp_path / "dtcwt.py").write_text("raise ImportError('dtcwt is not installed here')\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "cuda",
                           "-p", "no:cacheprovider", str(ROOT / "tests")], cwd=ROOT,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 0, proc.stdout[-2000:]
    collected = [line for line in proc.stdout.splitlines() if "::" in line]
    assert len(collected) >= 12 and "error" not in proc.stdout.splitlines()[-1], proc.stdout[-500:]


def test_subprocesses_keep_the_callers_python_path(tmp_path, monkeypatch):
    """Wheels installed with `pip install --target DIR` reach a process through PYTHONPATH:
    the tests' subprocesses put the repository first and keep the caller's entries."""
    from conftest import ROOT, python_path

    (tmp_path / "carried_wheel.py").write_text("WHERE = 'carried'\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    assert python_path().split(":") == [str(ROOT), str(tmp_path)]
    out = subprocess.run([sys.executable, "-c", "import carried_wheel, siqa; print(carried_wheel.WHERE)"],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": python_path()},
                         cwd=tmp_path.parent)
    assert out.stdout.strip() == "carried", out.stderr
