"""The one scoring path: patches -> batches -> the network -> the mean per pair.

Validation and test during training, evaluate.py, the cross-database matrix, predict.py and
siqa.load all score through `run_batches`:

    patch chunks (left, right)       one resident tensor of a whole split (training, evaluate.py)
      [a pair's patches, ...]        or the patches of each pair as they are cut (siqa.load)
        --cut into batches of batch_size exactly where one stacked tensor would be cut-->
    Scorer(left, right)              eager, compiled, or a captured CUDA graph (train.step)
        --> the outputs asked for, per chunk, in order
    pair_means(quality, pair_index)  float64 sums in patch order / patch counts

so a pair's score does not depend on how its patches reached the network: streaming pairs
one at a time gives the bits of the stacked tensor on one device. Batches: 128 patches on a
CPU, where small batches stay in cache (measured: 886 patch pairs/s at 128 vs 455 at 4096 on
the 2-core build machine), 4096 on a GPU.
"""
from dataclasses import replace

import numpy as np
import torch

from siqa.build import amp_dtype_of
from siqa.data.inputs import split_data
from siqa.device import cudnn_heuristics
from siqa.settings import Settings

CPU_BATCH, GPU_BATCH = 128, 4096


def batch_size_for(device) -> int:
    return CPU_BATCH if torch.device(device).type == "cpu" else GPU_BATCH


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


class Scorer:
    """The eval-mode forward of a network, run as `mode` (train.step): eager, compiled, or
    (graph, on CUDA) captured once per full batch size on static input buffers; a partial
    batch runs eagerly. Returns the network's outputs of index `outputs` (0: the quality,
    every network's first). Weights are read in place, so training between calls is seen."""

    def __init__(self, mode="eager", model=None, amp_dtype=None, concurrent=False, outputs=(0,)):
        self.mode, self.model, self.amp_dtype, self.outputs = mode, model, amp_dtype, tuple(outputs)
        self.forward = model
        if mode == "compile":  # scoring has no all-reduce: only concurrency rules the graphs out
            device = next(model.parameters()).device
            self.forward = torch.compile(model, dynamic=False,
                                         mode=compile_mode(device, concurrent=concurrent))
        self._graphs = {}  # batch size -> (graph, static left, static right, static outputs)

    def __call__(self, left, right, full=True):
        """The outputs of a batch (a tuple, owned by the caller: no later call overwrites
        them); `full`: a batch of the static size (graph mode captures it)."""
        if self.mode != "graph" or left.device.type != "cuda" or not full:
            outputs = self._eager(self.forward, left, right)
            if self.mode == "compile":  # "reduce-overhead": the compiler's CUDA graphs reuse
                return tuple(out.clone() for out in outputs)  # their outputs' memory next call
            return outputs
        n = left.shape[0]
        if n not in self._graphs:
            self._graphs[n] = self._capture(left, right)
        graph, static_left, static_right, static_outputs = self._graphs[n]
        static_left.copy_(left)
        static_right.copy_(right)
        graph.replay()
        return tuple(out.clone() for out in static_outputs)

    def _eager(self, forward, left, right, cache_enabled=True):
        with torch.autocast(left.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None,
                            cache_enabled=cache_enabled):
            outputs = forward(left, right)
        return tuple(outputs[i] for i in self.outputs)

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
            static_outputs = self._eager(self.model, static_left, static_right, cache_enabled=False)
        return graph, static_left, static_right, static_outputs


@torch.no_grad()
def run_batches(scorer, chunks, batch_size, device):
    """For each (left, right, tag) chunk of patches, in order, (the tuple of the scorer's
    outputs for its patches, tag). The network runs on batches of `batch_size` patches cut
    exactly where they would be cut if every chunk had been stacked into one tensor; a batch
    inside one chunk is a slice of it (no copy). Patches move to `device` and to float32 per
    batch."""
    pending = []  # [chunk number, left, right]: patches not yet through the network
    pieces = {}  # chunk number -> [list of output tuples, patches still missing, tag]
    done = 0

    def run(n, full):
        nonlocal pending
        taken, rest, left_n = [], [], n
        for number, a, b in pending:
            k = min(left_n, a.shape[0])
            if k:
                taken.append((number, a[:k], b[:k]))
            if k < a.shape[0]:
                rest.append([number, a[k:], b[k:]])
            left_n -= k
        pending = rest
        a = taken[0][1] if len(taken) == 1 else torch.cat([t[1] for t in taken])
        b = taken[0][2] if len(taken) == 1 else torch.cat([t[2] for t in taken])
        with cudnn_heuristics():
            outputs = scorer(a.to(device, non_blocking=True).float(),
                             b.to(device, non_blocking=True).float(), full=full)
        start = 0
        for number, a, _ in taken:
            k = a.shape[0]
            pieces[number][0].append(tuple(out[start : start + k] for out in outputs))
            pieces[number][1] -= k
            start += k

    def finished():
        nonlocal done
        while done in pieces and pieces[done][1] == 0:
            parts, _, tag = pieces.pop(done)
            yield tuple(torch.cat(outs) if len(outs) > 1 else outs[0] for outs in zip(*parts)), tag
            done += 1

    for number, (left, right, tag) in enumerate(chunks):
        pieces[number] = [[], left.shape[0], tag]
        pending.append([number, left, right])
        while sum(item[1].shape[0] for item in pending) >= batch_size:
            run(batch_size, full=True)
        yield from finished()
    if pending:
        run(sum(item[1].shape[0] for item in pending), full=False)
    yield from finished()


def pair_means(values, pair_index, num_pairs):
    """The mean of `values` (one per patch) over each pair's patches: float64 sums in patch
    order (index_add_), divided by the patch counts; a float64 numpy array."""
    sums = torch.zeros(num_pairs, dtype=torch.float64, device=values.device)
    sums.index_add_(0, pair_index, values.double())
    # patches per pair by index_add_ rather than bincount: the same integers, and an output
    # whose shape does not depend on the data, so the scoring path also runs on fake CUDA
    # tensors (tests/test_cuda_host.py)
    counts = torch.zeros_like(sums).index_add_(0, pair_index, torch.ones_like(pair_index, dtype=sums.dtype))
    return (sums / counts).cpu().numpy()


def patch_mean(values) -> float:
    """The mean of one pair's patch values, as `pair_means` computes it."""
    return float(pair_means(values, torch.zeros(len(values), dtype=torch.int64, device=values.device), 1)[0])


def predict_pairs(model, data, batch_size=None, amp_dtype=None, scorer=None) -> np.ndarray:
    """Image-level scores of the pairs of `data` (siqa.data.inputs.SplitData, resident on a
    device): the mean of each pair's patch predictions (docs/method.md#patches).
    `scorer`: a Scorer of this model (a training step's); None = eager."""
    device = data.left.device
    if batch_size is None:
        batch_size = batch_size_for(device)
    if scorer is None:
        scorer = Scorer("eager", model, amp_dtype)
    model.eval()
    [((quality,), _)] = list(run_batches(scorer, [(data.left, data.right, None)], batch_size, device))
    return pair_means(quality, data.pair_index, data.num_pairs)


def predict_database(model, pairs, cfg, device, progress=True) -> np.ndarray:
    """Image-level predictions of `model` for `pairs`, with the patches its spec asks for and
    its run's settings (`cfg`: patches.normalisation, train.patch_dtype, train.amp)."""
    spec = model.spec
    if spec.needs_view_scores:  # the per-view targets are not used to score
        pairs = [p if p.view_scores else replace(p, view_scores=(0.0, 0.0)) for p in pairs]
    settings = Settings(cfg)
    data = split_data(pairs, np.zeros((len(pairs), getattr(model, "nss_dim", 0))),
                      getattr(torch, settings.train.patch_dtype), settings.patches.normalisation,
                      spec, progress=progress).to(device)
    return predict_pairs(model, data, amp_dtype=amp_dtype_of(cfg, device))
