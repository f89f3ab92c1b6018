"""dlbook.normalization: batch norm against nn.BatchNorm1d and torch.autograd."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dlbook import normalization as nrm

SEEDS = [0, 1, 2]
SHAPES = [(2, 1), (4, 3), (16, 5), (64, 2)]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("momentum", [0.1, 0.5])
def test_forward_matches_batchnorm1d_in_train_then_eval(seed, shape, momentum):
    rng = np.random.default_rng(seed)
    n, d = shape
    bn = nn.BatchNorm1d(d, momentum=momentum).double()
    gamma, beta = rng.standard_normal(d), rng.standard_normal(d)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor(gamma))
        bn.bias.copy_(torch.tensor(beta))
    rm, rv = np.zeros(d), np.ones(d)
    for step in range(3):
        x = 2 * rng.standard_normal((n, d)) + step
        ours = nrm.batchnorm_forward(x, gamma, beta, rm, rv, training=True, momentum=momentum)
        theirs = bn.train()(torch.tensor(x)).detach().numpy()
        np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(rm, bn.running_mean.numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(rv, bn.running_var.numpy(), rtol=1e-10, atol=1e-12)
    x1 = rng.standard_normal((1, d))
    rm_before = rm.copy()
    ours = nrm.batchnorm_forward(x1, gamma, beta, rm, rv, training=False, momentum=momentum)
    np.testing.assert_allclose(ours, bn.eval()(torch.tensor(x1)).detach().numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(rm, rm_before)


def test_training_output_is_normalised():
    x = np.random.default_rng(0).standard_normal((100, 4)) * 5 + 3
    out = nrm.batchnorm_forward(x, np.full(4, 2.0), np.full(4, -1.0), np.zeros(4), np.ones(4), training=True)
    np.testing.assert_allclose(out.mean(axis=0), -1.0, atol=1e-10)
    np.testing.assert_allclose(out.std(axis=0), 2.0, rtol=1e-4)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("eps", [1e-5, 0.5])
def test_backward_matches_autograd_through_batchnorm1d(seed, shape, eps):
    rng = np.random.default_rng(seed)
    n, d = shape
    x, gamma, dout = rng.standard_normal((n, d)), rng.standard_normal(d), rng.standard_normal((n, d))
    bn = nn.BatchNorm1d(d, eps=eps).double().train()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor(gamma))
    xt = torch.tensor(x, requires_grad=True)
    bn(xt).backward(torch.tensor(dout))
    dx, dg, db = nrm.batchnorm_backward(dout, x, gamma, eps)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(dg, bn.weight.grad.numpy(), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(db, bn.bias.grad.numpy(), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(dx.sum(axis=0), 0.0, atol=1e-9)  # a shift of a column changes nothing


def test_backward_matches_central_differences():
    from dlbook.check import numerical_gradient

    rng = np.random.default_rng(5)
    x, gamma, dout = rng.standard_normal((6, 3)), rng.standard_normal(3), rng.standard_normal((6, 3))

    def f(v):
        return float((nrm.batchnorm_forward(v, gamma, np.zeros(3), np.zeros(3), np.ones(3), True) * dout).sum())

    dx, _, _ = nrm.batchnorm_backward(dout, x, gamma)
    np.testing.assert_allclose(dx, numerical_gradient(f, x), rtol=1e-5, atol=1e-7)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        nrm.batchnorm_forward(np.zeros(3), np.ones(3), np.zeros(3), np.zeros(3), np.ones(3), True)
    with pytest.raises(ValueError, match="gamma of shape"):
        nrm.batchnorm_forward(np.zeros((4, 3)), np.ones(2), np.zeros(3), np.zeros(3), np.ones(3), True)
    with pytest.raises(ValueError, match="more than 1 example"):
        nrm.batchnorm_forward(np.zeros((1, 3)), np.ones(3), np.zeros(3), np.zeros(3), np.ones(3), True)
    with pytest.raises(ValueError, match="dout has shape"):
        nrm.batchnorm_backward(np.zeros((2, 2)), np.zeros((4, 2)), np.ones(2))
