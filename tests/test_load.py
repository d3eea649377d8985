"""Load: siqa.load(...).score from several threads equals serial calls; predict.py
--manifest streams its rows (memory flat in their number) and writes its CSV atomically."""
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest


def test_score_from_several_threads_equals_serial(model, tiny_manifest):
    import torch

    folder = tiny_manifest.parent
    pairs = [(folder / f"s{s}_{k}_l.png", folder / f"s{s}_{k}_r.png") for s in range(8) for k in range(3)]
    assert torch.get_num_threads() > 1 or pytest.skip("one torch thread: nothing to race")
    threads = torch.get_num_threads()
    serial = [model.score(left, right) for left, right in pairs]
    batches = model.score([p[0] for p in pairs], [p[1] for p in pairs])
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            threaded = list(pool.map(lambda p: model.score(*p), pairs))
            assert threaded == serial
            lists = list(pool.map(lambda _: model.score([p[0] for p in pairs], [p[1] for p in pairs]), range(4)))
            assert all(np.array_equal(got, batches) for got in lists)
            assert torch.get_num_threads() == threads  # the caller's setting survives
