r"""The training step, on data resident on the device, and the optimizer it steps.

A split's patches live on the device as two contiguous tensors; a batch is an index
slice of a seeded permutation (no Dataset, no collation, no host sync inside the loop).
One forward pass per step gives both outputs; the joint loss is
L1(quality) + nss_weight * L1(nss) (docs/method.md#training).

How a step runs is `train.step` (`auto`: graph for one CUDA process, fused splits
included, eager on the CPU and under torchrun; `step_of`):

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
import torch
import torch.nn.functional as F

from siqa.data.inputs import SplitData
from siqa.errors import UserError
from siqa.scoring import Scorer, compile_mode
from siqa.settings import Settings, setting_choices

STEP_MODES = setting_choices("train.step")
GRAPH_WARMUP_STEPS = 3  # eager steps on a side stream before capture (PyTorch's CUDA-graph recipe)


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


def joint_loss(model, data: SplitData, idx, nss_weight, spec, amp_dtype=None, cache_enabled=True):
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


def step_of(setting, device, world=1) -> str:
    """train.step as this run takes its steps: `auto` is a captured CUDA graph for one CUDA
    process (the fast path; fused splits capture their rounds, siqa.training.fused), eager
    elsewhere: on the CPU (a graph is CUDA's) and under torchrun (DDP's all-reduce runs
    between the graph's pieces)."""
    if setting != "auto":
        return setting
    return "graph" if torch.device(device).type == "cuda" and world == 1 else "eager"


def fused_step(mode) -> str:
    """How FusedSplits runs its rounds under train.step=`mode` (step_of's answer): captured
    for graph, eagerly otherwise (train.step=compile compiles the scoring, not the rounds)."""
    return "graph" if mode == "graph" else "eager"


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
        self.spec = (model.module if _is_ddp(model) else model).spec
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
        loss, loss_q, loss_n = joint_loss(self.forward, data, idx, self.nss_weight, self.spec,
                                          self.amp_dtype, cache_enabled)
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
                                              self.spec, self.amp_dtype, cache_enabled=False)
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


def epoch_steps(model, optimizer, data: SplitData, order, batch_size, nss_weight,
                amp_dtype=None, progress=None, step=None):
    """train_epoch as a generator that yields after every step and returns the mean losses
    (the form in which siqa.training.concurrent interleaves the steps of several splits)."""
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


def make_optimizer(model, cfg):
    """train.optimizer over the network's parameters, or over its own parameter groups where
    it has them (`param_groups(lr)`: PAD-Net's per-group learning rates). `cfg`: the run's
    resolved config."""
    t = Settings(cfg).train
    params = model.param_groups(t.lr) if hasattr(model, "param_groups") else model.parameters()
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)


# How a step runs its optimizer, not what the optimizer is: train.step=graph sets these (and
# makes the learning rate a device tensor), and a checkpoint of such a run stores them.
STEP_MODE_OPTIONS = ("fused", "foreach", "capturable")


def load_optimizer_state(optimizer, saved):
    """optimizer.load_state_dict(saved), keeping how this run's steps execute.

    load_state_dict replaces every group option with the saved one, so a checkpoint of a
    train.step=graph run would make a resumed eager run keep the fused SGD kernel, Adam's
    capturable path and a tensor learning rate. The saved hyper-parameters and state stay
    (the learning rate as a float, with its scheduled value); the execution options are
    this optimizer's own, and a graph step re-applies its own when it is built."""
    own = [{k: g[k] for k in STEP_MODE_OPTIONS if k in g} for g in optimizer.param_groups]
    optimizer.load_state_dict(saved)
    for group, options in zip(optimizer.param_groups, own):
        group.update(options)
        if torch.is_tensor(group["lr"]):
            group["lr"] = float(group["lr"])
        if not group.get("capturable") and not group.get("fused"):
            for p in group["params"]:  # a capturable Adam's step counters live on the device
                state = optimizer.state.get(p, {})
                if torch.is_tensor(state.get("step")) and state["step"].device.type != "cpu":
                    state["step"] = state["step"].to("cpu", torch.float32)
