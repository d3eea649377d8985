r"""K content splits of one run trained as ONE fused network ("horizontal fusion": HFTA,
Wang et al., MLSys 2021; PyTorch's torch.func model-ensembling recipe).

The K networks' parameters and buffers are stacked along a new leading split dimension
(torch.func.stack_module_state); one training round is one vmapped forward of
functional_call over that dimension, one backward, and one optimizer update written over
the stacked tensors. Each split keeps what it has when trained alone:

    its own data (SplitData) and its own epoch order; in round t it takes the t-th batch of
    its order, or nothing once its epoch is over:

        round t:  split k's batch = order_k[t*b : (t+1)*b]  (the last one partial), or none
                  splits whose batches have the same size form a group: ONE vmapped call
                  splits without a batch: no forward, no masks drawn, no update

    its own dropout masks: each nn.Dropout of the network is replaced, in a functional copy,
    by a module that multiplies by a mask passed in as a vmapped input; before a group's
    call the masks are drawn per split from that split's own torch.Generator, per dropout
    call in the network's call order (found by a tracing pass), with the call F.dropout
    makes on the CPU (`empty_like(x).bernoulli_(1 - p)`, `div_(1 - p)`, `x * mask`), so a
    split's masks on the CPU are those its sequential run draws from the global generator;

    its own batch statistics and BatchNorm running statistics (the stacked buffers are
    vmapped inputs, updated in place by batch_norm under vmap);

    its own optimizer state: SGD (momentum buffer set to the first gradient, dampening 0,
    no Nesterov) and Adam (amsgrad off) as torch.optim's single-tensor path computes them,
    with weight decay added to the gradient, and a per-split Adam step count for the bias
    corrections. A split that does not step in a round keeps its parameters, momentum
    buffer, Adam moments and step count:

        full round (every split, one batch size): the stacked parameters are differentiated
            and updated by one batched step (Adam's bias corrections per split as (K,)
            tensors where the step counts differ, else python floats as torch.optim's)
        any other round: each group differentiates a copy of its splits' rows
            (index_select, as leaves), and the optimizer updates the stepping splits'
            rows one by one, with torch.optim's own scalar arithmetic

    its checkpoint: `split_state(k)` gives the model state_dict, an optimizer state_dict
    that torch.optim.SGD / Adam built over that split's own network loads, and its RNG
    state; `load_split_state(k, ...)` takes them back (a fused run's per-split states
    resume sequentially, and a sequential run's resume fused).

The learning rate is shared by all splits (one config) and set per epoch (`set_lr`, e.g.
from a StepLR). Networks: every network whose forward vmaps (bourbia2021, stereoqanet,
multiscore). PAD-Net is refused with a UserError: its GDN lower bound is a custom
torch.autograd.Function without a vmap rule (and it has per-group learning rates, which
the fused optimizer does not implement either).

Numerics: the arithmetic is the sequential run's, not its exact kernels: a vmapped
convolution is a grouped convolution and a vmapped linear layer a batched matmul, so sums
are accumulated in another order (float64: parameters within 3e-16 relative after 2
epochs; float32 1.7e-7, tests/test_fused.py), and the batched optimizer pass may fuse a
multiply-add at other element positions than a per-split pass.

Speed: gradients are taken with torch.autograd.grad, and each stacked parameter is given
the memory layout of its gradient once (a vmapped linear layer's weight gradient comes out
transposed), so that no pass copies across strides. On the CPU the fused step is still
slower than the splits one after another (benchmarks/fused_throughput.py: 0.8x at K = 3,
one thread): vmap's batch rules reshape between (K*B, C, H, W) and (B, K*C, H, W) around
every pooling and grouped convolution. The aim is the GPU, where one launch of K splits'
work replaces K small ones (not measured here: no GPU was available).

Host synchronisation: none inside a round, by reading the code (not run on CUDA): the
round plan depends only on the orders' lengths (host ints); the small index tensors are
built once and cached, Adam's per-split bias corrections are one host-to-device copy a full
round (not a sync; for a CUDA-graph capture they would have to become device tensors
filled in place). `epoch` reads the mean losses back once an epoch, as
siqa.training.step.epoch_steps does. On CUDA the masks are drawn from each split's CUDA generator
with bernoulli_, which is not the fused dropout kernel F.dropout uses on CUDA, so CUDA masks
are per split and reproducible, but not those of a sequential CUDA run.
"""
import copy
from collections import OrderedDict

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from siqa.data.inputs import SplitData
from siqa.errors import UserError
from siqa.models.spec import NSS_DIM
from siqa.training.concurrent import finish
from siqa.training.step import joint_loss

OPTIMIZERS = ("sgd", "adam")


def plan_rounds(lengths, batch_size):
    """The rounds of one epoch for splits whose orders have `lengths` patches: a list of
    rounds, each a list of (batch size, [split indices]) groups, splits in ascending order,
    groups by descending batch size. Split k's batch in round t is
    order_k[t * batch_size : t * batch_size + size]."""
    rounds = []
    t = 0
    while any(t * batch_size < n for n in lengths):
        groups = {}
        for k, n in enumerate(lengths):
            size = min(batch_size, n - t * batch_size)
            if size > 0:
                groups.setdefault(size, []).append(k)
        rounds.append(sorted(groups.items(), key=lambda item: -item[0]))
        t += 1
    return rounds


class _Feed:
    """The masks of one split's forward (inside vmap), handed to the dropout calls in the
    order the tracing pass found; a forward that calls them otherwise is an error."""

    def __init__(self, calls):
        self.calls = calls  # [(qualified name, p, per-sample shape, dtype)] in call order
        self.masks, self.position = None, 0

    def start(self, masks):
        self.masks, self.position = masks, 0

    def take(self, name):
        if self.masks is None:
            raise RuntimeError("fused dropout called outside a fused round")
        if self.position >= len(self.calls) or self.calls[self.position][0] != name:
            raise UserError(f"fused training: dropout {name!r} was called out of the order the "
                            "tracing pass recorded (a forward with data-dependent control flow)")
        mask = self.masks[self.position]
        self.position += 1
        return mask

    def finish(self):
        if self.position != len(self.calls):
            raise UserError(f"fused training: the forward called {self.position} dropout layers, "
                            f"the tracing pass {len(self.calls)}")
        self.masks = None


class _FedDropout(nn.Module):
    """nn.Dropout(p, inplace) whose mask is given (drawn and scaled by 1 / (1 - p)
    beforehand); at p = 0 and p = 1 it takes none, as F.dropout draws none."""

    def __init__(self, name, p, inplace, feed):
        super().__init__()
        self.name, self.p, self.inplace, self._feed = name, p, inplace, feed

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        if self.p == 1:  # F.dropout: input * 0
            mask = torch.zeros((), dtype=x.dtype, device=x.device)
        else:
            mask = self._feed.take(self.name)
        return x.mul_(mask) if self.inplace else x * mask


def _trace_dropout(model, spec, dtype, device, amp_dtype):
    """The nn.Dropout calls of one forward that draw a mask (0 < p < 1), in call order (a
    module called twice is listed twice): (name, p, per-sample shape, dtype). Runs `model`
    once in eval mode on a batch of 2 zero patches (no randomness, no running-statistic
    update), then puts its mode back."""
    calls, hooks = [], []
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.dropout._DropoutNd) and type(module) is not nn.Dropout:
            raise UserError(f"fused training: {type(module).__name__} ({name}) is not supported "
                            "(only nn.Dropout masks are drawn per split)")
        if type(module) is nn.Dropout:
            def hook(mod, args, name=name):
                x = args[0]
                if x.dim() < 1 or x.shape[0] != 2:
                    raise UserError(f"fused training: dropout {name} does not act on the batch "
                                    "dimension first")
                if 0 < mod.p < 1:
                    calls.append((name, float(mod.p), tuple(x.shape[1:]), x.dtype))
            hooks.append(module.register_forward_pre_hook(hook))
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(2, spec.channels, spec.patch, spec.patch, dtype=dtype, device=device)
        with torch.no_grad(), torch.autocast(torch.device(device).type, dtype=amp_dtype,
                                             enabled=amp_dtype is not None):
            model(x, x)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return calls


def _functional_copy(model, feed):
    """A copy of `model` on the meta device (functional_call supplies every tensor) with each
    nn.Dropout replaced by a _FedDropout, in training mode."""
    template = copy.deepcopy(model).to("meta")
    for name, module in list(template.named_modules()):
        if type(module) is nn.Dropout:
            parent_name, _, child = name.rpartition(".")
            parent = template.get_submodule(parent_name) if parent_name else template
            setattr(parent, child, _FedDropout(name, float(module.p), module.inplace, feed))
    return template.train()


def _dense_strides(t):
    """t's strides if t is a dense (gap-free) permutation of its dimensions, else None."""
    order = sorted(range(t.dim()), key=lambda d: (t.stride(d), t.shape[d]))
    expected, size = [0] * t.dim(), 1
    for d in order:
        expected[d] = size
        size *= t.shape[d]
    strides = tuple(expected)
    if t.numel() > 0 and all(t.stride(d) == strides[d] for d in range(t.dim()) if t.shape[d] > 1):
        return strides
    return None


def _is_vmap_rule_error(err):
    text = str(err)
    return "autograd.Function" in text and ("vmap" in text or "functorch" in text)


class FusedSplits:
    """K splits of one network trained as one fused network (see the module docstring).

    models      K freshly initialised networks of one class and configuration on one
                device, each built as its sequential split builds it (manual_seed(seed + r),
                build, init, set_standardisation). Their tensors are copied (stacked); the
                models are not used afterwards (except models[0], run once in eval mode to
                trace the dropout calls).
    generators  K torch.Generators on the models' device, each holding its split's RNG
                state at the point its sequential run starts training (on the CPU:
                torch.get_rng_state() after init); split k's dropout masks continue it.
    optimizer   "sgd" (lr, momentum, weight_decay) or "adam" (lr, weight_decay, betas,
                eps), as siqa.training.step.make_optimizer builds them.
    nss_weight, amp_dtype, cache_enabled: as siqa.training.step.joint_loss takes them.
    initial_lr  when a StepLR drives the rate: the sequential optimizer's param_groups then
                carry "initial_lr", and split_state's do too.
    """

    def __init__(self, models, generators, *, optimizer="sgd", lr, momentum=0.0,
                 weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8, nss_weight=0.0,
                 amp_dtype=None, cache_enabled=True, initial_lr=None):
        models = list(models)
        if not models:
            raise ValueError("FusedSplits needs at least one model")
        if len(generators) != len(models):
            raise ValueError(f"{len(models)} models but {len(generators)} generators")
        if optimizer not in OPTIMIZERS:
            raise UserError(f"fused training: optimizer {optimizer!r} (expected sgd or adam)")
        first = models[0]
        name = type(first).__name__
        keys = [(k, v.shape, v.dtype) for k, v in first.state_dict().items()]
        for model in models[1:]:
            if type(model) is not type(first) or \
                    [(k, v.shape, v.dtype) for k, v in model.state_dict().items()] != keys:
                raise ValueError("FusedSplits: the models differ in class or state_dict layout")
        param_list = list(first.parameters())
        self.device = param_list[0].device
        self.dtype = param_list[0].dtype
        for g in generators:
            if g.device.type != self.device.type:
                raise ValueError(f"FusedSplits: a generator on {g.device}, the models on {self.device}")
        self.num_splits = len(models)
        self.spec = first.spec
        self._nss_dim = int(getattr(first, "nss_dim", NSS_DIM)) if self.spec.predicts_nss else 0
        self.nss_weight, self.amp_dtype, self.cache_enabled = nss_weight, amp_dtype, cache_enabled
        self.optimizer, self.lr, self.momentum = optimizer, float(lr), float(momentum)
        self.weight_decay, self.betas, self.eps = float(weight_decay), tuple(map(float, betas)), float(eps)
        self.initial_lr = initial_lr
        self.generators = list(generators)

        self.calls = _trace_dropout(first, self.spec, self.dtype, self.device, amp_dtype)
        self._feed = _Feed(self.calls)
        self._template = _functional_copy(first, self._feed)
        state = first.state_dict()
        self._state_keys = list(state.keys())
        self._state_metadata = getattr(state, "_metadata", None)
        self._strides = {key: value.stride() for key, value in state.items()}  # the network's layouts
        self.params, self.buffers = stack_module_state(models)
        self._param_names = list(self.params)
        if set(self._param_names) | set(self.buffers) != set(self._state_keys):
            raise ValueError("FusedSplits: parameters and buffers do not match the state_dict keys")

        self._index_cache = {}
        self._probe(name)  # a network that cannot be vmapped stops here (PAD-Net)
        # optimizer state, per split along dim 0 (zeros until a split's first step)
        # optimizer steps per split: Adam's count; for SGD, > 0 = the momentum buffer is set
        self.steps = [0] * self.num_splits
        self.state = {}
        with torch.no_grad():
            for n, p in self.params.items():
                if optimizer == "sgd" and self.momentum != 0:
                    self.state[n] = {"momentum_buffer": torch.zeros_like(p)}
                elif optimizer == "adam":
                    self.state[n] = {"exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
        if hasattr(first, "param_groups"):
            raise UserError(f"fused training: {name} has per-group learning rates "
                            "(param_groups), which the fused optimizer does not implement")

    # ---------------------------------------------------------------- construction helpers

    @classmethod
    def from_train_config(cls, models, generators, t, amp_dtype=None, **kwargs):
        """From a run's `train` config section, as siqa.training.step.make_optimizer reads it."""
        if t["optimizer"] == "adam":
            return cls(models, generators, optimizer="adam", lr=t["lr"], weight_decay=t["weight_decay"],
                       nss_weight=t["nss_weight"], amp_dtype=amp_dtype, **kwargs)
        return cls(models, generators, optimizer="sgd", lr=t["lr"], momentum=t["momentum"],
                   weight_decay=t["weight_decay"], nss_weight=t["nss_weight"], amp_dtype=amp_dtype,
                   **kwargs)

    def _probe(self, name):
        """One vmapped forward and gradient of every split on 2 zero patches (buffers cloned,
        no state changes): a network whose forward cannot be vmapped fails here, as a
        UserError. Then each stacked parameter takes the memory layout of its gradient
        (a vmapped linear layer's weight gradient comes out transposed), so that neither
        autograd nor the optimizer's elementwise passes work across strides."""
        buffers = {n: b.clone() for n, b in self.buffers.items()}
        k = self.num_splits
        masks = tuple(torch.ones((k, 2) + shape, dtype=dtype, device=self.device)
                      for _, _, shape, dtype in self.calls)
        x = torch.zeros(k, 2, self.spec.channels, self.spec.patch, self.spec.patch,
                        dtype=self.dtype, device=self.device)
        try:
            with torch.enable_grad():
                losses = self._vmapped(self.params, buffers, masks, x, x, self._zero_targets(k, 2), 2)
                grads = torch.autograd.grad(losses[:, 0].sum(), list(self.params.values()),
                                            allow_unused=True)
        except RuntimeError as err:
            line = " ".join(str(err).split())[:300]
            if _is_vmap_rule_error(err):
                raise UserError(f"fused training: {name} cannot run under torch.func.vmap: it uses "
                                "a custom torch.autograd.Function without a vmap rule "
                                f"({line})") from None
            raise UserError(f"fused training: {name} cannot run under torch.func.vmap ({line})") from None
        finally:
            self._feed.masks = None
        with torch.no_grad():
            for (n, p), g in zip(list(self.params.items()), grads):
                strides = None if g is None else _dense_strides(g)
                if strides is not None and strides != p.stride():
                    q = torch.empty_strided(p.shape, strides, dtype=p.dtype, device=p.device)
                    self.params[n] = q.copy_(p).requires_grad_()

    def _zero_targets(self, groups, size):
        targets = {"score": torch.zeros(groups, size, device=self.device),
                   "nss": torch.zeros(groups, size, self._nss_dim, device=self.device)}
        if self.spec.needs_view_scores:
            targets["views"] = torch.zeros(groups, size, 2, device=self.device)
        return targets

    # ---------------------------------------------------------------------------- training

    def set_lr(self, lr):
        """The learning rate of every split from the next round on (e.g. a StepLR's)."""
        self.lr = float(lr)

    def _split_losses(self, params, buffers, masks, left, right, targets, pairs):
        """One split's (total, quality, nss) losses of its batch (runs under vmap): exactly
        siqa.training.step.joint_loss, the network being the functional copy with this split's
        tensors and masks."""
        self._feed.start(masks)

        def network(l, r):
            return functional_call(self._template, (params, buffers), (l.to(self.dtype), r.to(self.dtype)))

        batch = SplitData(left, right, pairs, targets["score"], targets["nss"], targets.get("views"))
        total, quality, nss = joint_loss(network, batch, slice(None), self.nss_weight, self.spec,
                                         self.amp_dtype, self.cache_enabled)
        self._feed.finish()
        return torch.stack([total, quality, nss])

    def _vmapped(self, params, buffers, masks, left, right, targets, size):
        pairs = self._index(("pairs", size), lambda: torch.arange(size, device=self.device))
        return vmap(self._split_losses, in_dims=(0, 0, 0, 0, 0, 0, None),
                    randomness="error")(params, buffers, masks, left, right, targets, pairs)

    def _index(self, key, make):
        """A small device tensor built once per key (split subsets, masks, aranges)."""
        if key not in self._index_cache:
            self._index_cache[key] = make()
        return self._index_cache[key]

    def _draw_masks(self, splits, size):
        """The dropout masks of a group: per traced call a (G, size, ...) tensor; split k's row
        drawn from its own generator, its calls in forward order (F.dropout's CPU draw)."""
        masks = []
        for _, p, shape, dtype in self.calls:
            mask = torch.empty((len(splits), size) + shape, dtype=dtype, device=self.device)
            for row, k in enumerate(splits):
                mask[row].bernoulli_(1 - p, generator=self.generators[k])
            masks.append(mask.div_(1 - p))
        return tuple(masks)

    def _batch(self, datas, batches, splits):
        """The stacked inputs and per-patch targets of a group."""
        left = torch.stack([datas[k].left[batches[k]] for k in splits])
        right = torch.stack([datas[k].right[batches[k]] for k in splits])
        targets = {"score": [], "nss": [], "views": []}
        for k in splits:
            pairs = datas[k].pair_index[batches[k]]
            targets["score"].append(datas[k].score[pairs])
            targets["nss"].append(datas[k].nss[pairs])
            if self.spec.needs_view_scores:
                targets["views"].append(datas[k].views[pairs])
        return left, right, {name: torch.stack(v) for name, v in targets.items() if v}

    def step_round(self, datas, batches):
        """One round: split k takes one step on the patches `batches[k]` (an index tensor on
        datas[k]'s device) of `datas[k]`, or none where batches[k] is None. Splits with
        batches of one size run as one vmapped call. Returns {k: detached (total, quality,
        nss) losses, shape (3,)} for the splits that stepped.

        A full round (every split, one batch size) differentiates the stacked parameters
        themselves and updates them with one batched optimizer step; otherwise each group
        differentiates a copy of its splits' rows (index_select, as leaves: no full-size
        zero gradients) and the optimizer updates those splits' rows one by one."""
        if len(datas) != self.num_splits or len(batches) != self.num_splits:
            raise ValueError(f"expected {self.num_splits} datas and batches")
        groups = {}
        for k, idx in enumerate(batches):
            if idx is not None and len(idx) > 0:
                groups.setdefault(len(idx), []).append(k)
        if not groups:
            return {}
        everyone = list(range(self.num_splits))
        totals, losses, sources = [], {}, []
        for size, splits in sorted(groups.items(), key=lambda item: -item[0]):
            masks = self._draw_masks(splits, size)
            left, right, targets = self._batch(datas, batches, splits)
            if splits == everyone:  # the stacked tensors themselves (BatchNorm updates in place)
                params = self.params
                out = self._vmapped(params, self.buffers, masks, left, right, targets, size)
            else:
                ids = self._index(("ids", tuple(splits)),
                                  lambda splits=splits: torch.tensor(splits, device=self.device))
                params = {n: p.detach().index_select(0, ids).requires_grad_() for n, p in self.params.items()}
                buffers = {n: b.index_select(0, ids) for n, b in self.buffers.items()}
                out = self._vmapped(params, buffers, masks, left, right, targets, size)
                with torch.no_grad():
                    for n, b in buffers.items():  # this group's running statistics, back in place
                        self.buffers[n].index_copy_(0, ids, b)
            sources.append((splits, params))
            totals.append(out[:, 0].sum())
            out = out.detach()
            for row, k in enumerate(splits):
                losses[k] = out[row]
        # autograd.grad, not backward: a vmapped linear layer's weight gradient comes out
        # transposed, and AccumulateGrad would copy every one into the parameter's layout
        inputs = [t for _, params in sources for t in params.values()]
        grads = iter(torch.autograd.grad(torch.stack(totals).sum(), inputs, allow_unused=True))
        self._update([(splits, {n: next(grads) for n in params}) for splits, params in sources])
        return {k: losses[k] for k in sorted(losses)}

    def epoch(self, datas, orders, batch_size, progress=None):
        """One epoch as a generator that yields each round's losses ({k: (3,)}) and returns
        each split's mean (total, quality, nss) over its own steps, as a list of dicts (the
        values siqa.training.step.epoch_steps returns for that split). orders[k]: split k's epoch
        order (siqa.training.step.epoch_order) on its data's device."""
        sums = [torch.zeros(3, device=self.device) for _ in range(self.num_splits)]
        counts = [0] * self.num_splits
        for groups in plan_rounds([len(o) for o in orders], batch_size):
            batches = [None] * self.num_splits
            for size, splits in groups:
                for k in splits:
                    start = counts[k] * batch_size
                    batches[k] = orders[k][start : start + size]
            losses = self.step_round(datas, batches)
            for k, value in losses.items():
                sums[k] += value
                counts[k] += 1
            if progress is not None:
                progress.update(sum(len(b) for b in batches if b is not None))
            yield losses
        means = []
        for k in range(self.num_splits):
            values = (sums[k] / max(counts[k], 1)).tolist()
            means.append({"total": values[0], "quality": values[1], "nss": values[2]})
        return means

    def train_epoch(self, datas, orders, batch_size, progress=None):
        """`epoch` run to its end: each split's mean losses (a list of dicts)."""
        return finish(self.epoch(datas, orders, batch_size, progress))

    # --------------------------------------------------------------------------- optimizer

    @torch.no_grad()
    def _update(self, sources):
        """One optimizer step of the splits that took a step this round. `sources`: (splits,
        {name: those splits' gradients along dim 0, or None}) per group. The other splits'
        parameters and optimizer state are not touched."""
        active = sorted(k for splits, _ in sources for k in splits)
        fresh = [k for k in active if self.steps[k] == 0]
        for k in active:
            self.steps[k] += 1
        full = len(active) == self.num_splits and len(sources) == 1
        if full and len(fresh) in (0, self.num_splits):
            # every split at once; the Adam scalars per split where their step counts differ
            scalars = self._adam_scalars(active) if self.optimizer == "adam" else None
            grads = sources[0][1]
            for n, p in self.params.items():
                self._step(n, p, slice(None), grads[n], bool(fresh), scalars)
            return
        for splits, grads in sources:  # row by row: exactly the sequential arithmetic
            for row, k in enumerate(splits):
                scalars = self._adam_scalars([k]) if self.optimizer == "adam" else None
                for n, p in self.params.items():
                    grad = grads[n]
                    if grad is not None:
                        self._step(n, p[k], k, grad[row], k in fresh, scalars)

    def _step(self, name, p, rows, grad, fresh, scalars):
        """torch.optim's single-tensor SGD / Adam step of `p` (the stacked parameter, or one
        split's row of it) with state rows `rows`; `scalars`: Adam's (-lr / bias correction 1,
        sqrt(bias correction 2)), python floats or per-split (K,) tensors."""
        if grad is None:  # torch.optim skips a parameter without a gradient
            return
        g = grad
        if self.weight_decay != 0:  # in place (torch.optim: a new tensor): the gradient is ours
            g = g.add_(p, alpha=self.weight_decay)
        if self.optimizer == "sgd":
            if self.momentum != 0:
                buf = self.state[name]["momentum_buffer"][rows]
                if fresh:  # torch.optim: buf = clone(grad)
                    buf.copy_(g)
                else:
                    buf.mul_(self.momentum).add_(g)
                g = buf
            p.add_(g, alpha=-self.lr)
            return
        beta1, beta2 = self.betas
        exp_avg = self.state[name]["exp_avg"][rows]
        exp_avg_sq = self.state[name]["exp_avg_sq"][rows]
        exp_avg.lerp_(g, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        neg_step_size, bias_correction2_sqrt = scalars
        if torch.is_tensor(neg_step_size):  # per split, broadcast along the split dimension
            shape = (-1,) + (1,) * (p.dim() - 1)
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt.view(shape)).add_(self.eps)
            p.addcdiv_(exp_avg * neg_step_size.view(shape), denom)
        else:
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(self.eps)
            p.addcdiv_(exp_avg, denom, value=neg_step_size)

    def _adam_scalars(self, splits):
        """-lr / (1 - beta1^step) and sqrt(1 - beta2^step) of `splits`, in double on the host
        as torch.optim.Adam computes them: python floats where the splits' step counts agree,
        else (K,) tensors in the parameters' dtype (torch.optim's python scalars enter its
        kernels cast to the tensors' dtype; a host-to-device copy, not a sync)."""
        beta1, beta2 = self.betas
        values = []
        for k in splits:
            step = float(self.steps[k])
            values.append((-(self.lr / (1 - beta1 ** step)), (1 - beta2 ** step) ** 0.5))
        if len(set(values)) == 1:
            return values[0]
        table = torch.tensor(values, dtype=torch.float64).to(self.dtype).T.contiguous()
        table = table.to(self.device, non_blocking=True)
        return table[0], table[1]

    def _new_optimizer(self, params):
        if self.optimizer == "adam":
            opt = torch.optim.Adam(params, lr=self.lr, betas=self.betas, eps=self.eps,
                                   weight_decay=self.weight_decay)
        else:
            opt = torch.optim.SGD(params, lr=self.lr, momentum=self.momentum,
                                  weight_decay=self.weight_decay)
        if self.initial_lr is not None:
            for group in opt.param_groups:
                group["initial_lr"] = self.initial_lr
        return opt

    # ------------------------------------------------------------------ per-split states

    def _new(self, key, k):
        """An empty tensor of split k's `key` in the layout its own network has it in (the
        stacked tensors may hold it transposed, see _probe)."""
        like = (self.params if key in self.params else self.buffers)[key][k]
        return torch.empty_strided(like.shape, self._strides[key], dtype=like.dtype, device=like.device)

    def model_state(self, k):
        """Split k's model state_dict: the keys, shapes, dtypes and memory layouts of its own
        network's (copies)."""
        state = OrderedDict()
        for key in self._state_keys:
            source = self.params if key in self.params else self.buffers
            state[key] = self._new(key, k).copy_(source[key][k].detach())
        if self._state_metadata is not None:
            state._metadata = copy.deepcopy(self._state_metadata)
        return state

    def optimizer_state(self, k):
        """Split k's optimizer state_dict, as torch.optim.SGD / Adam over its network's
        parameters (in model.parameters() order) writes it: the torch.optim optimizer of a
        stand-in parameter list takes one zero-gradient step to create its own state in its
        own format, whose values are then replaced by split k's."""
        stand_in = [nn.Parameter(self._new(n, k).zero_()) for n in self._param_names]
        opt = self._new_optimizer(stand_in)
        if self.steps[k] > 0:
            for p in stand_in:
                p.grad = torch.zeros_like(p)
            opt.step()
            with torch.no_grad():
                for n, p in zip(self._param_names, stand_in):
                    if p not in opt.state:  # (SGD without momentum keeps no state)
                        continue
                    state = opt.state[p]
                    if "step" in state:
                        state["step"].fill_(self.steps[k])
                    for key, value in self.state.get(n, {}).items():
                        state[key].copy_(value[k])
        return opt.state_dict()

    def rng_state(self, k):
        """Split k's RNG state as a sequential run's checkpoint holds it: {"torch": ...} for a
        CPU generator, {"cuda": ...} for a CUDA one (the integrator adds the other)."""
        g = self.generators[k]
        return {"torch" if g.device.type == "cpu" else "cuda": g.get_state()}

    def split_state(self, k):
        """{"model", "optimizer", "rng"} of split k, in a sequential run's formats
        (`load_split_state(k, **state)` takes it back)."""
        return {"model": self.model_state(k), "optimizer": self.optimizer_state(k),
                "rng": self.rng_state(k)}

    def load_split_state(self, k, model=None, optimizer=None, rng=None):
        """Put back split k's model state_dict, optimizer state_dict (of torch.optim.SGD /
        Adam over its network, hyper-parameters as this FusedSplits'; the learning rate
        stays this one's: set it with set_lr) and RNG state; any of them may be None."""
        if model is not None:
            missing = set(self._state_keys) - set(model)
            extra = set(model) - set(self._state_keys)
            if missing or extra:
                raise UserError(f"fused training: split {k}'s model state does not fit the network "
                                f"(missing {sorted(missing)[:3]}, unexpected {sorted(extra)[:3]})")
            with torch.no_grad():
                for key in self._state_keys:
                    target = self.params[key] if key in self.params else self.buffers[key]
                    target[k].copy_(model[key])
        if optimizer is not None:
            self._load_optimizer_state(k, optimizer)
        if rng is not None:
            key = "torch" if self.generators[k].device.type == "cpu" else "cuda"
            self.generators[k].set_state(rng[key].to("cpu", torch.uint8))

    def _load_optimizer_state(self, k, saved):
        stand_in = [nn.Parameter(self._new(n, k).zero_()) for n in self._param_names]
        opt = self._new_optimizer(stand_in)
        try:
            opt.load_state_dict(saved)
        except (ValueError, KeyError) as err:
            raise UserError(f"fused training: split {k}'s optimizer state does not fit "
                            f"({' '.join(str(err).split())[:200]})") from None
        group = opt.param_groups[0]
        wanted = {"weight_decay": self.weight_decay}
        if self.optimizer == "sgd":
            wanted.update(momentum=self.momentum, dampening=0, nesterov=False)
        else:
            wanted.update(betas=self.betas, eps=self.eps, amsgrad=False)
        for key, value in wanted.items():
            have = tuple(group[key]) if key == "betas" else group[key]
            if have != value:
                raise UserError(f"fused training: split {k}'s optimizer state has {key}={have}, "
                                f"this run {value}")
        states = [opt.state.get(p, {}) for p in stand_in]
        if not any(states):
            steps = 0
        else:
            if not all(states):
                raise UserError(f"fused training: split {k}'s optimizer state covers only some parameters")
            if self.optimizer == "adam":
                counts = {float(s["step"]) for s in states}
                if len(counts) != 1:
                    raise UserError(f"fused training: split {k}'s Adam step counts differ between "
                                    f"parameters ({sorted(counts)[:3]})")
                steps = int(counts.pop())
            else:
                steps = max(self.steps[k], 1)  # SGD keeps no count: any value > 0 means "has a buffer"
        with torch.no_grad():
            for n, s in zip(self._param_names, states):
                for key, value in self.state.get(n, {}).items():
                    value[k].copy_(s[key] if s else torch.zeros_like(value[k]))
        self.steps[k] = steps

    def load_into(self, k, model):
        """Copy split k's weights and buffers into `model` (a network of the same build),
        e.g. to score it with siqa.scoring.predict_pairs."""
        model.load_state_dict(self.model_state(k))
        return model
