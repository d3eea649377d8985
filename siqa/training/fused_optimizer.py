r"""The parameters and the optimizer of fused splits (siqa.training.fused), and the optimizer
state of one split in torch.optim's formats.

K splits' parameters live in one (K, N) tensor, a row a split; each network tensor is a
dense block of every row, stored in the memory order of its gradient (a vmapped linear
layer's weight gradient comes out transposed), so that a round's gradients join the flat
gradient in one `cat` and every optimizer pass is one elementwise op over (K, N):

    flat    (K, N)  row k: split k's  [ conv1.weight | conv1.bias | ... | quality_fc2.bias ]
                                        \__ cast under bf16 (conv, linear) __/ \__ kept __/
    low     (K, Nc) the first Nc columns in bfloat16, refreshed once a round (train.amp): the
                    forward's weights; the optimizer reads and writes `flat` (float32 masters)
    leaves  {name: (K, *shape)}  views of `low` or `flat` that the round differentiates
    grad    (K, N)  the round's gradients, joined

The optimizer is torch.optim's single-tensor SGD (momentum buffer = the first gradient,
dampening 0, no Nesterov) or Adam (amsgrad off), weight decay added to the gradient,
written as a few (K, N) ops whatever the number of tensors and splits, with

    active  (K, 1) bool on the device: the splits that take this step; every other row of
            the parameters, momentum buffer and Adam moments is written back unchanged
            (torch.where: bit for bit), and its step count does not move
    steps   (K,) float64 on the device: each split's step count (Adam's bias corrections;
            SGD: > 0 = the momentum buffer is set)
    lr      a float64 scalar tensor on the device, filled in place (a captured round reads it)

so a round reads nothing back to the host, and the same ops serve a full round and a
partial one. The arithmetic is torch.optim's; the per-split scalars (Adam's bias
corrections, SGD's first-step factor) enter as (K, 1) tensors, so a multiply-add may round
at other positions than torch.optim's host scalars (float64: 1e-16 relative).
"""
import math

import torch
from torch import nn

from siqa.settings import setting_choices

OPTIMIZERS = setting_choices("train.optimizer")


def dense_strides(t, skip=0):
    """t's strides over its dimensions from `skip` on, if those form a dense (gap-free)
    permutation of themselves, else None."""
    dims = range(skip, t.dim())
    order = sorted(dims, key=lambda d: (t.stride(d), t.shape[d]))
    expected, size = {}, 1
    for d in order:
        expected[d] = size
        size *= t.shape[d]
    strides = tuple(expected[d] for d in dims)
    if all(t.stride(d) == expected[d] for d in dims if t.shape[d] > 1):
        return strides
    return None


def _contiguous_strides(shape):
    strides, size = [], 1
    for n in reversed(shape):
        strides.append(size)
        size *= n
    return tuple(reversed(strides))


class FlatParameters:
    """The stacked parameters as one (K, N) tensor (see the module docstring).

    stacked  {name: (K, *shape)} (torch.func.stack_module_state's); copied in
    strides  {name: per-split strides, a dense permutation}: each tensor's memory order
    cast     names of the tensors the forward reads in `low_dtype` (None: no cast)
    """

    def __init__(self, stacked, strides, cast=(), low_dtype=None):
        first = next(iter(stacked.values()))
        self.num_splits, self.device, self.dtype = first.shape[0], first.device, first.dtype
        if any(p.dtype != self.dtype for p in stacked.values()):
            raise ValueError("fused training: the network's parameters differ in dtype")
        self.low_dtype = low_dtype if cast else None
        cast = set(cast) if self.low_dtype is not None else set()
        self.names = list(stacked)
        ordered = [n for n in self.names if n in cast] + [n for n in self.names if n not in cast]
        self.shapes = {n: tuple(stacked[n].shape[1:]) for n in self.names}
        self.strides = {n: tuple(strides.get(n) or _contiguous_strides(self.shapes[n])) for n in self.names}
        self.offsets, offset = {}, 0
        for n in ordered:
            self.offsets[n] = offset
            offset += math.prod(self.shapes[n])
        self.cast_columns = sum(math.prod(self.shapes[n]) for n in cast)
        self.width = offset
        k = self.num_splits
        self.flat = torch.empty(k, self.width, dtype=self.dtype, device=self.device)
        self.grad = torch.empty_like(self.flat)
        self.masters = {n: self.view(self.flat, n) for n in self.names}
        with torch.no_grad():
            for n in self.names:
                self.masters[n].copy_(stacked[n])
        self.low = self.flat_low = None
        if self.cast_columns:
            self.low = torch.empty(k, self.cast_columns, dtype=self.low_dtype, device=self.device)
            self.flat_low = self.flat[:, : self.cast_columns]  # the masters of `low`
        self.leaves = {}
        for n in self.names:
            source = self.low if n in cast else self.flat
            self.leaves[n] = self.view(source, n).requires_grad_()
        self.refresh()
        # gradients in the leaves' layout join `grad` as memory-order (K, n) views
        self.grad_strides = {n: (math.prod(self.shapes[n]),) + self.strides[n] for n in self.names}
        self._order = {n: sorted(range(len(self.shapes[n])), key=lambda d: -self.strides[n][d])
                       for n in self.names}

    def view(self, flat, name):
        """`name`'s (K, *shape) view of a (K, N) (or (K, Nc)) tensor laid out as `flat`."""
        shape, strides = self.shapes[name], self.strides[name]
        return flat.as_strided((self.num_splits,) + shape, (flat.stride(0),) + strides,
                               flat.storage_offset() + self.offsets[name])

    def split_view(self, flat, name, k):
        """Split k's view of `name` in a (K, N) tensor laid out as `flat`."""
        return flat.as_strided(self.shapes[name], self.strides[name],
                               flat.storage_offset() + k * flat.stride(0) + self.offsets[name])

    @torch.no_grad()
    def refresh(self):
        """The forward's low-precision weights from the masters (one cast a round)."""
        if self.low is not None:
            self.low.copy_(self.flat_low)

    def join(self, grads):
        """The round's gradients ({name: (K, *shape)} in `names` order, None for a tensor
        the loss does not reach) into `grad`, in one cat."""
        pieces = []
        k = self.num_splits
        for n, g in zip(self.names, grads):
            numel = math.prod(self.shapes[n])
            if g is None:  # the caller masks what these columns do (see FlatOptimizer.unused)
                pieces.append(torch.zeros((), dtype=self.dtype, device=self.device).expand(k, numel))
            elif g.stride() == self.grad_strides[n]:  # the layout the probe found: a view
                pieces.append(g.as_strided((k, numel), (numel, 1), g.storage_offset()))
            else:  # another layout: one copy into memory order
                pieces.append(g.permute(0, *[1 + d for d in self._order[n]]).reshape(k, numel))
        torch.cat(pieces, dim=1, out=self.grad)
        return self.grad


class FlatOptimizer:
    """torch.optim's SGD or Adam over FlatParameters, per split (see the module docstring)."""

    def __init__(self, params: FlatParameters, optimizer="sgd", *, lr, momentum=0.0, weight_decay=0.0,
                 betas=(0.9, 0.999), eps=1e-8, unused=()):
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer {optimizer!r}")
        self.params, self.kind = params, optimizer
        self.momentum, self.weight_decay = float(momentum), float(weight_decay)
        self.betas, self.eps = tuple(map(float, betas)), float(eps)
        device, k = params.device, params.num_splits
        self.lr = torch.tensor(float(lr), dtype=torch.float64, device=device)
        self.steps = torch.zeros(k, dtype=torch.float64, device=device)
        flat = params.flat
        self.state = {}
        if optimizer == "sgd" and self.momentum != 0:
            self.state["momentum_buffer"] = torch.zeros_like(flat)
        elif optimizer == "adam":
            self.state["exp_avg"] = torch.zeros_like(flat)
            self.state["exp_avg_sq"] = torch.zeros_like(flat)
        # columns of tensors without a gradient: torch.optim does not step them at all
        self.keep = None
        if unused:
            keep = torch.zeros(1, params.width, dtype=torch.bool, device=device)
            for n in unused:
                keep[:, params.offsets[n] : params.offsets[n] + math.prod(params.shapes[n])] = True
            self.keep = keep
        self.unused = tuple(unused)

    def set_lr(self, lr):
        self.lr.fill_(float(lr))

    @torch.no_grad()
    def step(self, active, everyone=False):
        """One step of the splits whose entry of `active` ((K,) bool on the device) is set,
        from params.grad; nothing is read back to the host. `everyone`: every entry is set
        (the caller knows it): the passes then write in place, with no `where`."""
        p, g = self.params.flat, self.params.grad
        if self.keep is not None:  # tensors without a gradient: never written
            everyone = False
        write = active.view(-1, 1) if self.keep is None else active.view(-1, 1) & ~self.keep
        if self.weight_decay != 0:
            g.add_(p, alpha=self.weight_decay)
        fresh = self.steps == 0
        self.steps.add_(active.to(self.steps.dtype))
        neg_lr = (-self.lr).to(p.dtype)
        if self.kind == "sgd":
            update = g
            if self.momentum != 0:
                buf = self.state["momentum_buffer"]
                # torch.optim: buf = grad at a split's first step, else buf * momentum + grad
                factor = (~fresh).to(p.dtype).mul_(self.momentum).view(-1, 1)
                if everyone:
                    torch.addcmul(g, buf, factor, out=buf)
                else:
                    torch.where(write, torch.addcmul(g, buf, factor), buf, out=buf)
                update = buf
            if everyone:
                p.addcmul_(update, neg_lr)
            else:
                torch.where(write, torch.addcmul(p, update, neg_lr), p, out=p)
            return
        beta1, beta2 = self.betas
        exp_avg, exp_avg_sq = self.state["exp_avg"], self.state["exp_avg_sq"]
        if everyone:
            exp_avg.lerp_(g, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        else:
            torch.where(write, torch.lerp(exp_avg, g, 1 - beta1), exp_avg, out=exp_avg)
            torch.where(write, (exp_avg_sq * beta2).addcmul_(g, g, value=1 - beta2), exp_avg_sq,
                        out=exp_avg_sq)
        # torch.optim.Adam: step size lr / (1 - beta1^step), denominator
        # sqrt(v) / sqrt(1 - beta2^step) + eps, in float64 as its host scalars are
        neg_step_size = (-self.lr / (1 - torch.pow(beta1, self.steps))).to(p.dtype).view(-1, 1)
        correction2 = (1 - torch.pow(beta2, self.steps)).sqrt_().to(p.dtype).view(-1, 1)
        denom = (exp_avg_sq.sqrt() / correction2).add_(self.eps)
        if everyone:
            p.addcdiv_(exp_avg * neg_step_size, denom)
        else:
            torch.where(write, torch.addcdiv(p, exp_avg * neg_step_size, denom), p, out=p)

    # ------------------------------------------------------------------- torch.optim formats

    def new_torch_optimizer(self, params, initial_lr=None):
        """The torch.optim optimizer a split trained alone has over `params`."""
        lr = float(self.lr)
        if self.kind == "adam":
            opt = torch.optim.Adam(params, lr=lr, betas=self.betas, eps=self.eps,
                                   weight_decay=self.weight_decay)
        else:
            opt = torch.optim.SGD(params, lr=lr, momentum=self.momentum, weight_decay=self.weight_decay)
        if initial_lr is not None:
            for group in opt.param_groups:
                group["initial_lr"] = initial_lr
        return opt

    def _stand_ins(self, k, new):
        return [nn.Parameter(new(n, k).zero_()) for n in self.params.names]

    def split_state(self, k, new, initial_lr=None):
        """Split k's optimizer state_dict, as torch.optim.SGD / Adam over its network's
        parameters (in model.parameters() order) writes it: the torch.optim optimizer of a
        stand-in parameter list takes one zero-gradient step to create its own state in its
        own format, whose values are then replaced by split k's. `new(name, k)`: an empty
        tensor in the network's layout. Reads the step count back (outside a round)."""
        stand_in = self._stand_ins(k, new)
        opt = self.new_torch_optimizer(stand_in, initial_lr)
        steps = int(self.steps[k])
        if steps > 0:
            for n, p in zip(self.params.names, stand_in):  # torch.optim skips a tensor without one
                p.grad = None if n in self.unused else torch.zeros_like(p)
            opt.step()
            with torch.no_grad():
                for n, p in zip(self.params.names, stand_in):
                    if p not in opt.state:  # (SGD without momentum keeps no state)
                        continue
                    state = opt.state[p]
                    if "step" in state:
                        state["step"].fill_(steps)
                    for key, value in self.state.items():
                        state[key].copy_(self.params.split_view(value, n, k))
        return opt.state_dict()

    def load_split_state(self, k, saved, new, fail):
        """Put back split k's optimizer state_dict (torch.optim.SGD / Adam over its network;
        the hyper-parameters must be this optimizer's, the learning rate stays this one's).
        `fail(message)`: raises the caller's error."""
        stand_in = self._stand_ins(k, new)
        opt = self.new_torch_optimizer(stand_in)
        try:
            opt.load_state_dict(saved)
        except (ValueError, KeyError) as err:
            fail(f"split {k}'s optimizer state does not fit ({' '.join(str(err).split())[:200]})")
        group = opt.param_groups[0]
        wanted = {"weight_decay": self.weight_decay}
        if self.kind == "sgd":
            wanted.update(momentum=self.momentum, dampening=0, nesterov=False)
        else:
            wanted.update(betas=self.betas, eps=self.eps, amsgrad=False)
        for key, value in wanted.items():
            have = tuple(group[key]) if key == "betas" else group[key]
            if have != value:
                fail(f"split {k}'s optimizer state has {key}={have}, this run {value}")
        states = [opt.state.get(p, {}) for p in stand_in]
        if not any(states):
            steps = 0
        else:
            if not all(states) and not self.unused:
                fail(f"split {k}'s optimizer state covers only some parameters")
            if self.kind == "adam":
                counts = {float(s["step"]) for s in states if s}
                if len(counts) != 1:
                    fail(f"split {k}'s Adam step counts differ between parameters ({sorted(counts)[:3]})")
                steps = int(counts.pop())
            else:  # SGD keeps no count: any value > 0 means "has a buffer"
                steps = max(int(self.steps[k]), 1)
        with torch.no_grad():
            for n, s in zip(self.params.names, states):
                for key, value in self.state.items():
                    target = self.params.split_view(value, n, k)
                    target.copy_(s[key] if s else torch.zeros_like(target))
            self.steps[k] = steps
