r"""The training step and the image-level scoring, on data resident on the device.

A split's patches live on the device as two contiguous tensors; a batch is an index
slice of a seeded permutation (no Dataset, no collation, no host sync inside the loop).
One forward pass per step gives both outputs; the joint loss is
L1(quality) + nss_weight * L1(nss) (docs/method.md#training).

How a step runs is `train.step`:

    eager    forward, loss, backward, optimizer step as plain PyTorch calls (the reference)
    compile  the same with the model under torch.compile (fused kernels; on CUDA in one
             process training one split, mode="reduce-overhead", i.e. CUDA graphs managed
             by the compiler; under torchrun or with concurrent splits the default mode,
             see `compile_mode`)
    graph    CUDA only: one full step (index gather, forward, joint loss, backward,
             optimizer step) captured once as a CUDA graph at the static batch size and
             replayed; each step then costs one launch instead of ~240 kernel launches.

    epoch order (seeded permutation) --> batches of batch_size --> replay the graph
                                     \-> last partial batch    --> eager step
    (so every patch pair is still seen once per epoch; the graph reads the batch's
    indices from a static buffer and the learning rate from a tensor the scheduler fills)
"""
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from siqa.concurrent import finish
from siqa.errors import UserError
from siqa.models.bourbia2021 import MultiTaskSIQA

STEP_MODES = ("eager", "compile", "graph")
GRAPH_WARMUP_STEPS = 3  # eager steps on a side stream before capture (PyTorch's CUDA-graph recipe)


def select_device(name) -> torch.device:
    """The device of a `device` setting, always with its index on CUDA.

    'auto' -> the current CUDA device when a GPU is available, else the CPU; 'cuda' -> the
    current CUDA device (cuda:0 unless the process chose another); 'cuda:N' as it is. A CUDA
    request without a GPU, or an index past the GPUs there are, is a user error. The index
    matters: torch.cuda.set_device, the CUDA RNG calls and DDP's device_ids refuse a CUDA
    device without one."""
    if isinstance(name, torch.device):
        name = str(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"config key device: unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"config key device: {name!r} is not supported here (use auto, cpu, cuda or cuda:N)")
    if device.type == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError(f"device={name} was requested but no CUDA GPU is available; use device=cpu")
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if device.index >= torch.cuda.device_count():
        raise UserError(f"device={name}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device


@dataclass
class SplitData:
    """One split on one device: patches plus per-pair targets (pair_index maps patch -> pair)."""

    left: torch.Tensor  # (N, C, S, S) as the network's spec asks ((N, 1, 32, 32) for the paper's)
    right: torch.Tensor
    pair_index: torch.Tensor  # (N,) int64
    score: torch.Tensor  # (P,) float32
    nss: torch.Tensor  # (P, 108) float32; (P, 0) for a network without the NSS task
    views: Optional[torch.Tensor] = None  # (P, 2) per-view scores, for networks that predict them

    @property
    def num_patches(self):
        return self.left.shape[0]

    @property
    def num_pairs(self):
        return self.score.shape[0]

    def to(self, device):
        return SplitData(*(None if t is None else t.to(device, non_blocking=True) for t in
                           (self.left, self.right, self.pair_index, self.score, self.nss, self.views)))


def epoch_order(num_patches, seed, epoch, rank=0, world=1):
    """The patch order of one epoch: a permutation seeded by (seed, epoch), so a resumed run
    sees the same order.

    With several ranks every rank gets an equal contiguous share of ceil(N / world) patches:
    the permutation is padded by wrapping around to its start, so each patch is seen at
    least once per epoch and at most world - 1 patches twice. Equal shares mean every rank
    runs the same number of steps of the same sizes, so DDP's gradient all-reduces always
    pair up (no Join, whose shadowed steps left momentum buffers out of step)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(num_patches, generator=generator)
    if world == 1:
        return order
    share = -(-num_patches // world)
    padded = order.repeat(-(-share * world // num_patches))[: share * world]
    return padded[rank * share : (rank + 1) * share]


def joint_loss(model, data: SplitData, idx, nss_weight, amp_dtype=None, cache_enabled=True,
               spec=MultiTaskSIQA.spec):
    """(total, quality, nss) losses of the patches `idx`; in float32 under bf16 autocast
    (the outputs are cast up before the loss, so DMOS values are not rounded to bf16).

    One term per output the network's `spec` names (siqa/models/spec.py): for the paper's
    network L1(quality) + nss_weight * L1(nss), as always; `nss` is 0 for a network without
    the NSS task; the score outputs take `spec.score_loss` (PAD-Net: MSE)."""
    pairs = data.pair_index[idx]
    with torch.autocast(data.left.device.type, dtype=amp_dtype, enabled=amp_dtype is not None,
                        cache_enabled=cache_enabled):
        outputs = model(data.left[idx].float(), data.right[idx].float())
    score_loss = F.mse_loss if spec.score_loss == "mse" else F.l1_loss
    loss_q = score_loss(outputs[0].float(), data.score[pairs])
    weight = spec.weight("quality")
    total = loss_q if weight == 1.0 else weight * loss_q
    loss_n = None
    for name, out in zip(spec.outputs[1:], outputs[1:]):
        if name == "nss":
            loss_n = F.l1_loss(out.float(), data.nss[pairs])
            total = total + nss_weight * loss_n
        else:
            target = {"stereo": data.score, "left": data.views[:, 0] if data.views is not None else None,
                      "right": data.views[:, 1] if data.views is not None else None}[name]
            total = total + spec.weight(name) * score_loss(out.float(), target[pairs])
    if loss_n is None:
        loss_n = torch.zeros((), device=loss_q.device)
    return total, loss_q, loss_n


def _is_ddp(model):
    return isinstance(model, torch.nn.parallel.DistributedDataParallel)


def _device_of(model):
    return next(model.parameters()).device


def compile_mode(device, ddp=False, concurrent=False):
    """torch.compile's mode for train.step=compile: "reduce-overhead" (the compiler's own CUDA
    graphs) for one CUDA process training one split, else None (the default mode: fused
    kernels, no graphs). The compiler's graphs replay from one memory pool per device and
    assume one stream, so concurrent splits on their own streams would share and overwrite
    each other's buffers; under DDP the gradient all-reduce runs in hooks between the graphs'
    pieces, which the compiler's graphs do not capture safely."""
    if torch.device(device).type == "cuda" and not ddp and not concurrent:
        return "reduce-overhead"
    return None


def check_step_mode(mode, device, world=1):
    """A UserError, before any work starts, for a train.step this run cannot use."""
    if mode not in STEP_MODES:
        raise UserError(f"config key train.step: expected one of {', '.join(STEP_MODES)}, got {mode!r}")
    if mode == "graph" and torch.device(device).type != "cuda":
        raise UserError(f"train.step=graph needs CUDA (this run is on {device}); "
                        "use train.step=eager or train.step=compile")
    if mode == "graph" and world > 1:
        raise UserError("train.step=graph is for one process; under torchrun use "
                        "train.step=eager or train.step=compile")


class TrainStep:
    """One training step of `model` with `optimizer`, run as `mode` (see the module docstring).

    step(data, idx) -> the detached (total, quality, nss) losses of that batch, shape (3,).
    Build it once per run (compile and graph keep what they compiled or captured), after
    the optimizer state has been restored on resume: the graph holds the addresses of the
    parameters, gradients, optimizer state and learning-rate tensors it captured."""

    def __init__(self, mode, model, optimizer, batch_size, nss_weight, amp_dtype=None,
                 concurrent=False):
        check_step_mode(mode, _device_of(model), world=2 if _is_ddp(model) else 1)
        self.mode, self.model, self.optimizer = mode, model, optimizer
        self.batch_size, self.nss_weight, self.amp_dtype = batch_size, nss_weight, amp_dtype
        self.device = _device_of(model)
        self.spec = getattr(model.module if _is_ddp(model) else model, "spec", MultiTaskSIQA.spec)
        self.forward = model
        if mode == "compile":
            # dynamic=False: the full batch and the epoch's tail batch each get a static graph.
            self.forward = torch.compile(model, dynamic=False,
                                         mode=compile_mode(self.device, _is_ddp(model), concurrent))
        if mode == "graph":
            _make_capturable(optimizer, self.device)
        self._graph = None  # (data, graph, static index buffer, static losses)
        self.scorer = Scorer(mode, model.module if _is_ddp(model) else model, amp_dtype,
                             concurrent=concurrent)

    def __call__(self, data: SplitData, idx):
        if self.mode == "graph" and len(idx) == self.batch_size:
            if self._graph is None or self._graph[0] is not data:
                self._graph = self._capture(data)
            _, graph, static_idx, static_losses = self._graph
            static_idx.copy_(idx)
            graph.replay()
            return static_losses.clone()  # the buffer is overwritten by the next replay
        return self._eager(data, idx)

    def _eager(self, data, idx, cache_enabled=True):
        loss, loss_q, loss_n = joint_loss(self.forward, data, idx, self.nss_weight, self.amp_dtype,
                                          cache_enabled, spec=self.spec)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return torch.stack([loss.detach(), loss_q.detach(), loss_n.detach()])

    def _capture(self, data):
        """Warm up on a side stream, capture one step, then put back the parameters,
        optimizer state and RNG state the warm-up changed: capturing does not train."""
        saved = _snapshot(self.model, self.optimizer)
        rng = torch.cuda.get_rng_state(self.device)
        static_idx = torch.arange(self.batch_size, device=self.device) % data.num_patches
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(GRAPH_WARMUP_STEPS):
                self._eager(data, static_idx, cache_enabled=False)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)  # backward in the capture allocates the grads
        with torch.cuda.graph(graph):
            loss, loss_q, loss_n = joint_loss(self.model, data, static_idx, self.nss_weight,
                                              self.amp_dtype, cache_enabled=False, spec=self.spec)
            loss.backward()
            self.optimizer.step()
            static_losses = torch.stack([loss.detach(), loss_q.detach(), loss_n.detach()])
        _restore(self.model, self.optimizer, saved)
        torch.cuda.set_rng_state(rng, self.device)
        return data, graph, static_idx, static_losses


def _make_capturable(optimizer, device):
    """Make the optimizer's step capturable: the learning rate becomes a device tensor (a
    scheduler then fills it in place, so a captured step honours a StepLR schedule); SGD
    uses its fused kernel (the foreach path reads a tensor lr back to the host), Adam its
    capturable path (step counters on the device)."""
    for group in optimizer.param_groups:
        group["lr"] = torch.as_tensor(group["lr"], dtype=torch.float32).to(device)
        if isinstance(optimizer, torch.optim.SGD):
            group["fused"], group["foreach"] = True, False
        elif "capturable" in group:
            group["capturable"] = True
            for p in group["params"]:
                state = optimizer.state.get(p, {})
                if torch.is_tensor(state.get("step")):
                    state["step"] = state["step"].to(device, torch.float32)
        else:
            raise UserError(f"train.step=graph: {type(optimizer).__name__} cannot be captured")


def _snapshot(model, optimizer):
    params = [p.detach().clone() for p in model.parameters()]
    state = {p: {k: v.clone() for k, v in s.items() if torch.is_tensor(v)}
             for p, s in optimizer.state.items()}
    return params, state


def _restore(model, optimizer, saved):
    """Copy back in place (the graph holds these addresses). State the warm-up created is
    zeroed: zero momentum / Adam moments and step 0 act as a fresh state does (SGD with
    dampening 0, which is all train.py builds)."""
    params, state = saved
    with torch.no_grad():
        for p, value in zip(model.parameters(), params):
            p.copy_(value)
        for p, s in optimizer.state.items():
            for k, v in s.items():
                if not torch.is_tensor(v):
                    continue
                if k in state.get(p, {}):
                    v.copy_(state[p][k])
                else:
                    v.zero_()


def train_epoch(model, optimizer, data: SplitData, order, batch_size, nss_weight,
                amp_dtype=None, progress=None, step=None):
    """One pass over `order` (patch indices on data's device); returns mean losses (floats).

    `step`: a TrainStep built for this model and optimizer (compile, graph); None = eager.
    Under DDP the epoch means are averaged across ranks (every rank runs as many steps)."""
    return finish(epoch_steps(model, optimizer, data, order, batch_size, nss_weight, amp_dtype,
                              progress, step))


def epoch_steps(model, optimizer, data: SplitData, order, batch_size, nss_weight,
                amp_dtype=None, progress=None, step=None):
    """train_epoch as a generator that yields after every step and returns the mean losses
    (the form in which siqa.concurrent interleaves the steps of several splits)."""
    model.train()
    if step is None:
        step = TrainStep("eager", model, optimizer, batch_size, nss_weight, amp_dtype)
    sums = torch.zeros(3, device=data.left.device)
    steps = 0
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        sums += step(data, idx)
        steps += 1
        if progress is not None:
            progress.update(len(idx))
        yield
    sums /= max(steps, 1)
    if _is_ddp(model):
        torch.distributed.all_reduce(sums, group=model.process_group)  # SUM: gloo has no AVG
        sums /= torch.distributed.get_world_size(model.process_group)
    means = sums.tolist()
    return {"total": means[0], "quality": means[1], "nss": means[2]}


class Scorer:
    """The eval-mode forward of predict_pairs, run as `mode`: eager, compiled, or (graph, on
    CUDA) captured once per full batch size on static input buffers; the tail batch of a
    split runs eagerly. Weights are read in place, so training between calls is seen."""

    def __init__(self, mode="eager", model=None, amp_dtype=None, concurrent=False):
        self.mode, self.model, self.amp_dtype = mode, model, amp_dtype
        self.forward = model
        if mode == "compile":  # scoring has no all-reduce: only concurrency rules the graphs out
            self.forward = torch.compile(model, dynamic=False,
                                         mode=compile_mode(_device_of(model), concurrent=concurrent))
        self._graphs = {}  # batch size -> (graph, static left, static right, static quality)

    def __call__(self, left, right, full=True):
        """Quality of a batch; `full`: a batch of the static size (graph mode captures it)."""
        if self.mode != "graph" or left.device.type != "cuda" or not full:
            return self._eager(self.forward, left, right)
        n = left.shape[0]
        if n not in self._graphs:
            self._graphs[n] = self._capture(left, right)
        graph, static_left, static_right, static_quality = self._graphs[n]
        static_left.copy_(left)
        static_right.copy_(right)
        graph.replay()
        return static_quality.clone()

    def _eager(self, forward, left, right, cache_enabled=True):
        with torch.autocast(left.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None,
                            cache_enabled=cache_enabled):
            quality = forward(left, right)[0]  # every network's first output is the quality
        return quality

    def _capture(self, left, right):
        static_left, static_right = left.clone(), right.clone()
        side = torch.cuda.Stream(left.device)
        side.wait_stream(torch.cuda.current_stream(left.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._eager(self.model, static_left, static_right, cache_enabled=False)
        torch.cuda.current_stream(left.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_quality = self._eager(self.model, static_left, static_right, cache_enabled=False)
        return graph, static_left, static_right, static_quality


@contextmanager
def cudnn_heuristics():
    """Scoring picks cuDNN's convolution kernels by its heuristics, not by timing them
    (benchmark mode, on for training on CUDA): timing can pick another kernel in another
    process, and with TF32 another precision, so a run's validation and test scores and
    evaluate.py's would differ beyond round-off. The heuristics give every process the same
    kernels for the same shapes."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


@torch.no_grad()
def predict_pairs(model, data: SplitData, batch_size=None, amp_dtype=None, scorer=None) -> np.ndarray:
    """Image-level scores: the mean of each pair's patch predictions (docs/method.md#patches).

    Default batch: 4096 patches on a GPU; 128 on a CPU, where small batches stay in cache
    (measured: 886 patch pairs/s at 128 vs 455 at 4096 on the 2-core build machine).
    `scorer`: a Scorer of this model (a TrainStep's .scorer); None = eager."""
    if batch_size is None:
        batch_size = 128 if data.left.device.type == "cpu" else 4096
    if scorer is None:
        scorer = Scorer("eager", model, amp_dtype)
    model.eval()
    sums = torch.zeros(data.num_pairs, dtype=torch.float64, device=data.left.device)
    with cudnn_heuristics():
        for start in range(0, data.num_patches, batch_size):
            sl = slice(start, start + batch_size)
            quality = scorer(data.left[sl].float(), data.right[sl].float(),
                             full=start + batch_size <= data.num_patches)
            sums.index_add_(0, data.pair_index[sl], quality.double())
    # patches per pair by index_add_ rather than bincount: the same integers, and an output
    # whose shape does not depend on the data, so the scoring path also runs on fake CUDA
    # tensors (tests/test_cuda_host.py)
    counts = torch.zeros_like(sums).index_add_(0, data.pair_index, torch.ones_like(data.pair_index, dtype=sums.dtype))
    return (sums / counts).cpu().numpy()
