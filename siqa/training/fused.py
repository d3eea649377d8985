r"""K content splits of one run trained as ONE fused network ("horizontal fusion": HFTA,
Wang et al., MLSys 2021; PyTorch's torch.func model-ensembling recipe).

The K networks' parameters are one (K, N) tensor (siqa.training.fused_optimizer: a row a
split) and their buffers are stacked along a leading split dimension; a round is one
vmapped forward of functional_call over that dimension, one backward and one optimizer
update, the same host operations whatever K (the paper's network: about 1,550 aten ops a
round, 1.19x one split's eager step, full or partial; docs/performance.md):

    epoch start:  the K orders -> device tables: round t's patch indices (K, b) into the
                  splits' patches concatenated, and which splits step in it ((K,) bool)
    round t:      split k's batch = order_k[t*b : (t+1)*b]; a split whose epoch is over, or
                  whose last (partial) batch comes now, does not step in the full-size group:

        group of size b (every round):  gather (K, b) patches -> draw the stepping splits'
                  masks -> [bf16: weights cast] -> vmapped forward, joint loss (K, 3) and
                  gradients (traced once: below) -> gradients joined (one cat) -> optimizer
                  step of the (K,) active splits
        group of size s < b (a split's last batch; splits with equal tails together): the
                  same at batch s, the other splits inactive

Each split keeps what it has when trained alone:

    its own data and epoch order (an inactive split's row reads its own first patches, and
    everything it computes is discarded);

    its own dropout masks: each nn.Dropout of the network is replaced, in a functional copy,
    by a module that multiplies by a mask passed in as a vmapped input. The masks of a round
    are one flat buffer (K, F), F = batch x the per-sample sizes of every dropout call in the
    network's call order (found by a tracing pass); each stepping split draws its row with
    ONE bernoulli_ from its own torch.Generator, with a float64 keep-probability per element
    (1 - p of its call), then the buffer is divided by 1 - p. On the CPU this is, element
    for element, what F.dropout draws call after call (`empty_like(x).bernoulli_(1 - p)`,
    `div_(1 - p)`, `x * mask`), so a split's CPU masks are those its sequential run draws
    from the global generator. Masks are drawn in float32 where the activations are
    bfloat16 or float16, and cast once;

    its own batch statistics and BatchNorm running statistics (vmapped inputs updated in
    place; an inactive split's are written back as they were);

    its own optimizer state and step count (siqa.training.fused_optimizer): torch.optim's
    SGD or Adam over the (K, N) tensors; an inactive split's parameters, momentum buffer,
    Adam moments and step count are left bit for bit as they were;

    its checkpoint: `model_state(k)`, `optimizer_state(k)` and `rng_state(k)` give the model
    state_dict, an optimizer state_dict that torch.optim.SGD / Adam built over that split's
    own network loads, and its RNG state; `load_split_state(k, ...)` takes them back (a
    fused run's per-split states resume sequentially, and a sequential run's resume fused).

The learning rate is shared by all splits (one config) and set per epoch (`set_lr`, e.g.
from a StepLR), as a device tensor. Networks: every network whose forward vmaps
(bourbia2021, stereoqanet, multiscore). PAD-Net is refused with a UserError: its GDN lower
bound is a custom torch.autograd.Function without a vmap rule (and it has per-group
learning rates, which the fused optimizer does not implement either).

bfloat16 (train.amp): the weights and biases of every convolution and linear layer are
cast to bfloat16 once a round, outside vmap (one copy of the flat tensor's first columns),
and each of those layers casts its input to bfloat16, which is what autocast does to them
in a sequential step; the rest runs under autocast as there, and the optimizer updates the
float32 masters. (Under vmap, autocast does not reach the convolutions on the CPU, and a
batched float32 bias is added after the convolution, torch's `separate_bias`: activations
would be float32.)

Tracing: the vmapped forward and backward of the full-size group is traced once (torch.fx's
make_fx on real tensors) into the aten ops it runs, and later rounds replay those: the same
kernels on the same tensors (bit for bit), without vmap's batching rules, autograd's
bookkeeping and the composite ops' dispatch in between (1,900 -> 1,550 aten ops a round for
the paper's network). Tail groups run untraced.

Host synchronisation: none inside a round. The round plan depends only on the orders'
lengths (host ints), every index table is on the device before the first round, Adam's
step counts and the learning rate are device tensors, and the losses stay a (K, 3) device
tensor; `epoch` reads the mean losses back once an epoch (tests/test_fused.py forbids
`.item()`, `.tolist()`, `.cpu()`, `bool(tensor)` and aten's `_local_scalar_dense` inside
rounds).

CUDA graphs (step="graph", train.step=auto on CUDA): siqa.training.fused_graphs.

Numerics: the arithmetic is the sequential run's, not its exact kernels: a vmapped
convolution is a grouped convolution and a vmapped linear layer a batched matmul, so sums
are accumulated in another order, and the optimizer's per-split scalars enter as (K, 1)
tensors (the paper's network after 2 epochs, relative to each tensor's largest value:
float64 4e-16 with SGD, 2e-13 with Adam; float32 1.7e-7 with SGD; tests/test_fused.py).
On CUDA the masks are drawn from each split's CUDA generator with bernoulli_, which is not
the fused dropout kernel F.dropout uses on CUDA, so CUDA masks are per split and
reproducible, but not those of a sequential CUDA run.

Speed: see docs/performance.md (host operations per round, measured on the CPU; GPU
throughput: benchmarks/gpu_check.py's `fused` step).
"""
import copy
import math
from collections import OrderedDict
from functools import partial

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from torch.fx.experimental.proxy_tensor import make_fx

from siqa.data.inputs import SplitData
from siqa.errors import UserError
from siqa.models.spec import NSS_DIM
from siqa.settings import Settings
from siqa.training.fused_graphs import CudaGraphs, RoundGraphs
from siqa.training.fused_optimizer import OPTIMIZERS, FlatOptimizer, FlatParameters, dense_strides
from siqa.training.step import joint_loss

STEP_MODES = ("eager", "graph")
CAST_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)  # what autocast runs in bf16


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


def _cast_input(module, args):
    """A convolution's or linear layer's input in its weight's dtype (bfloat16 under
    train.amp), as autocast casts it outside vmap."""
    dtype = module.weight.dtype
    return tuple(a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


class _MixedNorm:
    """A batch norm's forward on a bfloat16 / float16 input with float32 parameters: in
    float32, the output cast back (the mixed-dtype kernel a sequential step runs has no
    batching rule under vmap)."""

    def __init__(self, forward):
        self.forward = forward

    def __call__(self, x):
        if x.dtype in (torch.bfloat16, torch.float16):
            return self.forward(x.float()).to(x.dtype)
        return self.forward(x)


def _functional_copy(model, feed, cast=False):
    """A copy of `model` on the meta device (functional_call supplies every tensor) with each
    nn.Dropout replaced by a _FedDropout, in training mode; `cast`: every convolution and
    linear layer casts its input to its weight's dtype, every batch norm computes in float32
    and returns its input's dtype."""
    template = copy.deepcopy(model).to("meta")
    for name, module in list(template.named_modules()):
        if type(module) is nn.Dropout:
            parent_name, _, child = name.rpartition(".")
            parent = template.get_submodule(parent_name) if parent_name else template
            setattr(parent, child, _FedDropout(name, float(module.p), module.inplace, feed))
        elif cast and isinstance(module, CAST_MODULES):
            module.register_forward_pre_hook(_cast_input)
        elif cast and isinstance(module, nn.modules.batchnorm._NormBase):
            module.forward = _MixedNorm(module.forward)
    return template.train()


def _is_vmap_rule_error(err):
    text = str(err)
    return "autograd.Function" in text and ("vmap" in text or "functorch" in text)


class _Masks:
    """The dropout masks of K splits at one batch size: one flat (K, F) buffer, a row a split,
    the per-call masks (K, size, ...) views of it (see the module docstring)."""

    def __init__(self, calls, num_splits, size, device):
        sizes = [size * math.prod(shape) for _, _, shape, _ in calls]
        dtypes = [dtype for *_, dtype in calls]
        reduced = any(d in (torch.bfloat16, torch.float16) for d in dtypes)
        draw = torch.float32 if reduced or not dtypes else dtypes[0] if len(set(dtypes)) == 1 else torch.float64
        keep = [torch.full((n,), 1 - p, dtype=torch.float64) for (_, p, _, _), n in zip(calls, sizes)]
        self.probability = torch.cat(keep).to(device) if keep else torch.zeros(0, dtype=torch.float64)
        self.divisor = self.probability.to(draw)  # F.dropout: mask.div_(1 - p) in the mask's dtype
        self.raw = torch.ones(num_splits, sum(sizes), dtype=draw, device=device)  # finite when unused
        self.rows = [self.raw[k] for k in range(num_splits)]
        self.scaled = torch.empty_like(self.raw)
        common = dtypes[0] if len(set(dtypes)) == 1 else None
        self.cast = (torch.empty(self.raw.shape, dtype=common, device=device)
                     if common is not None and common != draw else None)
        final = self.cast if self.cast is not None else self.scaled
        views, start = [], 0
        for (_, _, shape, _), n in zip(calls, sizes):
            views.append(final[:, start : start + n].view((num_splits, size) + tuple(shape)))
            start += n
        self.views = tuple(views)
        self.dtypes = None if common is not None else tuple(dtypes)

    def draw(self, generators, splits):
        """Each of `splits` draws its row from its own generator (one bernoulli_ each); the
        other rows keep what they hold. Returns the per-call masks."""
        if not self.views:
            return ()
        for k in splits:
            self.rows[k].bernoulli_(self.probability, generator=generators[k])
        torch.div(self.raw, self.divisor, out=self.scaled)
        if self.cast is not None:
            self.cast.copy_(self.scaled)
        if self.dtypes is not None:  # activations of several dtypes: a cast per call
            return tuple(v.to(d) for v, d in zip(self.views, self.dtypes))
        return self.views


class _Concatenated:
    """The K splits' training data as one set of tensors, split after split; pair indices
    point into the concatenated targets. `gather(idx)`: the batches of a (K, s) table of
    indices into the concatenated patches, as (K, s, ...) tensors."""

    def __init__(self, datas):
        self.lengths = [d.num_patches for d in datas]
        self.starts = [sum(self.lengths[:k]) for k in range(len(datas))]
        pairs = [d.num_pairs for d in datas]
        pair_starts = [sum(pairs[:k]) for k in range(len(datas))]
        self.left = torch.cat([d.left for d in datas])
        self.right = torch.cat([d.right for d in datas])
        self.pair_index = torch.cat([d.pair_index + s for d, s in zip(datas, pair_starts)])
        self.score = torch.cat([d.score for d in datas])
        self.nss = torch.cat([d.nss for d in datas])
        self.views = None if datas[0].views is None else torch.cat([d.views for d in datas])
        self.sources = list(datas)  # what `matches` recognises (views replace them: `split_views`)
        self._fillers = {}

    def matches(self, datas):
        return len(datas) == len(self.sources) and all(a is b for a, b in zip(datas, self.sources))

    def split_views(self, datas):
        """SplitData of each split whose patches are views of the concatenated ones (the
        originals can then be freed); they replace `sources`."""
        views = []
        for d, start, n in zip(datas, self.starts, self.lengths):
            views.append(SplitData(self.left[start : start + n], self.right[start : start + n],
                                   d.pair_index, d.score, d.nss, d.views))
        self.sources = views
        return views

    def fillers(self, size):
        """(K, size) indices of each split's own first patches (an inactive split's row)."""
        if size not in self._fillers:
            rows = [torch.arange(size) % n + start if n else torch.zeros(size, dtype=torch.int64)
                    for start, n in zip(self.starts, self.lengths)]
            self._fillers[size] = torch.stack(rows).to(self.left.device)
        return self._fillers[size]

    def gather(self, idx):
        k, size = idx.shape
        flat = idx.reshape(-1)
        left = self.left.index_select(0, flat).view((k, size) + tuple(self.left.shape[1:]))
        right = self.right.index_select(0, flat).view((k, size) + tuple(self.right.shape[1:]))
        pairs = self.pair_index.index_select(0, flat)
        targets = {"score": self.score.index_select(0, pairs).view(k, size),
                   "nss": self.nss.index_select(0, pairs).view(k, size, self.nss.shape[1])}
        if self.views is not None:
            targets["views"] = self.views.index_select(0, pairs).view(k, size, 2)
        return left, right, targets


class _Buffers:
    """The stacked buffers (K, *shape), each dtype's in one flat tensor, so that an inactive
    split's running statistics are written back as they were in one `where` a dtype."""

    def __init__(self, stacked, num_splits):
        self.views, self.flats = {}, []
        by_dtype = {}
        for n, b in stacked.items():
            by_dtype.setdefault(b.dtype, []).append(n)
        for dtype, names in by_dtype.items():
            sizes = [stacked[n][0].numel() for n in names]
            device = stacked[names[0]].device
            flat = torch.empty(num_splits * sum(sizes), dtype=dtype, device=device)
            owner = torch.cat([torch.arange(num_splits).repeat_interleave(n) for n in sizes]).to(device)
            start = 0
            for n, size in zip(names, sizes):
                view = flat[start : start + num_splits * size].view(stacked[n].shape)
                view.copy_(stacked[n])
                self.views[n] = view
                start += num_splits * size
            self.flats.append((flat, owner))

    def save(self):
        return [flat.clone() for flat, _ in self.flats]

    def restore(self, saved, active):
        for (flat, owner), old in zip(self.flats, saved):
            torch.where(active[owner], flat, old, out=flat)


class _Group:
    """One vmapped step of a round: batch `size`, (K, size) indices into the concatenated
    patches, (K,) bool `active` (on the device) and the host tuple of its stepping splits."""

    __slots__ = ("size", "idx", "active", "splits", "capturable")

    def __init__(self, size, idx, active, splits, capturable=False):
        self.size, self.idx, self.active, self.splits, self.capturable = size, idx, active, splits, capturable


class RoundLosses:
    """A round's losses {k: (total, quality, nss)} of the splits that stepped, read lazily from
    one (K, 3) device tensor (no op unless a split's row is asked for)."""

    def __init__(self, table, splits):
        self.table, self.splits = table, tuple(sorted(splits))

    def __getitem__(self, k):
        if k not in self.splits:
            raise KeyError(k)
        return self.table[k]

    def __iter__(self):
        return iter(self.splits)

    def __len__(self):
        return len(self.splits)

    def keys(self):
        return list(self.splits)

    def items(self):
        return [(k, self[k]) for k in self.splits]


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
                carry "initial_lr", and optimizer_state's do too.
    step        "eager", or "graph" (CUDA: the full-size group of a round captured as a CUDA
                graph, see siqa.training.fused_graphs); `log` takes its one line if a capture (or
                the trace) fails; `graphs`: what captures and replays (CudaGraphs on CUDA;
                tests give a CPU stand-in).
    """

    def __init__(self, models, generators, *, optimizer="sgd", lr, momentum=0.0,
                 weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8, nss_weight=0.0,
                 amp_dtype=None, cache_enabled=True, initial_lr=None, step="eager", log=print,
                 graphs=None):
        models = list(models)
        if not models:
            raise ValueError("FusedSplits needs at least one model")
        if len(generators) != len(models):
            raise ValueError(f"{len(models)} models but {len(generators)} generators")
        if optimizer not in OPTIMIZERS:
            raise UserError(f"fused training: optimizer {optimizer!r} (expected sgd or adam)")
        if step not in STEP_MODES:
            raise ValueError(f"FusedSplits: step {step!r} (expected one of {', '.join(STEP_MODES)})")
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
        self.lr = float(lr)
        self.initial_lr = initial_lr
        self.generators = list(generators)

        self.calls = _trace_dropout(first, self.spec, self.dtype, self.device, amp_dtype)
        self._feed = _Feed(self.calls)
        self._template = _functional_copy(first, self._feed, cast=amp_dtype is not None)
        state = first.state_dict()
        self._state_keys = list(state.keys())
        self._state_metadata = getattr(state, "_metadata", None)
        self._strides = {key: value.stride() for key, value in state.items()}  # the network's layouts
        params, buffers = stack_module_state(models)
        if set(params) | set(buffers) != set(self._state_keys):
            raise ValueError("FusedSplits: parameters and buffers do not match the state_dict keys")
        self._aranges = {}  # batch size -> the per-split pair index of its targets
        self._buffers = _Buffers(buffers, self.num_splits)
        self.buffers = self._buffers.views
        self._buffer_names = list(self.buffers)
        cast = [f"{m}.{p}" if m else p for m, module in first.named_modules()
                if isinstance(module, CAST_MODULES) for p, _ in module.named_parameters(recurse=False)]
        self.flat, unused = self._lay_out(name, params, cast if amp_dtype is not None else ())
        self._leaves = [self.flat.leaves[n] for n in self.flat.names]
        if hasattr(first, "param_groups"):
            raise UserError(f"fused training: {name} has per-group learning rates "
                            "(param_groups), which the fused optimizer does not implement")
        self.optimizer = FlatOptimizer(self.flat, optimizer, lr=lr, momentum=momentum,
                                       weight_decay=weight_decay, betas=betas, eps=eps, unused=unused)
        self._masks = {}  # batch size -> _Masks
        self._traced = {}  # batch size -> the traced forward and backward (False: untraceable)
        self._log = log
        self._sums = torch.zeros(self.num_splits, 3, device=self.device)  # an epoch's losses
        self._data = None
        self.step_mode = step
        self._graphs = None
        if step == "graph" and graphs is None and self.device.type != "cuda":
            raise ValueError(f"FusedSplits: step 'graph' needs CUDA (the models are on {self.device})")
        if step == "graph":
            self._graphs = RoundGraphs(self, graphs or CudaGraphs(self.device), log)

    # ---------------------------------------------------------------- construction helpers

    @classmethod
    def from_config(cls, models, generators, cfg, amp_dtype=None, **kwargs):
        """From a run's resolved config, as siqa.training.step.make_optimizer reads it."""
        t = Settings(cfg).train
        if t.optimizer == "adam":
            return cls(models, generators, optimizer="adam", lr=t.lr, weight_decay=t.weight_decay,
                       nss_weight=t.nss_weight, amp_dtype=amp_dtype, **kwargs)
        return cls(models, generators, optimizer="sgd", lr=t.lr, momentum=t.momentum,
                   weight_decay=t.weight_decay, nss_weight=t.nss_weight, amp_dtype=amp_dtype,
                   **kwargs)

    def _lay_out(self, name, stacked, cast):
        """FlatParameters whose tensors have the memory layouts of their gradients: a probe of
        the stacked tensors gives the layouts, a probe of the flat ones checks them (up to
        three times). Returns it and the names of tensors the loss does not reach."""
        leaves = {n: p.detach().requires_grad_() for n, p in stacked.items()}
        grads = self._probe(name, leaves)
        layouts = {n: None if g is None else dense_strides(g, skip=1) for n, g in zip(leaves, grads)}
        for _ in range(3):
            flat = FlatParameters(stacked, layouts, cast, self.amp_dtype)
            grads = self._probe(name, flat.leaves)
            found = {n: None if g is None else dense_strides(g, skip=1) for n, g in zip(flat.names, grads)}
            if all(found[n] in (None, flat.strides[n]) for n in flat.names):
                break
            layouts = {n: found[n] or layouts[n] for n in flat.names}
        return flat, [n for n, g in zip(flat.names, grads) if g is None]

    def _probe(self, name, params):
        """One vmapped forward and gradient of every split on 2 zero patches (buffers cloned,
        no state changes): a network whose forward cannot be vmapped fails here, as a
        UserError. Returns the gradients of `params` (None where the loss does not reach)."""
        buffers = {n: b.clone() for n, b in self.buffers.items()}
        k = self.num_splits
        masks = tuple(torch.ones((k, 2) + shape, dtype=dtype, device=self.device)
                      for _, _, shape, dtype in self.calls)
        x = torch.zeros(k, 2, self.spec.channels, self.spec.patch, self.spec.patch,
                        dtype=self.dtype, device=self.device)
        try:
            with torch.enable_grad():
                losses = self._vmapped(params, buffers, masks, x, x, self._zero_targets(k, 2), 2)
                return torch.autograd.grad(losses[:, 0].sum(), list(params.values()), allow_unused=True)
        except RuntimeError as err:
            line = " ".join(str(err).split())[:300]
            if _is_vmap_rule_error(err):
                raise UserError(f"fused training: {name} cannot run under torch.func.vmap: it uses "
                                "a custom torch.autograd.Function without a vmap rule "
                                f"({line})") from None
            raise UserError(f"fused training: {name} cannot run under torch.func.vmap ({line})") from None
        finally:
            self._feed.masks = None

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
        self.optimizer.set_lr(lr)

    @property
    def steps(self):
        """Each split's optimizer step count (read back from the device)."""
        return [int(s) for s in self.optimizer.steps.tolist()]

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
        if size not in self._aranges:
            self._aranges[size] = torch.arange(size, device=self.device)
        return vmap(self._split_losses, in_dims=(0, 0, 0, 0, 0, 0, None),
                    randomness="error")(params, buffers, masks, left, right, targets, self._aranges[size])

    def concatenate(self, datas):
        """The splits' training data concatenated once (what a round gathers from); returns
        each split's SplitData with its patches as views of the concatenated ones, which a
        caller keeps instead of its own (one copy of the patches in memory)."""
        self._set_data(_Concatenated(datas))
        return self._data.split_views(datas)

    def _data_for(self, datas):
        if len(datas) != self.num_splits:
            raise ValueError(f"expected {self.num_splits} datas")
        if self._data is None or not self._data.matches(datas):
            self._set_data(_Concatenated(datas))
        return self._data

    def _set_data(self, data):
        self._data = data
        if self._graphs is not None:
            self._graphs.reset()

    def _masks_of(self, size):
        if size not in self._masks:
            self._masks[size] = _Masks(self.calls, self.num_splits, size, self.device)
        return self._masks[size]

    def _program(self, size, idx, active, splits, traced=False):
        """One group's step (the device work, capturable): masks of the stepping splits,
        the gathered batches, the vmapped forward and gradients of every split, the
        optimizer step of the active ones, their losses added to the epoch's. Returns the
        (K, 3) losses (an inactive split's row is meaningless). `traced`: the forward and
        backward replay their aten ops traced once for this batch size (`_trace`)."""
        everyone = len(splits) == self.num_splits
        masks = self._masks_of(size).draw(self.generators, splits)
        left, right, targets = self._data.gather(idx)
        self.flat.refresh()
        saved = None if everyone else self._buffers.save()
        inputs = (self._leaves, [self.buffers[n] for n in self._buffer_names], masks, left, right,
                  *[targets[n] for n in sorted(targets)])
        run = self._traced.get(size) if traced else None
        if traced and run is None:
            run = self._trace(size, inputs)
        with torch.no_grad():  # (the traced ops must not be recorded for autograd)
            out, grads = (run or partial(self._forward_backward, size))(*inputs)
        self.flat.join(grads)
        self.optimizer.step(active, everyone)
        if saved is not None:
            self._buffers.restore(saved, active)
        self._sums.add_(out if everyone else torch.where(active.view(-1, 1), out, 0.0))
        return out

    def _forward_backward(self, size, leaves, buffers, masks, left, right, *targets):
        """The vmapped forward of every split and the gradients of its loss: the (K, 3)
        losses (detached) and a gradient per leaf (None where the loss does not reach)."""
        names = ("nss", "score", "views")[: len(targets)]
        with torch.enable_grad():
            out = self._vmapped(dict(zip(self.flat.names, leaves)), dict(zip(self._buffer_names, buffers)),
                                masks, left, right, dict(zip(names, targets)), size)
            # autograd.grad, not backward: a vmapped linear layer's weight gradient comes out
            # transposed, and AccumulateGrad would copy every one into the parameter's layout
            grads = torch.autograd.grad(out[:, 0].sum(), leaves, allow_unused=True)
        return out.detach(), grads

    def _trace(self, size, inputs):
        """`_forward_backward` at this batch size traced once into the aten ops it runs
        (torch.fx's make_fx, real tensors; on copies of the buffers, which it updates): a
        replay skips vmap's batching rules, autograd's bookkeeping and the composite ops'
        dispatch (fewer host operations, the same kernels on the same tensors). A trace
        that fails logs one line; the round then runs untraced."""
        leaves, buffers, *rest = inputs
        try:
            traced = make_fx(partial(self._forward_backward, size), tracing_mode="real")(
                leaves, [b.clone() for b in buffers], *rest)
        except Exception as err:  # torch.fx's errors have no common type
            traced = False
            self._log(f"fused splits: the round could not be traced ({type(err).__name__}: "
                      f"{' '.join(str(err).split())[:200]}); it runs untraced")
        self._traced[size] = traced
        return traced

    def run_round(self, groups):
        """One round (a list of groups, `plan_epoch`'s); returns its RoundLosses."""
        table, splits = None, []
        for group in groups:
            if self._graphs is not None and group.capturable:
                out = self._graphs.run(group)
            else:
                out = self._program(group.size, group.idx, group.active, group.splits, group.capturable)
            table = out if table is None else torch.where(group.active.view(-1, 1), out, table)
            splits += group.splits
        return RoundLosses(table, splits)

    def plan_epoch(self, datas, orders, batch_size):
        """An epoch's rounds (plan_rounds), each a list of groups whose index tables and active
        masks are on the device already: what `run_round` takes. orders[k]: split k's epoch
        order (siqa.training.step.epoch_order), indices into datas[k]."""
        data = self._data_for(datas)
        if len(orders) != self.num_splits:
            raise ValueError(f"expected {self.num_splits} orders")
        k_all, device = self.num_splits, self.device
        lengths = [len(o) for o in orders]
        orders = [o.to(device) for o in orders]
        plan = plan_rounds(lengths, batch_size)
        full = max(n // batch_size for n in lengths) if lengths else 0
        table = active = None
        if full:  # the full-size batches of every round: (rounds, K, batch)
            filler = data.fillers(batch_size)
            rows = []
            for k, order in enumerate(orders):
                count = lengths[k] // batch_size
                body = order[: count * batch_size].view(count, batch_size) + data.starts[k]
                rows.append(torch.cat([body, filler[k].expand(full - count, batch_size)]))
            table = torch.stack(rows, dim=1)
            active = torch.tensor([[lengths[k] // batch_size > t for k in range(k_all)] for t in range(full)],
                                  device=device)
        rounds = []
        for t, groups in enumerate(plan):
            built = []
            for size, splits in groups:
                if size == batch_size:
                    built.append(_Group(size, table[t], active[t], tuple(splits), capturable=True))
                    continue
                idx = data.fillers(size).clone()
                for k in splits:
                    idx[k] = orders[k][t * batch_size : t * batch_size + size] + data.starts[k]
                built.append(_Group(size, idx, self._active(splits), tuple(splits)))
            rounds.append(built)
        return rounds

    def _active(self, splits):
        mask = torch.zeros(self.num_splits, dtype=torch.bool)
        mask[list(splits)] = True
        return mask.to(self.device)

    def step_round(self, datas, batches):
        """One round: split k takes one step on the patches `batches[k]` (an index tensor on
        datas[k]'s device) of `datas[k]`, or none where batches[k] is None. Splits with
        batches of one size run as one vmapped group. Returns the RoundLosses ({k: (3,)})
        of the splits that stepped. (Builds its index tables now: `epoch` builds an epoch's
        before its first round.)"""
        if len(batches) != self.num_splits:
            raise ValueError(f"expected {self.num_splits} datas and batches")
        data = self._data_for(datas)
        groups = {}
        for k, idx in enumerate(batches):
            if idx is not None and len(idx) > 0:
                groups.setdefault(len(idx), []).append(k)
        built = []
        for size, splits in sorted(groups.items(), key=lambda item: -item[0]):
            idx = data.fillers(size).clone()
            for k in splits:
                idx[k] = batches[k].to(self.device) + data.starts[k]
            built.append(_Group(size, idx, self._active(splits), tuple(splits)))
        return self.run_round(built)

    def epoch(self, datas, orders, batch_size, progress=None):
        """One epoch as a generator that yields each round's losses (RoundLosses) and returns
        each split's mean (total, quality, nss) over its own steps, as a list of dicts (the
        values siqa.training.step.epoch_steps returns for that split). orders[k]: split k's
        epoch order (siqa.training.step.epoch_order)."""
        rounds = self.plan_epoch(datas, orders, batch_size)
        self._sums.zero_()
        counts = [0] * self.num_splits
        for groups in rounds:
            losses = self.run_round(groups)
            for group in groups:
                for k in group.splits:
                    counts[k] += 1
            if progress is not None:
                progress.update(sum(group.size * len(group.splits) for group in groups))
            yield losses
        steps = torch.tensor([max(c, 1) for c in counts], dtype=self._sums.dtype, device=self.device)
        values = (self._sums / steps.view(-1, 1)).tolist()
        return [{"total": v[0], "quality": v[1], "nss": v[2]} for v in values]

    # ------------------------------------------------------------------ per-split states

    def _new(self, key, k):
        """An empty tensor of split k's `key` in the layout its own network has it in."""
        like = (self.flat.masters if key in self.flat.masters else self.buffers)[key][k]
        return torch.empty_strided(like.shape, self._strides[key], dtype=like.dtype, device=like.device)

    def model_state(self, k):
        """Split k's model state_dict: the keys, shapes, dtypes and memory layouts of its own
        network's (copies)."""
        state = OrderedDict()
        for key in self._state_keys:
            source = self.flat.masters if key in self.flat.masters else self.buffers
            state[key] = self._new(key, k).copy_(source[key][k])
        if self._state_metadata is not None:
            state._metadata = copy.deepcopy(self._state_metadata)
        return state

    def optimizer_state(self, k):
        """Split k's optimizer state_dict, as torch.optim.SGD / Adam over its network's
        parameters (in model.parameters() order) writes it."""
        return self.optimizer.split_state(k, self._new, self.initial_lr)

    def rng_state(self, k):
        """Split k's RNG state as a sequential run's checkpoint holds it: {"torch": ...} for a
        CPU generator, {"cuda": ...} for a CUDA one (the integrator adds the other)."""
        g = self.generators[k]
        return {"torch" if g.device.type == "cpu" else "cuda": g.get_state()}

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
                    target = self.flat.masters[key] if key in self.flat.masters else self.buffers[key]
                    target[k].copy_(model[key])
        if optimizer is not None:
            def fail(message):
                raise UserError(f"fused training: {message}") from None

            self.optimizer.load_split_state(k, optimizer, self._new, fail)
        if rng is not None:
            key = "torch" if self.generators[k].device.type == "cpu" else "cuda"
            self.generators[k].set_state(rng[key].to("cpu", torch.uint8))

    def load_into(self, k, model):
        """Copy split k's weights and buffers into `model` (a network of the same build),
        e.g. to score it with siqa.scoring.predict_pairs."""
        model.load_state_dict(self.model_state(k))
        return model
