"""A one-GPU machine for the CUDA host code, on a machine without a GPU.

The functions of `torch.cuda` are Python over a handful of driver bindings in `torch._C`.
The harness replaces only those bindings, so every `torch.cuda` function the project calls
(is_available, device_count, current_device, set_device, get_rng_state, set_rng_state,
manual_seed, init) runs its own Python code, argument checks included, exactly as on a GPU:

    replaced                         on this machine it
    torch._C._cuda_getDeviceCount    reports 1 GPU
    torch._C._cuda_getDevice         reports the current index (0 until set)
    torch._C._cuda_setDevice         takes an index, refusing what the driver refuses
                                     (not an int, or not 0 <= index < 1)
    torch._C._cuda_init              does nothing (the driver would start here)
    torch.cuda.default_generators    holds one `Generator` standing for cuda:0's Philox
                                     generator, with the state checks of PyTorch's own
                                     (CUDAGeneratorImpl: a CPU ByteTensor of 16 or 8 bytes,
                                     offset a multiple of 4) and its shared graph-safe states

Nothing else is replaced. The first real CUDA work (a tensor allocated on the GPU, a stream
created, a storage moved there) raises PyTorch's own RuntimeError about the missing driver:
`FIRST_KERNEL` matches it, and a test asserts that a path ends there and not earlier.

The module-level state torch.cuda keeps (`_initialized`, the queued lazy calls, the cached
device count) is put back by `install`'s monkeypatch when the test ends.
"""
import struct

import torch

# PyTorch's own words when the first real CUDA work finds no driver or no device
FIRST_KERNEL = r"NVIDIA driver|CUDA driver|no CUDA-capable device|Torch not compiled with CUDA"


class Generator:
    """cuda:0's default generator as the host code sees it: a Philox seed and offset, with
    the checks CUDAGeneratorImpl makes on what it is given.

    As in PyTorch, the seed and offset live in a state object that `graphsafe_get_state`
    hands out and `graphsafe_set_state` installs by reference (the generator then draws from
    that very object, which is how a captured graph stays bound to it); `clone_state` copies
    it."""

    device = torch.device("cuda", 0)

    def __init__(self, seed=67280421310721, offset=0, state=None):
        self._state = state if state is not None else [seed, offset]

    def manual_seed(self, seed):
        self._state[:] = [int(seed) & 0xFFFF_FFFF_FFFF_FFFF, 0]
        return self

    def seed(self):
        import random

        return self.manual_seed(random.getrandbits(63)).initial_seed()

    def initial_seed(self):
        return self._state[0]

    def get_state(self):
        return torch.tensor(list(struct.pack("<Qq", *self._state)), dtype=torch.uint8)

    def set_state(self, state):
        if not (isinstance(state, torch.Tensor) and state.layout == torch.strided
                and state.device.type == "cpu" and state.dtype == torch.uint8):
            raise TypeError("RNG state must be a torch.ByteTensor")
        if state.numel() not in (16, 8):
            raise RuntimeError("RNG state is wrong size")
        raw = bytes(state.tolist())
        offset = struct.unpack("<q", raw[8:])[0] if len(raw) == 16 else 0
        if offset % 4:
            raise RuntimeError("offset must be a multiple of 4")
        self._state[:] = [struct.unpack("<Q", raw[:8])[0], offset]
        return self

    def clone_state(self):
        return Generator(*self._state)

    def graphsafe_get_state(self):
        return Generator(state=self._state)

    def graphsafe_set_state(self, other):
        if not isinstance(other, Generator):
            raise RuntimeError(f"expected a CUDA generator state, got {type(other).__name__}")
        self._state = other._state


def install(monkeypatch):
    """Present one GPU for the rest of the test (see the module docstring)."""
    import torch.cuda as cuda

    current = [0]

    def set_device(index):
        if not isinstance(index, int):
            raise TypeError(f"_cuda_setDevice expects an int, got {type(index).__name__}")
        if not 0 <= index < 1:
            raise RuntimeError("CUDA error: invalid device ordinal")
        current[0] = index

    for name, fn in (("_cuda_getDeviceCount", lambda: 1), ("_cuda_getDevice", lambda: current[0]),
                     ("_cuda_setDevice", set_device), ("_cuda_init", lambda: None)):
        monkeypatch.setattr(torch._C, name, fn, raising=False)
    monkeypatch.setattr(cuda, "default_generators", (Generator(),))
    # torch.cuda's own state, changed by _lazy_init and device_count, is restored afterwards
    monkeypatch.setattr(cuda, "_initialized", False)
    monkeypatch.setattr(cuda, "_queued_calls", [])
    monkeypatch.setattr(cuda, "_cached_device_count", None)
    if getattr(cuda, "_cudart", None) is None:  # a CPU-only build of PyTorch
        monkeypatch.setattr(cuda, "_cudart", object())
    return current
