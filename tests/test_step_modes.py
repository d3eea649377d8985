"""train.step: the compiled and the CUDA-graph steps compute what the eager step computes;
DDP ranks run equal shares and log the same, reduced, losses.

The compile tests use a small two-output network with dropout (the engine is model-agnostic)
because compiling the 15M-parameter network takes minutes on a 2-core CPU. The CUDA-graph
tests use the real network and skip without a GPU.
"""
import copy
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from conftest import needs_cuda, run_entry, synthetic_split, tiny_overrides, train_epoch
from siqa.config import load_config
from siqa.errors import UserError
from siqa.models.bourbia2021 import MultiTaskSIQA
from siqa.scoring import predict_pairs
from siqa.training.step import TrainStep, check_step_mode, epoch_order


class SmallNet(torch.nn.Module):
    """forward(left, right) -> (quality (B,), nss (B, 108)), with a conv, pooling and dropout."""

    spec = MultiTaskSIQA.spec  # the paper's inputs and outputs

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 16 * 16, 32)
        self.drop = torch.nn.Dropout(0.5)
        self.quality = torch.nn.Linear(32, 1)
        self.nss = torch.nn.Linear(32, 108)

    def forward(self, left, right):
        x = torch.max_pool2d(torch.relu(self.conv(left) - self.conv(right)), 2).flatten(1)
        h = self.drop(self.fc(x))
        return self.quality(h).squeeze(-1), self.nss(h)



def sgd(model, lr=1e-3):
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)


def run_epochs(model, optimizer, data, batch, epochs, step=None, scheduler=None, dropout_seed=5):
    """Per-epoch mean losses over `epochs` epochs of the seeded order."""
    torch.manual_seed(dropout_seed)
    losses = []
    for epoch in range(epochs):
        order = epoch_order(data.num_patches, 0, epoch).to(data.left.device)
        losses.append(train_epoch(model, optimizer, data, order, batch, 25.0, step=step)["total"])
        if scheduler is not None:
            scheduler.step()
    return losses


def max_weight_difference(a, b):
    return max((pa - pb).abs().max().item() for pa, pb in zip(a.parameters(), b.parameters()))


def relative_difference(a, b, start):
    """|a - b| over |a - start| (all parameters): how far two trained copies are apart,
    relative to how far training moved them (Adam's sign-like steps on near-zero gradients
    make an absolute bound meaningless)."""
    vec = torch.nn.utils.parameters_to_vector
    return ((vec(a.parameters()) - vec(b.parameters())).norm()
            / (vec(a.parameters()) - vec(start.parameters())).norm()).item()


def test_compiled_step_and_scoring_equal_eager_on_cpu(one_torch_thread):
    """torch.compile on CPU (inductor). Tolerance: inductor fuses element-wise ops and
    reorders float32 reductions (the L1 means, the bias gradients), so every step differs
    from eager by float32 rounding, ~1e-7 relative; over 6 SGD steps that stays far below
    1e-5. fallback_random makes compiled dropout draw eager's masks, as the PyTorch docs
    advise for comparing the two; without it only the masks would differ."""
    import torch._inductor.config as inductor_config

    # config.patch, not monkeypatch: undoing a monkeypatch deletes the option from the
    # config module, which later compiles (the ONNX exporter) then fail to find.
    with inductor_config.patch(fallback_random=True):
        data = synthetic_split(num_pairs=4, per_pair=24)  # 96 patches: 3 full steps of 32 per epoch
        torch.manual_seed(0)
        eager_model = SmallNet()
        compiled_model = copy.deepcopy(eager_model)
        eager_opt, compiled_opt = sgd(eager_model, 1e-2), sgd(compiled_model, 1e-2)
        step = TrainStep("compile", compiled_model, compiled_opt, 32, 25.0)
        want = run_epochs(eager_model, eager_opt, data, 32, 2)
        got = run_epochs(compiled_model, compiled_opt, data, 32, 2, step=step)
        np.testing.assert_allclose(got, want, rtol=1e-5)
        assert max_weight_difference(eager_model, compiled_model) < 1e-6
        assert max_weight_difference(eager_model, SmallNet()) > 1e-3  # the steps trained the model
        np.testing.assert_allclose(predict_pairs(compiled_model, data, 32, scorer=step.scorer),
                                   predict_pairs(eager_model, data, 32), rtol=1e-5)


def test_compiled_scorer_outputs_survive_its_next_call():
    """A compiled scorer's outputs belong to the caller: under mode="reduce-overhead" the
    compiler's CUDA graphs write every call's outputs into the same memory, and run_batches
    keeps slices of earlier batches until a pair's patches are all scored. Here a forward
    that returns one reused buffer stands in for the compiled model (on the CPU the compiler
    makes no graphs): 3 batches of 4 score as the eager model does."""
    from siqa.scoring import Scorer

    data = synthetic_split(num_pairs=3, per_pair=4)
    torch.manual_seed(0)
    model = SmallNet().eval()
    scorer = Scorer("eager", model)
    scorer.mode = "compile"
    reused = {}

    def forward(left, right):
        outputs = model(left, right)
        for i, out in enumerate(outputs):
            reused.setdefault(i, torch.empty_like(out)).copy_(out)
        return tuple(reused[i] for i in range(len(outputs)))

    scorer.forward = forward
    np.testing.assert_array_equal(predict_pairs(model, data, 4, scorer=scorer), predict_pairs(model, data, 4))


def test_graph_step_on_cpu_is_a_user_error_naming_the_key():
    model = SmallNet()
    with pytest.raises(UserError, match=r"train\.step=graph needs CUDA"):
        TrainStep("graph", model, sgd(model), 32, 25.0)
    with pytest.raises(UserError, match=r"train\.step=graph needs CUDA"):
        check_step_mode("graph", torch.device("cpu"))
    with pytest.raises(UserError, match=r"train\.step=graph is for one process"):
        check_step_mode("graph", torch.device("cuda"), world=2)
    with pytest.raises(UserError, match="train.step"):
        load_config(overrides=["train.step=fast"])
    assert load_config(overrides=["train.step=compile"])["train"]["step"] == "compile"
    assert load_config()["train"]["step"] == "auto"


def test_auto_step_is_the_graph_for_one_cuda_process_and_eager_elsewhere():
    from siqa.training.step import fused_step, step_of

    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert step_of("auto", cuda) == "graph"
    assert step_of("auto", cpu) == "eager"
    assert step_of("auto", cuda, world=2) == "eager"  # DDP's all-reduce between the pieces
    assert fused_step(step_of("auto", cuda)) == "graph"  # fused splits capture their rounds
    assert fused_step(step_of("compile", cuda)) == "eager"  # compile: the scoring only
    assert step_of("compile", cpu) == "compile"  # an explicit value as it is


def test_train_py_with_graph_step_on_cpu_exits_2_before_writing(tiny_manifest, tmp_path):
    proc = run_entry("train.py", *tiny_overrides(tiny_manifest, tmp_path, device="cpu",
                                                 **{"train.step": "graph"}))
    assert proc.returncode == 2
    assert "train.step=graph needs CUDA" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


# --- DDP: equal shares, no Join, reduced losses (2 gloo processes on CPU) ---------------

def _ddp_worker(rank, world, port, result_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        data = synthetic_split(num_pairs=5, per_pair=15)  # 75 patches: 38 + 37, padded to 38 + 38
        torch.manual_seed(0)
        model = torch.nn.parallel.DistributedDataParallel(SmallNet())
        optimizer = sgd(model, 1e-2)
        step = TrainStep("eager", model, optimizer, 16, 25.0)
        own = []  # this rank's own per-step losses, before any reduction

        def recording_step(data, idx):
            losses = step(data, idx)
            own.append(losses)
            return losses

        torch.manual_seed(100 + rank)
        order = epoch_order(data.num_patches, 0, 0, rank, world)
        logged = train_epoch(model, optimizer, data, order, 16, 25.0, step=recording_step)
        torch.save({"logged": logged, "order": order, "own_mean": torch.stack(own).mean(0),
                    "weights": [p.detach().clone() for p in model.parameters()]},
                   os.path.join(result_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_ranks_run_equal_shares_and_log_the_reduced_losses(tmp_path):
    """Without equal shares (and without Join) the rank with one step more would wait
    forever in its gradient all-reduce; here both ranks run 3 steps (16, 16, 6)."""
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert len(ranks[0]["order"]) == len(ranks[1]["order"]) == 38
    covered = torch.cat([r["order"] for r in ranks]).unique()
    assert torch.equal(covered, torch.arange(75))
    assert ranks[0]["logged"] == ranks[1]["logged"]  # every rank logs the same figure
    want = ((ranks[0]["own_mean"] + ranks[1]["own_mean"]) / 2).tolist()
    assert not torch.allclose(ranks[0]["own_mean"], ranks[1]["own_mean"])  # ranks differed
    got = ranks[0]["logged"]
    np.testing.assert_allclose([got["total"], got["quality"], got["nss"]], want, rtol=1e-6)
    for a, b in zip(ranks[0]["weights"], ranks[1]["weights"]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # the same averaged gradients


# --- CUDA graphs (skip without a GPU) ---------------------------------------------------

def _real_pair(device, seed=3):
    torch.manual_seed(seed)
    a = MultiTaskSIQA().to(device)
    b = copy.deepcopy(a)
    return a, b


@needs_cuda
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_graph_step_equals_eager_step_with_a_tail_batch(optimizer):
    """Losses and weights after 3 epochs of 4 full steps and a tail of 40 (eager in graph
    mode). TF32 off so that both paths do float32 arithmetic; the fused / capturable
    optimizer kernels round slightly differently from the foreach ones: tolerance 1e-4."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = torch.device("cuda")
    data = synthetic_split(num_pairs=4, per_pair=138, device=device)  # 552 = 4 x 128 + 40
    eager, graphed = _real_pair(device)
    start = copy.deepcopy(eager)
    make = (sgd if optimizer == "sgd" else
            lambda m: torch.optim.Adam(m.parameters(), lr=1e-4, weight_decay=1e-4))
    opt_e, opt_g = make(eager), make(graphed)
    step = TrainStep("graph", graphed, opt_g, 128, 25.0)
    want = run_epochs(eager, opt_e, data, 128, 3)
    got = run_epochs(graphed, opt_g, data, 128, 3, step=step)
    np.testing.assert_allclose(got, want, rtol=1e-4)
    assert relative_difference(eager, graphed, start) < 1e-2
    assert got[0] != got[-1]
    np.testing.assert_allclose(predict_pairs(graphed, data, 128, scorer=step.scorer),
                               predict_pairs(eager, data, 128), rtol=1e-4)


@needs_cuda
def test_graph_step_honours_a_step_lr_schedule():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = torch.device("cuda")
    data = synthetic_split(num_pairs=2, per_pair=128, device=device)  # 2 full steps, no tail
    eager, graphed = _real_pair(device)
    opt_e, opt_g = sgd(eager, 1e-2), sgd(graphed, 1e-2)
    sched_e = torch.optim.lr_scheduler.StepLR(opt_e, 1, 0.1)
    sched_g = torch.optim.lr_scheduler.StepLR(opt_g, 1, 0.1)
    step = TrainStep("graph", graphed, opt_g, 128, 25.0)
    want = run_epochs(eager, opt_e, data, 128, 3, scheduler=sched_e)
    got = run_epochs(graphed, opt_g, data, 128, 3, step=step, scheduler=sched_g)
    assert float(opt_g.param_groups[0]["lr"]) == pytest.approx(1e-5)
    np.testing.assert_allclose(got, want, rtol=1e-4)
    assert max_weight_difference(eager, graphed) < 1e-4


@needs_cuda
def test_capture_does_not_train():
    """The warm-up steps before capture are undone: weights, momentum and RNG as before."""
    device = torch.device("cuda")
    data = synthetic_split(num_pairs=2, per_pair=128, device=device)
    model, untouched = _real_pair(device)
    optimizer = sgd(model)
    step = TrainStep("graph", model, optimizer, 128, 25.0)
    rng = torch.cuda.get_rng_state()
    step._graph = step._capture(data)
    assert max_weight_difference(model, untouched) == 0
    assert torch.equal(torch.cuda.get_rng_state(), rng)
    buffers = [optimizer.state[p]["momentum_buffer"] for p in model.parameters()]
    assert all(b.abs().max().item() == 0 for b in buffers)  # acts as a fresh momentum
