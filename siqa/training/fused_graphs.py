"""The fused rounds' CUDA graphs (siqa.training.fused.FusedSplits, step="graph"; train.step=auto
on CUDA): a replay launches the round's kernels without the host issuing its aten ops again.

The full-size group of a round is captured once per set of stepping splits (the full round,
and each partial one: the set shrinks as splits finish their epochs), because a capture
keeps its group's splits and (K,) active mask as they were; only the (K, b) indices are
refreshed, copied into the graph's buffer before each replay. Before the first capture,
WARMUP_ROUNDS rounds run eagerly on a side stream (PyTorch's CUDA-graph recipe). The split
generators are registered with each graph, so a replay advances each split's dropout stream
as an eager round does; the graphs share one memory pool. Groups of a tail size run eagerly.
A capture that fails restores the generators, logs one line, and the run goes on eagerly.

FusedSplits is handed what captures and replays (CudaGraphs on CUDA), so tests put a CPU
stand-in with the same methods in its place (tests/test_fused.py).
"""
import torch

WARMUP_ROUNDS = 3  # eager rounds on a side stream before the first capture (PyTorch's recipe)


class CudaGraphs:
    """How FusedSplits captures and replays a round on CUDA (tests put a CPU stand-in with
    the same three methods in its place)."""

    def __init__(self, device):
        self.device, self.pool, self.stream = device, None, None

    def side_stream(self):
        """A context in which the warm-up rounds run on a side stream."""
        if self.stream is None:
            self.stream = torch.cuda.Stream(self.device)
        return _OnStream(self.stream, self.device)

    def capture(self, program, generators):
        """Capture `program()` (its split generators registered with the graph) into the
        shared memory pool; returns replay() -> the program's output tensor, refreshed."""
        graph = torch.cuda.CUDAGraph()
        for g in generators:
            graph.register_generator_state(g)
        with torch.cuda.graph(graph, pool=self.pool):
            out = program()
        if self.pool is None:
            self.pool = graph.pool()

        def replay():
            graph.replay()
            return out

        return replay


class _OnStream:
    def __init__(self, stream, device):
        self.stream, self.device = stream, device

    def __enter__(self):
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        self.context = torch.cuda.stream(self.stream)
        self.context.__enter__()

    def __exit__(self, *exc):
        self.context.__exit__(*exc)
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        return False


class RoundGraphs:
    """The capturable groups (the full-size group of a round) of a FusedSplits with
    step="graph": WARMUP_ROUNDS eager rounds on a side stream, then one graph per set of
    stepping splits, captured when first met and replayed after; a failed capture logs one
    line and every later round runs eagerly."""

    def __init__(self, fused, backend, log):
        self.fused, self.backend, self.log = fused, backend, log
        self.warmup, self.graphs, self.failed = WARMUP_ROUNDS, {}, False

    def reset(self):
        """Forget the graphs (they read the tensors they were captured with)."""
        self.graphs = {}

    def run(self, group):
        f = self.fused
        if self.failed:
            return f._program(group.size, group.idx, group.active, group.splits, traced=True)
        if self.warmup > 0:
            self.warmup -= 1
            with self.backend.side_stream():
                return f._program(group.size, group.idx, group.active, group.splits, traced=True)
        key = (group.size, group.splits)
        if key not in self.graphs and not self._capture(group, key):
            return f._program(group.size, group.idx, group.active, group.splits, traced=True)
        static_idx, replay = self.graphs[key]
        static_idx.copy_(group.idx)
        return replay().clone()  # the graph's output is overwritten by the next replay

    def _capture(self, group, key):
        f = self.fused
        static_idx, active = group.idx.clone(), group.active.clone()
        states = [g.get_state() for g in f.generators]
        try:
            replay = self.backend.capture(
                lambda: f._program(group.size, static_idx, active, group.splits, traced=True), f.generators)
        except RuntimeError as err:
            for g, state in zip(f.generators, states):
                g.set_state(state)
            self.failed = True
            self.log(f"fused splits: the round could not be captured as a CUDA graph "
                     f"({' '.join(str(err).split())[:200]}); the run goes on eagerly")
            return False
        self.graphs[key] = (static_idx, replay)
        return True
