"""The resident-tensor training path computes what a plain DataLoader loop computes."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from conftest import synthetic_split, train_epoch
from siqa.device import select_device
from siqa.errors import UserError
from siqa.models.bourbia2021 import MultiTaskSIQA
from siqa.scoring import predict_pairs
from siqa.training.step import epoch_order

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # 2 shared cores: no OpenMP contention


def reference_losses(model, optimizer, data, order, batch_size, nss_weight, dropout_seed):
    """The plain path: a Dataset of per-patch rows, a DataLoader in the given order,
    default collation, per-batch L1 losses; one forward per step."""
    rows = TensorDataset(data.left, data.right, data.score[data.pair_index], data.nss[data.pair_index])
    batches = iter(DataLoader(rows, batch_size=batch_size, sampler=order.tolist()))
    torch.manual_seed(dropout_seed)  # after the iterator, which draws from the global RNG
    losses = []
    model.train()
    for left, right, score, nss in batches:
        quality, features = model(left, right)
        loss = F.l1_loss(quality, score) + nss_weight * F.l1_loss(features, nss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def project_losses(model, optimizer, data, order, batch_size, nss_weight):
    losses = []
    for start in range(0, len(order), batch_size):
        step = train_epoch(model, optimizer, data, order[start:start + batch_size], batch_size, nss_weight)
        losses.append(step["total"])
    return losses


def fresh(seed=3):
    torch.manual_seed(seed)
    model = MultiTaskSIQA()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    return model, opt


@pytest.mark.parametrize("channels_last", [False, True])
def test_same_loss_trajectory_as_plain_dataloader_loop(channels_last):
    data = synthetic_split()
    order = epoch_order(data.num_patches, seed=0, epoch=0)
    model_a, opt_a = fresh()
    if channels_last:  # the speed option of train.channels_last
        model_a = model_a.to(memory_format=torch.channels_last)
    model_b, opt_b = fresh()
    torch.manual_seed(11)  # the dropout stream
    a = project_losses(model_a, opt_a, data, order, 64, 25.0)
    b = reference_losses(model_b, opt_b, data, order, 64, 25.0, dropout_seed=11)
    assert len(a) == len(b) == 5
    np.testing.assert_allclose(a, b, rtol=1e-5)
    assert a[-1] != a[0]  # the steps did change the model
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


def test_epoch_means_match_per_step_losses():
    data = synthetic_split()
    order = epoch_order(data.num_patches, 0, 0)
    model_a, opt_a = fresh()
    model_b, opt_b = fresh()
    torch.manual_seed(5)
    whole = train_epoch(model_a, opt_a, data, order, 64, 25.0)
    torch.manual_seed(5)
    steps = project_losses(model_b, opt_b, data, order, 64, 25.0)
    assert whole["total"] == pytest.approx(np.mean(steps), rel=1e-5)


def test_predict_pairs_is_the_mean_of_patch_predictions():
    data = synthetic_split(num_pairs=4, per_pair=7)
    model, _ = fresh()
    got = predict_pairs(model, data, batch_size=5)  # batches straddle pairs
    model.eval()
    with torch.no_grad():
        per_patch = model(data.left, data.right)[0].double()
    want = [per_patch[data.pair_index == k].mean().item() for k in range(4)]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_epoch_order_is_seeded_and_one_rank_is_the_permutation():
    a = epoch_order(1001, seed=2, epoch=7)
    assert torch.equal(a, epoch_order(1001, seed=2, epoch=7))
    assert not torch.equal(a, epoch_order(1001, seed=2, epoch=8))
    assert torch.equal(torch.sort(a).values, torch.arange(1001))  # every patch exactly once


@pytest.mark.parametrize("num_patches,world", [(1001, 3), (1000, 4), (7, 2), (5, 8), (128, 1), (129, 2)])
def test_ranks_get_equal_shares_that_cover_every_patch(num_patches, world):
    full = epoch_order(num_patches, seed=2, epoch=7)
    shares = [epoch_order(num_patches, 2, 7, rank=r, world=world) for r in range(world)]
    size = -(-num_patches // world)  # ceil
    assert [len(s) for s in shares] == [size] * world  # same steps of the same sizes on every rank
    counts = torch.bincount(torch.cat(shares), minlength=num_patches)
    assert counts.min() >= 1  # every patch at least once per epoch
    assert counts.sum() - num_patches == size * world - num_patches  # only the padding repeats
    # the padding wraps around to the start of the same permutation
    assert torch.equal(torch.cat(shares)[:num_patches], full)


def test_cuda_request_without_gpu_is_a_user_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(UserError, match="no CUDA GPU"):
        select_device("cuda")
    assert select_device("auto").type == "cpu"
