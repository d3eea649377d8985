"""siqa.training.fused.FusedSplits against the sequential path it replaces.

The reference is each split trained alone, one after another, by siqa.training.step.epoch_steps
(TrainStep, eager) with torch.optim.SGD / Adam, dropout drawn from the global generator
continuing after the split's initialisation: what siqa.training.split_run.SplitRun runs.

Tiny data, real networks: split sizes 48, 20 and 36 patches at batch 16, so every epoch has

    round 0: splits 0, 1, 2 at 16   one full-size group, all three stepping (traced)
    round 1: splits 0, 2 at 16      the full-size group with split 1 inactive; split 1's
                                    tail of 4 as a group of 4 with splits 0, 2 inactive
    round 2: split 0 at 16          the same with split 0 alone; split 2's tail of 4

and from the second epoch on the splits' optimizer step counts differ (3, 2, 3 a epoch).

float64 tests: the networks in float64, the patches float32 (exact in both; joint_loss casts
a batch with .float(), so the sequential network is wrapped to cast its inputs to double;
the loss itself is in float32 on both sides, as joint_loss computes it). Agreement to 1e-9
relative: the two paths differ only in summation order (grouped convolutions and batched
matmuls under vmap) and in where the optimizer's per-split scalars round, measured 4e-16
(SGD) and 2e-13 (Adam) after 2 epochs. A shared generator, dropout
masks in another order, an update of a split that did not step, one Adam step count for
all splits or lost BatchNorm running statistics each moved a parameter by 2e-5 to 1e-4
relative (or a running statistic by 100 %) when tried on siqa/fused.py.
"""
import contextlib
import copy
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import load_script, needs_cuda
from siqa.data.inputs import SplitData
from siqa.data.patches import pixel_statistics
from siqa.errors import UserError
from siqa.models import MODELS
from siqa.models.spec import InputSpec
from siqa.scoring import predict_pairs
from siqa.training import fused as fused_module
from siqa.training.concurrent import finish
from siqa.training.fused import FusedSplits, plan_rounds
from siqa.training.step import TrainStep, epoch_order, epoch_steps

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # 2 shared cores

SIZES = (48, 20, 36)
BATCH = 16
SEED = 7
SGD = {"optimizer": "sgd", "lr": 1e-3, "momentum": 0.9, "weight_decay": 1e-4}
ADAM = {"optimizer": "adam", "lr": 1e-4, "weight_decay": 1e-4}
NSS_WEIGHT = {"bourbia2021": 25.0, "stereoqanet": 0.0, "multiscore": 0.0}


class AsDouble(nn.Module):
    """The network with its inputs cast to double (joint_loss hands it float32 patches)."""

    def __init__(self, net):
        super().__init__()
        self.net, self.spec = net, net.spec

    def forward(self, left, right):
        return self.net(left.double(), right.double())


def tiny_split(spec, n, seed, pairs=4):
    g = torch.Generator().manual_seed(1000 + seed)
    shape = (n, spec.channels, spec.patch, spec.patch)
    return SplitData(
        left=torch.randn(shape, generator=g) * 0.5, right=torch.randn(shape, generator=g) * 0.5,
        pair_index=torch.randint(0, pairs, (n,), generator=g),
        score=torch.rand(pairs, generator=g) * 60,
        nss=torch.rand(pairs, 108 if spec.predicts_nss else 0, generator=g),
        views=torch.rand(pairs, 2, generator=g) * 60 if spec.needs_view_scores else None)


def splits_of(name, sizes=SIZES):
    return [tiny_split(MODELS[name].spec, n, k) for k, n in enumerate(sizes)]


def build(name, k, dtype, data, seed=SEED):
    """Split k's network as split_run builds it: manual_seed, build (channels_last), the
    standardisation statistics of its own training patches (StereoQA-Net)."""
    torch.manual_seed(seed + k)
    model = MODELS[name]().to(dtype).to(memory_format=torch.channels_last)
    if model.spec.normalisation == "standardise":
        model.set_standardisation(*pixel_statistics(data.left), *pixel_statistics(data.right))
    return model


def torch_optimizer(model, opt):
    if opt["optimizer"] == "adam":
        return torch.optim.Adam(model.parameters(), lr=opt["lr"], weight_decay=opt["weight_decay"])
    return torch.optim.SGD(model.parameters(), lr=opt["lr"], momentum=opt["momentum"],
                           weight_decay=opt["weight_decay"])


def orders(datas, epoch):
    return [epoch_order(d.num_patches, SEED + k, epoch) for k, d in enumerate(datas)]


def sequential(name, datas, epochs, opt, dtype=torch.float64):
    """Each split alone, one after another (the reference)."""
    runs = []
    for k, data in enumerate(datas):
        model = build(name, k, dtype, data)
        optimizer = torch_optimizer(model, opt)
        net = AsDouble(model) if dtype == torch.float64 else model
        losses = [finish(epoch_steps(net, optimizer, data, orders(datas, e)[k], BATCH, NSS_WEIGHT[name]))
                  for e in range(epochs)]
        runs.append({"model": model, "optimizer": optimizer, "losses": losses,
                     "rng": torch.get_rng_state()})
    return runs


def fused(name, datas, opt, dtype=torch.float64, seed=SEED, **kwargs):
    models, generators = [], []
    for k, data in enumerate(datas):
        models.append(build(name, k, dtype, data, seed))
        generators.append(torch.Generator())
        generators[-1].set_state(torch.get_rng_state())  # the stream split k's run continues
    return FusedSplits(models, generators, nss_weight=NSS_WEIGHT[name], **opt, **kwargs)


def train(f, datas, epochs, start=0):
    return [finish(f.epoch(datas, orders(datas, e), BATCH)) for e in range(start, epochs)]


def split_state(f, k):
    """{"model", "optimizer", "rng"} of split k, in a sequential run's formats, as a fused run
    scores and checkpoints it (model_state, optimizer_state, rng_state);
    `f.load_split_state(k, **state)` takes it back."""
    return {"model": f.model_state(k), "optimizer": f.optimizer_state(k), "rng": f.rng_state(k)}


def relative_error(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def assert_tensors_close(got, want, rel, what):
    assert got.shape == want.shape and got.dtype == want.dtype, what
    assert got.stride() == want.stride(), f"{what}: layout {got.stride()} != {want.stride()}"
    assert not got.requires_grad, what  # a plain copy, as state_dict() gives
    if want.is_floating_point():
        assert relative_error(got, want) <= rel, (what, relative_error(got, want))
    else:
        assert torch.equal(got, want), what


def assert_states_close(state, reference, rel, what=""):
    assert list(state) == list(reference)
    for key, want in reference.items():
        assert_tensors_close(state[key], want, rel, f"{what}{key}")


def assert_optimizer_close(state, reference, rel):
    """Same format (param_groups, keys) and values within rel."""
    assert state["param_groups"] == reference["param_groups"]
    assert sorted(state["state"]) == sorted(reference["state"])
    for i, entry in reference["state"].items():
        assert sorted(state["state"][i]) == sorted(entry)
        for key, want in entry.items():
            assert_tensors_close(state["state"][i][key], want, rel, f"optimizer state {i} {key}")


def assert_idle_splits_unchanged(f, idle):
    """Each split k of `idle` ({k: its split_state before}) is as it was, bit for bit:
    parameters, buffers, optimizer state and generator."""
    for k, before in idle.items():
        now = split_state(f, k)
        assert_states_close(now["model"], before["model"], 0.0)
        assert_optimizer_close(now["optimizer"], before["optimizer"], 0.0)
        assert torch.equal(now["rng"]["torch"], before["rng"]["torch"])


def assert_matches_sequential(f, runs, fused_losses, rel=1e-9):
    for k, run in enumerate(runs):
        state = split_state(f, k)
        assert_states_close(state["model"], run["model"].state_dict(), rel, f"split {k} ")
        assert_optimizer_close(state["optimizer"], run["optimizer"].state_dict(), rel)
        # the same number of masks drawn from the same stream
        assert torch.equal(state["rng"]["torch"], run["rng"]), f"split {k} generator"
        for epoch, losses in enumerate(run["losses"]):
            for key, value in losses.items():
                assert fused_losses[epoch][k][key] == pytest.approx(value, rel=1e-6, abs=1e-6)


class TinyNet(nn.Module):
    """A network of seconds: BatchNorm, a dropout at p = 0 (draws nothing), an in-place
    dropout whose input is read again, and one dropout module called twice (two masks)."""

    spec = InputSpec(patch=8, stride=8, channels=1, normalisation="unit", outputs=("quality",))

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc1 = nn.Linear(64, 16)
        self.off = nn.Dropout(0.0)
        self.drop = nn.Dropout(0.5, inplace=True)
        self.twice = nn.Dropout(0.3)
        self.fc2 = nn.Linear(16, 1)

    def forward(self, left, right):
        x = self.bn(F.max_pool2d(F.relu(self.conv(torch.cat((left, right), dim=1))), 2))
        h = self.fc1(torch.flatten(x, 1))
        h = self.drop(self.off(h)) + h  # in place: h is the dropped h by then
        return (self.fc2(self.twice(torch.relu(self.twice(h)))).squeeze(-1),)


@pytest.mark.parametrize("opt", [SGD, {**SGD, "momentum": 0.0}, {**ADAM, "weight_decay": 0.0}],
                         ids=["sgd", "sgd-no-momentum", "adam-no-decay"])
def test_tiny_network_three_epochs_float64(opt, monkeypatch):
    """Split sizes 12, 5 and 9 at batch 4 (tails of 1 and 1 fused together), 3 epochs."""
    monkeypatch.setitem(MODELS, "tiny", TinyNet)
    monkeypatch.setitem(NSS_WEIGHT, "tiny", 0.0)
    datas = splits_of("tiny", (12, 5, 9))
    assert plan_rounds([12, 5, 9], 4)[1] == [(4, [0, 2]), (1, [1])]
    assert plan_rounds([12, 5, 9], 4)[2] == [(4, [0]), (1, [2])]
    monkeypatch.setattr(sys.modules[__name__], "BATCH", 4)
    runs = sequential("tiny", datas, 3, opt)
    f = fused("tiny", datas, opt)
    assert [name for name, *_ in f.calls] == ["drop", "twice", "twice"]
    assert_matches_sequential(f, runs, train(f, datas, 3))


class TinyNetWithAnUnusedLayer(TinyNet):
    """TinyNet and a linear layer its forward never calls (no gradient: torch.optim does not
    step it, weight decay included, and keeps no state for it)."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Linear(3, 2)


@pytest.mark.parametrize("opt", [SGD, ADAM], ids=["sgd", "adam"])
def test_a_layer_without_gradient_is_not_stepped(opt, monkeypatch):
    monkeypatch.setitem(MODELS, "tiny", TinyNetWithAnUnusedLayer)
    monkeypatch.setitem(NSS_WEIGHT, "tiny", 0.0)
    monkeypatch.setattr(sys.modules[__name__], "BATCH", 4)
    datas = splits_of("tiny", (12, 5, 9))
    runs = sequential("tiny", datas, 2, opt)
    f = fused("tiny", datas, opt)
    assert f.optimizer.unused == ("unused.weight", "unused.bias")
    assert_matches_sequential(f, runs, train(f, datas, 2))


def test_plan_rounds():
    assert plan_rounds(SIZES, BATCH) == [[(16, [0, 1, 2])],
                                         [(16, [0, 2]), (4, [1])],
                                         [(16, [0]), (4, [2])]]
    # equal tails are one group; an empty split takes no round
    assert plan_rounds([40, 40, 8, 0], 16) == [[(16, [0, 1]), (8, [2])], [(16, [0, 1])], [(8, [0, 1])]]


@pytest.mark.parametrize("opt", [SGD, ADAM], ids=["sgd", "adam"])
def test_paper_network_float64_equals_splits_one_after_another(opt):
    """bourbia2021, dropout on, 2 epochs: parameters, momentum buffers / Adam moments and
    step counts, generator states and epoch losses as the sequential runs'."""
    datas = splits_of("bourbia2021")
    runs = sequential("bourbia2021", datas, 2, opt)
    f = fused("bourbia2021", datas, opt)
    losses = train(f, datas, 2)
    assert_matches_sequential(f, runs, losses)
    if opt is ADAM:  # per-split step counts: 3, 2, 3 steps an epoch
        assert [int(split_state(f, k)["optimizer"]["state"][0]["step"]) for k in range(3)] == [6, 4, 6]


def test_stereoqanet_float64_equals_splits_one_after_another():
    """Dropout (ELU heads) and per-split standardisation buffers."""
    datas = splits_of("stereoqanet")
    runs = sequential("stereoqanet", datas, 2, SGD)
    f = fused("stereoqanet", datas, SGD)
    assert not torch.equal(f.buffers["left_mean"][0], f.buffers["left_mean"][1])  # their own
    assert_matches_sequential(f, runs, train(f, datas, 2))


def test_multiscore_batchnorm_float64_equals_splits_one_after_another():
    """Per-split batch statistics and running statistics (BatchNorm2d), dropout, four
    outputs with per-view targets."""
    datas = splits_of("multiscore")
    runs = sequential("multiscore", datas, 2, SGD)
    f = fused("multiscore", datas, SGD)
    losses = train(f, datas, 2)
    assert_matches_sequential(f, runs, losses)
    tracked = [int(split_state(f, k)["model"]["stream_left.bn1.num_batches_tracked"]) for k in range(3)]
    assert tracked == [6, 4, 6]  # one per step of each split, not per round


def test_split_state_loads_into_torch_optim_and_back():
    """After a fused epoch, split 1's state taken alone: a network and torch.optim.Adam
    built over it load it, and one more sequential step equals the fused round in which
    split 1 alone steps; splits 0 and 2 do not move in that round (parameters, moments,
    step counts, generators); the sequential state loads back into the fused splits."""
    datas = splits_of("bourbia2021")
    f = fused("bourbia2021", datas, ADAM)
    train(f, datas, 1)
    state = split_state(f, 1)
    model = build("bourbia2021", 1, torch.float64, datas[1], seed=SEED + 50)  # other weights
    model.load_state_dict(state["model"])
    optimizer = torch_optimizer(model, ADAM)
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"])
    batch = orders(datas, 1)[1][:BATCH]
    TrainStep("eager", AsDouble(model), optimizer, BATCH, 25.0)(datas[1], batch)

    idle = {k: split_state(f, k) for k in (0, 2)}
    f.step_round(datas, [None, batch, None])
    after = split_state(f, 1)
    assert_states_close(after["model"], model.state_dict(), 1e-9)
    assert_optimizer_close(after["optimizer"], optimizer.state_dict(), 1e-9)
    assert torch.equal(after["rng"]["torch"], torch.get_rng_state())
    assert f.steps == [3, 3, 3]
    assert_idle_splits_unchanged(f, idle)

    # the sequential split's state, loaded into the fused splits, reads back unchanged
    f.load_split_state(1, model.state_dict(), optimizer.state_dict(), {"torch": torch.get_rng_state()})
    back = split_state(f, 1)
    assert_states_close(back["model"], model.state_dict(), 0.0)
    assert_optimizer_close(back["optimizer"], optimizer.state_dict(), 0.0)


def test_resume_from_split_states_equals_uninterrupted_run():
    """A fused run stopped after epoch 1 and resumed from its per-split states (into fused
    splits built from other weights and generators) runs epoch 2 exactly as the
    uninterrupted run (float32, SGD with momentum)."""
    datas = splits_of("bourbia2021")
    whole = fused("bourbia2021", datas, SGD, torch.float32)
    train(whole, datas, 1)
    saved = [copy.deepcopy(split_state(whole, k)) for k in range(3)]
    resumed = fused("bourbia2021", datas, SGD, torch.float32, seed=SEED + 100)
    for k, state in enumerate(saved):
        resumed.load_split_state(k, **state)
    second = train(whole, datas, 2, start=1)
    again = train(resumed, datas, 2, start=1)
    assert again == second
    for k in range(3):
        a, b = split_state(whole, k), split_state(resumed, k)
        assert_states_close(b["model"], a["model"], 0.0)
        assert_optimizer_close(b["optimizer"], a["optimizer"], 0.0)
        assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])


def test_float32_predictions_agree_to_rounding():
    """float32, 2 epochs of SGD: each split's parameters and predictions (predict_pairs of
    its network with the fused weights) agree with its sequential run's to 1e-5 relative.
    Why that bound: the two paths sum in another order (float32 rounding, 6e-8 relative an
    operation) and 4 to 6 steps a split carry them into the weights; measured 1.7e-7 in
    the parameters and 1.8e-7 in the predictions (relative to their largest value), so 1e-5
    leaves a margin of 50, while training moved these predictions by 76 % or more of their
    size and a wrong mask or update moves the parameters by 2e-5 to 1e-4 (float64 mutants)."""
    datas = splits_of("bourbia2021")
    runs = sequential("bourbia2021", datas, 2, SGD, dtype=torch.float32)
    f = fused("bourbia2021", datas, SGD, torch.float32)
    train(f, datas, 2)
    for k, run in enumerate(runs):
        assert_states_close(f.model_state(k), run["model"].state_dict(), 1e-5, f"split {k} ")
        want = predict_pairs(run["model"], datas[k])
        got = predict_pairs(f.load_into(k, build("bourbia2021", k, torch.float32, datas[k])), datas[k])
        assert abs(got - want).max() <= 1e-5 * abs(want).max()


def test_bfloat16_autocast_round_matches_sequential(monkeypatch):
    """Under bfloat16 autocast (train.amp) the masks are drawn in float32 and cast once to
    bfloat16, the activations' dtype, as F.dropout's are on a bfloat16 activation. One full
    round of two splits against one sequential step of each: the units each dropout layer
    drops are the sequential step's, exactly (where its input is not 0); the losses agree
    to 1e-4 relative (measured 2e-6) and each weight's update (after - before) to 0.4 of the
    largest update of that tensor: bfloat16 keeps 8 bits, and matmul outputs summed in
    another order round apart, which moved the updates by up to 0.19 (measured), where
    masks of the other split moved them by 0.84 to 1.45."""
    datas = splits_of("bourbia2021", (16, 16))
    batch = [order[:16] for order in orders(datas, 0)]
    want = []
    for k in range(2):
        model = build("bourbia2021", k, torch.float32, datas[k])
        dropped = []
        hooks = [m.register_forward_hook(
            lambda m, args, out, dropped=dropped: dropped.append(((out == 0) & (args[0] != 0), args[0] != 0)))
            for m in model.modules() if isinstance(m, nn.Dropout)]
        optimizer = torch_optimizer(model, SGD)
        losses = TrainStep("eager", model, optimizer, 16, 25.0, amp_dtype=torch.bfloat16)(datas[k], batch[k])
        for h in hooks:
            h.remove()
        want.append((model.state_dict(), losses, dropped))
    models, generators = [], []
    for k in range(2):
        models.append(build("bourbia2021", k, torch.float32, datas[k]))
        generators.append(torch.Generator())
        generators[-1].set_state(torch.get_rng_state())
    before = [copy.deepcopy(m.state_dict()) for m in models]
    f = FusedSplits(models, generators, nss_weight=25.0, amp_dtype=torch.bfloat16, **SGD)
    assert {dtype for _, _, _, dtype in f.calls} == {torch.bfloat16}
    drawn = []
    draw = fused_module._Masks.draw

    def recording(self, generators, splits):
        views = draw(self, generators, splits)
        assert self.raw.dtype == torch.float32  # drawn in float32
        drawn.append([v.clone() for v in views])
        return views

    monkeypatch.setattr(fused_module._Masks, "draw", recording)
    got = f.step_round(datas, batch)
    for k, (state, losses, dropped) in enumerate(want):
        assert len(drawn[0]) == len(dropped) == 8  # 4 FC branches x 2
        for mask, (seq_dropped, nonzero) in zip(drawn[0], dropped):
            assert mask.dtype == torch.bfloat16
            assert torch.equal((mask[k] == 0)[nonzero], seq_dropped[nonzero])
        assert relative_error(got[k], losses) <= 1e-4
        for key, value in f.model_state(k).items():
            assert value.dtype == torch.float32  # the masters
            assert relative_error(value - before[k][key], state[key] - before[k][key]) <= 0.4, key


def test_bfloat16_round_stays_bfloat16_inside_vmap(monkeypatch):
    """Under train.amp every convolution and linear layer of the fused round computes and
    returns bfloat16 (its weights cast once a round outside vmap; a float32 bias batched
    under vmap would be added after the convolution in float32) and every dropout mask is
    bfloat16; the gradients reach the float32 masters."""
    monkeypatch.setitem(MODELS, "tiny", TinyNet)
    datas = splits_of("tiny", (8, 8))
    models = [build("tiny", k, torch.float32, datas[k]) for k in range(2)]
    f = FusedSplits(models, [torch.Generator().manual_seed(k) for k in range(2)],
                    amp_dtype=torch.bfloat16, **SGD)
    seen = []
    for module in f._template.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear, fused_module._FedDropout)):
            module.register_forward_hook(lambda m, args, out: seen.append((type(m).__name__, out.dtype)))
    before = f.model_state(0)
    f.step_round(datas, [torch.arange(4), torch.arange(4)])
    assert {name for name, _ in seen} == {"Conv2d", "Linear", "_FedDropout"}
    assert {dtype for _, dtype in seen} == {torch.bfloat16}, seen
    after = f.model_state(0)
    assert all(v.dtype == torch.float32 for v in after.values() if v.is_floating_point())
    assert not torch.equal(after["fc1.weight"], before["fc1.weight"])


def test_padnet_is_refused_in_one_line():
    """PAD-Net's GDN lower bound is a custom autograd.Function without a vmap rule."""
    torch.manual_seed(0)
    model = MODELS["padnet"]()
    with pytest.raises(UserError, match="autograd.Function") as err:
        FusedSplits([model], [torch.Generator()], optimizer="adam", lr=1e-4)
    assert "\n" not in str(err.value)


def tiny_fused(monkeypatch, opt, sizes=(12, 5, 9), **kwargs):
    """TinyNet's splits of `sizes` patches (batch 4: full, partial and tail rounds), fused."""
    monkeypatch.setitem(MODELS, "tiny", TinyNet)
    monkeypatch.setitem(NSS_WEIGHT, "tiny", 0.0)
    datas = splits_of("tiny", sizes)
    return fused("tiny", datas, opt, **kwargs), datas


def tiny_orders(datas, epoch):
    return [epoch_order(d.num_patches, SEED + k, epoch) for k, d in enumerate(datas)]


HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")
SYNC_OPS = ("aten::_local_scalar_dense", "aten::item", "aten::is_nonzero", "aten::nonzero")


@pytest.mark.parametrize("opt", [SGD, ADAM], ids=["sgd", "adam"])
def test_no_host_read_inside_a_round(opt, monkeypatch):
    """Every round of an epoch (full, partial, tails; the second epoch, when the splits'
    step counts differ) reads nothing back from the device: no Tensor.item / tolist / cpu /
    numpy, no Python bool, float, int or index of a tensor, and no aten op that reads a
    device value to the host (on CUDA each of them waits for the GPU)."""
    f, datas = tiny_fused(monkeypatch, opt)
    with monkeypatch.context() as m:
        monkeypatch.setattr(sys.modules[__name__], "BATCH", 4)
        finish(f.epoch(datas, tiny_orders(datas, 0), 4))
    rounds = f.plan_epoch(datas, tiny_orders(datas, 1), 4)
    assert [[(g.size, g.splits) for g in groups] for groups in rounds] == \
        [[(4, (0, 1, 2))], [(4, (0, 2)), (1, (1,))], [(4, (0,)), (1, (2,))]]
    reads = []
    with monkeypatch.context() as m, torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for name in HOST_READS:
            real = getattr(torch.Tensor, name)
            m.setattr(torch.Tensor, name, lambda self, *a, _name=name, _real=real, **kw:
                      reads.append(_name) or _real(self, *a, **kw))
        for groups in rounds:
            f.run_round(groups)
    assert reads == []
    assert not [e.name for e in prof.events() if e.name in SYNC_OPS]
    assert f.steps == [6, 4, 6]


def test_a_split_that_does_not_step_keeps_every_bit(monkeypatch):
    """After an epoch (momentum buffers set, BatchNorm statistics moved), rounds in which
    split 1 alone steps (a full-size batch, then a tail of 1): splits 0 and 2 keep their
    parameters, running statistics, batch counts, momentum buffers, step counts and
    generator states bit for bit."""
    f, datas = tiny_fused(monkeypatch, SGD)
    finish(f.epoch(datas, tiny_orders(datas, 0), 4))
    idle = {k: copy.deepcopy(split_state(f, k)) for k in (0, 2)}
    f.step_round(datas, [None, torch.arange(4), None])
    f.step_round(datas, [None, torch.arange(1), None])
    assert f.steps == [3, 4, 3]
    assert_idle_splits_unchanged(f, idle)


@pytest.fixture(scope="module")
def aten_ops():
    """The aten ops a function runs outside CPU convolution kernels, counted as
    benchmarks/fused_throughput.py --ops counts them (its loop over groups inside a CPU
    convolution is one kernel on a GPU)."""
    count_ops = load_script("benchmarks/fused_throughput.py").count_ops
    return lambda fn: count_ops(fn)[0]


def test_host_ops_of_a_round_do_not_grow_with_the_splits(monkeypatch, aten_ops):
    """A round's aten ops at 6 splits exceed those at 2 splits by 2 ops a split (each
    stepping split's one mask draw, bernoulli_ and the `to` it runs inside), and a partial
    round (half of the splits stepping) costs what a full one does, +-10 %. (From 1 split
    to 2, vmap's reshapes become copies: a few ops once.)"""
    counts = {}
    for k in (2, 6):
        f, datas = tiny_fused(monkeypatch, SGD, sizes=(8,) * k)
        rounds = f.plan_epoch(datas, tiny_orders(datas, 0), 4)
        f.run_round(rounds[0])
        counts[k] = aten_ops(lambda: f.run_round(rounds[1]))
    assert counts[6] - counts[2] == 2 * 4, counts
    f, datas = tiny_fused(monkeypatch, SGD, sizes=(8, 4) * 3)
    rounds = f.plan_epoch(datas, tiny_orders(datas, 0), 4)
    f.run_round(rounds[0])
    assert [g.splits for g in rounds[1]] == [(0, 2, 4)]
    partial = aten_ops(lambda: f.run_round(rounds[1]))
    assert abs(partial - counts[6]) <= 0.1 * counts[6], (partial, counts)


@pytest.mark.parametrize("amp", [None, torch.bfloat16], ids=["float32", "bf16"])
def test_traced_rounds_equal_untraced_rounds_bit_for_bit(amp, monkeypatch):
    """Two epochs whose full-size groups replay their traced aten ops equal the same epochs
    run through vmap and autograd each round, bit for bit (float32; and under bf16, with
    its cast weights and inputs and float32 batch norms)."""
    traced, datas = tiny_fused(monkeypatch, SGD, dtype=torch.float32, amp_dtype=amp)
    plain, _ = tiny_fused(monkeypatch, SGD, dtype=torch.float32, amp_dtype=amp)
    plain._traced[4] = False  # (what a failed trace leaves: untraced rounds)
    for f in (traced, plain):
        for epoch in range(2):
            finish(f.epoch(datas, tiny_orders(datas, epoch), 4))
    assert callable(traced._traced[4]) and plain._traced[4] is False
    for k in range(3):
        a, b = split_state(plain, k), split_state(traced, k)
        assert_states_close(b["model"], a["model"], 0.0)
        assert_optimizer_close(b["optimizer"], a["optimizer"], 0.0)


class StandInGraphs:
    """fused_graphs.CudaGraphs on the CPU: a capture records the program without running it (as a
    CUDA capture records kernels without running them) and a replay runs it; `fail`: every
    capture raises as a failed CUDA capture does."""

    def __init__(self, fail=False):
        self.fail, self.captures = fail, []

    def side_stream(self):
        return contextlib.nullcontext()

    def capture(self, program, generators):
        if self.fail:
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
        self.captures.append(len(generators))
        return program


@pytest.mark.parametrize("fail", [False, True], ids=["captured", "capture-fails"])
def test_graph_rounds_equal_eager_rounds(fail, monkeypatch):
    """step="graph" with the CPU stand-in: 3 warm-up rounds, then one graph per set of
    stepping splits in the full-size group (all three, splits 0 and 2, split 0), replayed
    with the round's indices; tails eager. 3 epochs equal the eager fused splits' bit for
    bit. A failed capture is one log line, and the run goes on eagerly."""
    eager, datas = tiny_fused(monkeypatch, ADAM)
    lines = []
    graphs = StandInGraphs(fail)
    captured, _ = tiny_fused(monkeypatch, ADAM, step="graph", graphs=graphs, log=lines.append)
    for f in (eager, captured):
        for epoch in range(3):
            f.set_lr(1e-4 * (epoch + 1))  # read from a device tensor by the captured rounds
            finish(f.epoch(datas, tiny_orders(datas, epoch), 4))
    assert graphs.captures == ([] if fail else [3, 3, 3])
    assert len(captured._graphs.graphs) == (0 if fail else 3)
    assert len(lines) == (1 if fail else 0) and "\n" not in "".join(lines)
    if fail:
        assert "could not be captured as a CUDA graph" in lines[0] and "eagerly" in lines[0]
    for k in range(3):
        a, b = split_state(eager, k), split_state(captured, k)
        assert_states_close(b["model"], a["model"], 0.0)
        assert_optimizer_close(b["optimizer"], a["optimizer"], 0.0)
        assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])


@needs_cuda
@pytest.mark.parametrize("step", ["eager", "graph"])
def test_on_cuda_rounds_do_not_synchronize(step, monkeypatch):
    """On CUDA, eager and captured (step="graph": the first epoch warms up, the second
    captures): the third epoch's rounds run under torch.cuda.set_sync_debug_mode("error"),
    so any call that waits for the GPU inside a round raises."""
    monkeypatch.setitem(MODELS, "tiny", TinyNet)
    datas = [d.to("cuda") for d in splits_of("tiny", (12, 5, 9))]
    models = [build("tiny", k, torch.float32, datas[k]).cuda() for k in range(3)]
    generators = [torch.Generator("cuda").manual_seed(k) for k in range(3)]
    f = FusedSplits(models, generators, step=step, **SGD)
    for epoch in range(2):
        finish(f.epoch(datas, [o.cuda() for o in tiny_orders(datas, epoch)], 4))
    rounds = f.plan_epoch(datas, [o.cuda() for o in tiny_orders(datas, 2)], 4)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for groups in rounds:
            f.run_round(groups)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert f.steps == [9, 6, 9]
    assert step == "eager" or len(f._graphs.graphs) == 3
