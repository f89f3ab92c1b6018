"""dlbook.multitask: the rotation task against numpy, the weighted losses against formulas and autograd,
and the training loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from dlbook import multitask


@pytest.mark.parametrize("shape", [(1, 1, 3, 3), (5, 2, 4, 4), (3, 1, 14, 14)])
def test_rotation_prediction_batch_matches_numpy(shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    rotated, labels = multitask.rotation_prediction_batch(x)
    n = shape[0]
    assert rotated.shape == (4 * n, *shape[1:]) and labels.dtype == torch.int64
    for k in range(4):
        np.testing.assert_array_equal(rotated[k * n:(k + 1) * n].numpy(), np.rot90(x.numpy(), k, axes=(2, 3)))
        assert labels[k * n:(k + 1) * n].tolist() == [k] * n


def test_four_quarter_turns_come_back_and_bad_input():
    x = torch.randn(2, 1, 5, 5)
    rotated, _ = multitask.rotation_prediction_batch(x)
    again, _ = multitask.rotation_prediction_batch(rotated[2:4])  # the 90-degree ones
    assert torch.equal(again[6:8], x)  # 90 + 270 degrees
    with pytest.raises(ValueError, match=r"square images x of shape \(N, C, H, H\), got \(2, 1, 4, 5\)"):
        multitask.rotation_prediction_batch(torch.randn(2, 1, 4, 5))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 2, 5])
def test_multitask_loss_fixed_and_uncertainty_match_formula_and_autograd(seed, k):
    g = torch.Generator().manual_seed(seed)
    losses = torch.rand(k, generator=g, dtype=torch.float64).mul(3).requires_grad_(True)
    weights = torch.rand(k, generator=g, dtype=torch.float64)
    got = multitask.multitask_loss(losses, weights=weights)
    torch.testing.assert_close(got, sum(weights[i] * losses[i] for i in range(k)))
    got.backward()
    torch.testing.assert_close(losses.grad, weights)

    s = torch.randn(k, generator=g, dtype=torch.float64).requires_grad_(True)
    losses.grad = None
    got = multitask.multitask_loss(losses, log_vars=s)
    expected = sum(math.exp(-s[i].item()) * losses[i].item() + s[i].item() for i in range(k))
    assert abs(got.item() - expected) < 1e-12
    got.backward()
    torch.testing.assert_close(losses.grad, torch.exp(-s.detach()))
    torch.testing.assert_close(s.grad, 1 - torch.exp(-s.detach()) * losses.detach())


@settings(max_examples=40, deadline=None)
@given(st.floats(0.01, 20.0))
def test_uncertainty_weighting_is_minimised_at_log_of_the_loss(loss_value):
    # d/ds [exp(-s) L + s] = 0 at s = log L: the learned weight exp(-s) is 1 / L
    losses = torch.tensor([loss_value], dtype=torch.float64)
    s = torch.tensor([math.log(loss_value)], dtype=torch.float64, requires_grad=True)
    multitask.multitask_loss(losses, log_vars=s).backward()
    assert abs(s.grad.item()) < 1e-9
    ones = multitask.multitask_loss(losses, weights=torch.ones(1, dtype=torch.float64))
    zero_s = multitask.multitask_loss(losses, log_vars=torch.zeros(1, dtype=torch.float64))
    assert ones.item() == pytest.approx(zero_s.item())  # s = 0 is the unweighted sum


def test_multitask_loss_bad_input():
    losses = torch.ones(2)
    with pytest.raises(ValueError, match="exactly one of weights"):
        multitask.multitask_loss(losses)
    with pytest.raises(ValueError, match="exactly one of weights"):
        multitask.multitask_loss(losses, weights=torch.ones(2), log_vars=torch.zeros(2))
    with pytest.raises(ValueError, match=r"log_vars of shape \(2,\) \(one per task\), got \(3,\)"):
        multitask.multitask_loss(losses, log_vars=torch.zeros(3))
    with pytest.raises(ValueError, match=r"task_losses of shape \(K,\)"):
        multitask.multitask_loss(torch.tensor(1.0), weights=torch.ones(1))


def test_uncertainty_weights_module():
    module = multitask.UncertaintyWeights(3)
    assert torch.equal(module.weights(), torch.ones(3))
    losses = torch.tensor([1.0, 2.0, 3.0])
    assert module(losses).item() == pytest.approx(6.0)
    with pytest.raises(ValueError, match="n_tasks >= 1"):
        multitask.UncertaintyWeights(0)


def _toy():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(120) % 2
    x = 0.2 * torch.rand(120, 1, 6, 6, generator=g)
    x[y == 0, :, :3, :3] += 0.7  # class 0: a blob top-left, class 1: bottom-left
    x[y == 1, :, 3:, :3] += 0.7
    return x, y


@pytest.mark.parametrize("weighting", multitask.WEIGHTINGS)
def test_fit_multitask_learns_both_heads(weighting):
    x, y = _toy()
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Flatten(), nn.Linear(36, 32), nn.ReLU())
    model = multitask.MultiTaskNet(trunk, 32, 2)
    history = multitask.fit_multitask(model, x[:6], y[:6], x[6:], weighting=weighting, steps=80, eval_every=40,
                                      val=(x, y), device=torch.device("cpu"), live=False, batch_size=8,
                                      rotation_batch_size=8, lr=3e-3)
    assert history["val_accuracy"][-1] >= 0.9
    assert model(x).shape == (120, 2) and model.rotation_logits(x).shape == (120, 4)
    if weighting == "single_task":
        assert history["rotation_weight"] == [0.0, 0.0]
    else:
        assert history["rotation_loss"][-1] < math.log(4)  # better than chance at the rotation task
    if weighting == "uncertainty":
        assert history["rotation_weight"][-1] != 1.0
