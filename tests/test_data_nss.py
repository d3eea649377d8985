"""The NSS wrapper hands every pair's files to the cache, in order."""
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from siqa.data.nss import nss_for_pairs
from siqa.data.records import StereoPair
from siqa.errors import UserError

PAIRS = [
    StereoPair("a", Path("a_l.bmp"), Path("a_r.bmp"), 1.0, False, "s", "wn", True),
    StereoPair("b", Path("b.png"), None, 2.0, False, "s", "wn", None),
]


def fake_cache(monkeypatch, rows=None):
    calls = {}

    def nss_targets(pairs, marginal="mle0", preprocess="reference", cache_dir="data/cache", workers=None,
                    device="cpu", progress=True):
        calls.update(pairs=list(pairs), marginal=marginal, preprocess=preprocess, cache_dir=cache_dir,
                     workers=workers, device=device, progress=progress)
        n = len(calls["pairs"]) if rows is None else rows
        return np.arange(n * 108, dtype=np.float64).reshape(n, 108)

    module = types.ModuleType("siqa.nss.cache")
    module.nss_targets = nss_targets
    monkeypatch.setitem(sys.modules, "siqa.nss.cache", module)
    return calls


def test_wrapper_passes_files_and_options(monkeypatch):
    calls = fake_cache(monkeypatch)
    out = nss_for_pairs(PAIRS, marginal="scipy_free_loc", preprocess="global", cache_dir="c", workers=2,
                        progress=False)
    assert calls["pairs"] == [(Path("a_l.bmp"), Path("a_r.bmp")), (Path("b.png"), None)]
    assert (calls["marginal"], calls["preprocess"], calls["cache_dir"], calls["workers"]) == (
        "scipy_free_loc", "global", "c", 2)
    assert out.shape == (2, 108) and out.dtype == np.float64 and out[1, 0] == 108


def test_wrong_shape_is_an_error(monkeypatch):
    fake_cache(monkeypatch, rows=1)
    with pytest.raises(UserError, match=r"\(1, 108\).*\(2, 108\)"):
        nss_for_pairs(PAIRS, progress=False)


def test_real_cache_if_present(tmp_path):
    pytest.importorskip("siqa.nss.cache", reason="the NSS cache is being written in parallel")
    from PIL import Image

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(70, 90)).astype(np.uint8)
    Image.fromarray(base).save(tmp_path / "l.png")
    Image.fromarray(np.roll(base, 2, axis=1)).save(tmp_path / "r.png")
    pair = StereoPair("x", tmp_path / "l.png", tmp_path / "r.png", 1.0, False, "s", "wn", True)
    out = nss_for_pairs([pair], cache_dir=tmp_path / "cache", progress=False)
    assert out.shape == (1, 108) and np.isfinite(out).all()
    np.testing.assert_array_equal(out[:, 54:72], out[:, 72:90])  # Sigma_RL == Sigma_LR
