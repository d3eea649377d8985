import pytest
import torch
import torch.nn.functional as F

from siqa.models import count_parameters
from siqa.models.bourbia2021 import MultiTaskSIQA


def _batch(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 1, 32, 32, generator=g), torch.randn(n, 1, 32, 32, generator=g))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MultiTaskSIQA().eval()


def _conv(cin, cout):
    return cin * cout * 3 * 3 + cout


def _fc(fin, fout):
    return fin * fout + fout


def test_parameter_count_matches_spec_and_hand_count(model):
    column = (_conv(1, 32) + _conv(32, 32) + _conv(32, 64) + _conv(64, 64) + _conv(64, 128)
              + _fc(128 * 4 * 4, 512) + _fc(512, 512))
    sub_c = _conv(64, 64) + _conv(64, 128) + _fc(128 * 4 * 4, 512) + _fc(512, 512)
    sub_d = _fc(128 * 8 * 8, 512) + _fc(512, 512)
    task1 = _fc(2048, 1024) + _fc(1024, 108)
    task2 = _fc(2048, 1024) + _fc(2048, 1024) + _fc(1024, 1)
    by_hand = 2 * column + sub_c + sub_d + task1 + task2
    assert by_hand == 15_187_437
    assert count_parameters(model) == 15_187_437
    assert sum(p.numel() for p in model.parameters()) == by_hand


def test_columns_have_separate_weights(model):
    left = dict(model.column_left.named_parameters())
    right = dict(model.column_right.named_parameters())
    assert left.keys() == right.keys()
    for name in left:
        assert left[name].data_ptr() != right[name].data_ptr()
        assert not torch.equal(left[name], right[name])


@pytest.mark.parametrize("batch", [1, 5])
def test_output_shapes(model, batch):
    left, right = _batch(batch)
    with torch.no_grad():
        quality, nss = model(left, right)
    assert quality.shape == (batch,)
    assert nss.shape == (batch, 108)
    small = MultiTaskSIQA(nss_dim=7).eval()
    with torch.no_grad():
        q2, n2 = small(left, right)
    assert q2.shape == (batch,) and n2.shape == (batch, 7)


def _reference_forward(m, left, right):
    """The layer table of docs/method.md#the-network written out with torch.nn.functional and the model's own
    parameters (eval mode: no dropout), to check the wiring and every cat() order."""
    def conv(x, layer):
        return F.relu(F.conv2d(x, layer.weight, layer.bias, padding=1))

    def lin(x, layer):
        return F.linear(x, layer.weight, layer.bias)

    def column(x, col):
        x = F.max_pool2d(conv(x, col.conv1), 2)
        x2 = F.max_pool2d(conv(x, col.conv2), 2)
        x4 = conv(conv(x2, col.conv3), col.conv4)
        x = F.max_pool2d(conv(x4, col.conv5), 2).reshape(x.shape[0], -1)
        return x2, x4, lin(lin(x, col.fc.fc1), col.fc.fc2)

    x2l, x4l, a = column(left, m.column_left)
    x2r, x4r, b = column(right, m.column_right)
    assert x2l.shape[1:] == (32, 8, 8) and x4l.shape[1:] == (64, 8, 8)
    c_in = F.relu(torch.cat([x2l + x2r, x2l - x2r], 1))
    c = conv(conv(c_in, m.diff_sum_low.conv1), m.diff_sum_low.conv2)
    c = F.max_pool2d(c, 2).reshape(left.shape[0], -1)
    c = lin(lin(c, m.diff_sum_low.fc.fc1), m.diff_sum_low.fc.fc2)
    d_in = F.relu(torch.cat([x4l + x4r, x4l - x4r], 1)).reshape(left.shape[0], -1)
    assert d_in.shape[1] == 8192
    d = lin(lin(d_in, m.diff_sum_high.fc.fc1), m.diff_sum_high.fc.fc2)
    fused = F.relu(torch.cat([a, b, c, d], 1))
    h1 = lin(fused, m.nss_fc1)
    h2 = lin(fused, m.quality_fc1)
    q = lin(lin(F.relu(torch.cat([h2, h1], 1)), m.quality_fc2), m.quality_out)
    return q[:, 0], lin(h1, m.nss_fc2)


def test_forward_matches_the_spec_table(model):
    left, right = _batch(3, seed=1)
    with torch.no_grad():
        q, n = model(left, right)
        q_ref, n_ref = _reference_forward(model, left, right)
    torch.testing.assert_close(q, q_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(n, n_ref, rtol=1e-5, atol=1e-6)
    # the views are not interchangeable (order of the cat()s and separate weights)
    with torch.no_grad():
        q_swapped, _ = model(right, left)
    assert not torch.allclose(q, q_swapped)


def test_dropout_follows_train_and_eval_mode():
    torch.manual_seed(1)
    m = MultiTaskSIQA()
    left, right = _batch(4, seed=2)
    with torch.no_grad():
        m.train()
        q1, n1 = m(left, right)
        q2, n2 = m(left, right)
        assert not torch.equal(q1, q2) and not torch.equal(n1, n2)
        m.eval()
        q3, n3 = m(left, right)
        q4, n4 = m(left, right)
    assert torch.equal(q3, q4) and torch.equal(n3, n4)
    drops = [mod for mod in m.modules() if isinstance(mod, torch.nn.Dropout)]
    assert sorted(d.p for d in drops) == [0.35] * 4 + [0.5] * 4


def test_quality_depends_on_nss_hidden_layer_not_on_nss_output_layer():
    torch.manual_seed(2)
    m = MultiTaskSIQA().eval()
    left, right = _batch(4, seed=3)
    with torch.no_grad():
        q0, n0 = m(left, right)
        m.nss_fc2.weight.add_(1.0)  # the 108-output layer: no effect on quality
        q1, n1 = m(left, right)
        assert torch.equal(q0, q1) and not torch.allclose(n0, n1)
        m.nss_fc1.weight.mul_(1.5)  # h1 feeds the quality head through cat(h2, h1)
        q2, _ = m(left, right)
    assert not torch.allclose(q1, q2)


def test_gradients_cross_between_tasks():
    torch.manual_seed(3)
    m = MultiTaskSIQA().eval()
    left, right = _batch(4, seed=4)
    quality, nss = m(left, right)
    nss.abs().mean().backward(retain_graph=True)
    # the NSS loss trains the shared feature extractor, not the quality-only layers
    for part in (m.column_left, m.column_right, m.diff_sum_low, m.diff_sum_high):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    assert m.quality_fc1.weight.grad is None and m.quality_out.weight.grad is None
    m.zero_grad(set_to_none=True)
    quality.abs().mean().backward()
    assert m.nss_fc1.weight.grad is not None and m.nss_fc1.weight.grad.abs().sum() > 0
    assert m.nss_fc2.weight.grad is None


def _loss(m, left, right, q_target, nss_target):
    quality, nss = m(left, right)
    return F.l1_loss(quality, q_target) + 25 * F.l1_loss(nss, nss_target)


def test_sgd_steps_reduce_the_loss_on_a_fixed_batch():
    """The training recipe of docs/method.md#training (SGD lr 1e-3, momentum 0.9, weight decay
    1e-4; L1(quality) + 25 * L1(nss)) lowers the eval-mode loss of a fixed batch."""
    torch.manual_seed(4)
    m = MultiTaskSIQA()
    left, right = _batch(8, seed=5)
    g = torch.Generator().manual_seed(6)
    q_target = torch.rand(8, generator=g) * 5
    nss_target = torch.rand(8, 108, generator=g)
    opt = torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    losses = []
    for _ in range(3):
        m.eval()
        with torch.no_grad():
            losses.append(_loss(m, left, right, q_target, nss_target).item())
        m.train()
        opt.zero_grad()
        _loss(m, left, right, q_target, nss_target).backward()
        opt.step()
    m.eval()
    with torch.no_grad():
        losses.append(_loss(m, left, right, q_target, nss_target).item())
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < losses[0] - 0.01, losses  # about 0.05 with this seed


def test_channels_last_and_bf16_autocast(model):
    left, right = _batch(4, seed=7)
    with torch.no_grad():
        q, n = model(left, right)
        m_cl = MultiTaskSIQA().eval()
        m_cl.load_state_dict(model.state_dict())
        m_cl = m_cl.to(memory_format=torch.channels_last)
        q_cl, n_cl = m_cl(left.contiguous(memory_format=torch.channels_last),
                          right.contiguous(memory_format=torch.channels_last))
        torch.testing.assert_close(q_cl, q, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(n_cl, n, rtol=1e-4, atol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            q_bf, n_bf = model(left, right)
    assert q_bf.dtype == torch.bfloat16 and n_bf.dtype == torch.bfloat16
    assert q_bf.shape == q.shape and n_bf.shape == n.shape
    assert torch.isfinite(q_bf.float()).all() and torch.isfinite(n_bf.float()).all()
    torch.testing.assert_close(n_bf.float(), n, rtol=0.1, atol=0.05)
