"""The project's DT-CWT equals the dtcwt 0.14.0 package (near_sym_b + qshift_b)."""
import nss_reference as ref
import numpy as np
import pytest
import torch

from conftest import needs_cuda
from siqa.nss import dtcwt_forward, dtcwt_forward_torch
from siqa.nss.transform import dtcwt_magnitudes_torch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


SIZES = [(360, 640), (359, 641), (33, 47), (47, 33), (360, 641), (359, 640)]  # H x W


def _random(shape, seed=0):
    return np.random.default_rng(seed).random(shape)


def _natural(shape):
    left, _ = ref.natural_pair("stairs", 640, 360)
    return left[: shape[0], : shape[1]].astype(np.float64) / 255.0


def _compare(image, levels=3):
    exp_low, exp_high = ref.dtcwt_reference(image, levels)
    low, high = dtcwt_forward(image, levels)
    assert low.shape == exp_low.shape
    assert [h.shape for h in high] == [h.shape for h in exp_high]
    assert all(h.dtype == e.dtype for h, e in zip(high, exp_high))
    scale = max(np.abs(e).max() for e in exp_high + [exp_low])
    err = max(np.abs(h - e).max() for h, e in zip(high + [low], exp_high + [exp_low]))
    return err, scale


@pytest.mark.parametrize("shape", SIZES)
@pytest.mark.parametrize("source", ["random", "natural"])
def test_float64_equals_dtcwt(shape, source):
    image = _random(shape) if source == "random" else _natural(shape)
    err, _ = _compare(image)
    assert err <= 1e-10


@pytest.mark.parametrize("shape", [(360, 640), (359, 641), (33, 47)])
def test_float32_equals_dtcwt(shape):
    image = _natural(shape).astype(np.float32)
    err, scale = _compare(image)
    assert err <= 1e-4 * scale


@pytest.mark.parametrize("levels", [1, 2, 4, 5])
def test_other_level_counts(levels):
    err, _ = _compare(_random((100, 84), seed=levels), levels)
    assert err <= 1e-10


def test_subband_sizes():
    _, high = dtcwt_forward(_random((359, 641)), 3)
    assert [h.shape for h in high] == [(180, 321, 6), (90, 161, 6), (45, 81, 6)]


def test_batch_equals_single_and_magnitudes():
    images = np.stack([_random((47, 33), seed=s) for s in range(3)])
    low, high = dtcwt_forward_torch(torch.from_numpy(images), 3)
    mags = dtcwt_magnitudes_torch(torch.from_numpy(images), 3)
    for i in range(3):
        one_low, one_high = dtcwt_forward(images[i], 3)
        assert np.array_equal(low[i].numpy(), one_low)
        for lev in range(3):
            assert np.array_equal(high[lev][i].numpy(), one_high[lev])
            np.testing.assert_allclose(mags[lev][i].numpy(), np.abs(one_high[lev]).transpose(2, 0, 1),
                                       rtol=1e-13, atol=1e-15)


def test_orientations_respond_to_their_direction():
    """A horizontal grating excites the near-horizontal-edge subbands (k = 0, 5) most."""
    y = np.arange(64)[:, None] * np.ones((1, 64))
    image = np.cos(2 * np.pi * y / 6.0)
    _, high = dtcwt_forward(image, 1)
    energy = (np.abs(high[0]) ** 2).sum(axis=(0, 1))
    assert set(np.argsort(energy)[-2:]) == {0, 5}


@needs_cuda
def test_cuda_equals_cpu():
    images = torch.from_numpy(np.stack([_random((359, 641), seed=s) for s in range(2)]))
    low, high = dtcwt_forward_torch(images, 3)
    low_c, high_c = dtcwt_forward_torch(images.cuda(), 3)
    assert torch.allclose(low_c.cpu(), low, atol=1e-12)
    for h, hc in zip(high, high_c):
        assert torch.allclose(hc.cpu(), h, atol=1e-12)
