"""dlbook.accumulation: micro-batches and the full-batch gradient they must add up to, against torch.autograd."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dlbook import accumulation as A


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))


@pytest.mark.parametrize("n, size", [(10, 3), (10, 10), (10, 1), (1, 4), (12, 4)])
def test_micro_batches_cut_in_order_with_a_smaller_last(n, size):
    x, y = torch.randn(n, 5), torch.arange(n)
    parts = A.micro_batches(x, y, size)
    assert [len(xb) for xb, _ in parts] == [min(size, n - i) for i in range(0, n, size)]
    assert torch.equal(torch.cat([xb for xb, _ in parts]), x) and torch.equal(torch.cat([yb for _, yb in parts]), y)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_full_batch_gradients_equal_one_backward_and_leave_grad_alone(seed):
    model = _model(seed)
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(11, 5, generator=gen), torch.randint(0, 3, (11,), generator=gen)
    loss, grads = A.full_batch_gradients(model, F.cross_entropy, A.micro_batches(x, y, 4))
    assert all(p.grad is None for p in model.parameters())
    expected = F.cross_entropy(model(x), y)
    expected.backward()
    assert loss == pytest.approx(expected.item(), rel=1e-6)
    for g, p in zip(grads, model.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad)


def test_micro_batch_gradients_weighted_by_size_add_up_to_the_full_batch():
    # the law an accumulation loop relies on: mean over N = sum over micro-batches of (n_i / N) * mean_i
    model = _model(3)
    x, y = torch.randn(10, 5), torch.randint(0, 3, (10,))
    parts = A.micro_batches(x, y, 4)  # 4, 4, 2
    for xb, yb in parts:
        (F.cross_entropy(model(xb), yb) * len(xb) / len(x)).backward()
    _, grads = A.full_batch_gradients(model, F.cross_entropy, parts)
    for g, p in zip(grads, model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, g)


def test_frozen_and_unused_parameters_give_none():
    model = nn.ModuleDict({"body": _model(0), "extra": nn.Linear(2, 2)})  # extra: registered, never used
    model.forward = model["body"].forward
    model["body"][0].bias.requires_grad_(False)
    _, grads = A.full_batch_gradients(model, F.cross_entropy, [(torch.randn(3, 5), torch.tensor([0, 1, 2]))])
    names = [n for n, _ in model.named_parameters()]
    assert grads[names.index("body.0.bias")] is None and grads[names.index("extra.weight")] is None
    assert grads[names.index("body.0.weight")] is not None


def test_bad_input_says_what_was_expected():
    with pytest.raises(ValueError, match="positive int, got 0"):
        A.micro_batches(torch.zeros(3, 2), torch.zeros(3), 0)
    with pytest.raises(ValueError, match=r"same first dimension N, got \(3, 2\) and \(4,\)"):
        A.micro_batches(torch.zeros(3, 2), torch.zeros(4), 2)
    with pytest.raises(ValueError, match="at least one"):
        A.full_batch_gradients(_model(0), F.cross_entropy, [])
    with pytest.raises(ValueError, match="scalar"):
        A.full_batch_gradients(_model(0), lambda out, y: out.sum(1), [(torch.randn(2, 5), torch.zeros(2))])
