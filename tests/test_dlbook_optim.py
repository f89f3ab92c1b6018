"""dlbook.optim: optimizers by name, trajectories, schedules and clipping, against closed forms and torch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dlbook import optim


def _bowl(params):
    return sum(((torch.arange(p.numel(), dtype=p.dtype).reshape(p.shape) + 1) * (p - 1) ** 2).sum() for p in params)


def _start(seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(3, 2, generator=g, dtype=torch.float64), torch.randn((), generator=g, dtype=torch.float64)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sgd_trajectory_matches_the_closed_form(seed):
    start = _start(seed)
    traj = optim.trajectory(lambda ps: optim.make_optimizer("sgd", ps, lr=0.01), start, _bowl, 5)
    params = [p.clone() for p in start]
    for t in range(5):
        scale = [torch.arange(p.numel(), dtype=p.dtype).reshape(p.shape) + 1 for p in params]
        params = [p - 0.01 * 2 * s * (p - 1) for p, s in zip(params, scale, strict=True)]
        for a, b in zip(traj[t], params, strict=True):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("seed", [0, 1])
def test_momentum_matches_its_recurrence(seed):
    start = _start(seed)
    traj = optim.trajectory(lambda ps: optim.make_optimizer("momentum", ps, lr=0.01), start, _bowl, 6)
    params, vel = [p.clone() for p in start], [torch.zeros_like(p) for p in start]
    for t in range(6):
        grads = [2 * (torch.arange(p.numel(), dtype=p.dtype).reshape(p.shape) + 1) * (p - 1) for p in params]
        vel = [0.9 * v + g for v, g in zip(vel, grads, strict=True)]
        params = [p - 0.01 * v for p, v in zip(params, vel, strict=True)]
        for a, b in zip(traj[t], params, strict=True):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("seed", [0, 1])
def test_adam_matches_its_bias_corrected_recurrence(seed):
    start = _start(seed)
    lr, b1, b2, eps = 0.05, 0.9, 0.999, 1e-8
    traj = optim.trajectory(lambda ps: optim.make_optimizer("adam", ps, lr=lr), start, _bowl, 8)
    params = [p.clone() for p in start]
    m = [torch.zeros_like(p) for p in start]
    v = [torch.zeros_like(p) for p in start]
    for t in range(1, 9):
        grads = [2 * (torch.arange(p.numel(), dtype=p.dtype).reshape(p.shape) + 1) * (p - 1) for p in params]
        m = [b1 * mi + (1 - b1) * g for mi, g in zip(m, grads, strict=True)]
        v = [b2 * vi + (1 - b2) * g * g for vi, g in zip(v, grads, strict=True)]
        params = [p - lr * (mi / (1 - b1**t)) / ((vi / (1 - b2**t)).sqrt() + eps)
                  for p, mi, vi in zip(params, m, v, strict=True)]
        for a, b in zip(traj[t - 1], params, strict=True):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_every_optimizer_decreases_the_bowl(name):
    lr = {"sgd": 0.01, "momentum": 0.01, "adagrad": 0.1, "rmsprop": 0.01, "adam": 0.05, "adamw": 0.05}[name]
    start = _start(0)
    traj = optim.trajectory(lambda ps: optim.make_optimizer(name, ps, lr=lr), start, _bowl, 50)
    assert _bowl(traj[-1]).item() < 0.5 * _bowl(start).item()


def test_make_optimizer_rejects_bad_input():
    p = [torch.zeros(1, requires_grad=True)]
    with pytest.raises(ValueError, match="expected one of"):
        optim.make_optimizer("lion", p, lr=0.1)
    with pytest.raises(ValueError, match="lr must be positive"):
        optim.make_optimizer("sgd", p, lr=0.0)
    with pytest.raises(ValueError, match="steps"):
        optim.trajectory(lambda ps: torch.optim.SGD(ps, lr=0.1), p, _bowl, 0)


def test_trajectory_does_not_change_the_start():
    start = _start(0)
    before = [p.clone() for p in start]
    optim.trajectory(lambda ps: torch.optim.SGD(ps, lr=0.1), start, _bowl, 3)
    for a, b in zip(start, before, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(("epochs", "lr", "eta_min"), [(10, 0.1, 0.0), (1, 0.5, 0.0), (7, 3e-4, 1e-5), (30, 1.0, 0.1)])
def test_cosine_schedule_matches_the_closed_form(epochs, lr, eta_min):
    got = optim.lr_schedule("cosine", lr, epochs, eta_min=eta_min)
    expected = [eta_min + (lr - eta_min) * (1 + math.cos(math.pi * e / epochs)) / 2 for e in range(epochs)]
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


def test_step_constant_and_plateau_schedules():
    assert optim.lr_schedule("constant", 0.1, 4) == [0.1] * 4
    np.testing.assert_allclose(optim.lr_schedule("step", 1.0, 7, step_size=3, gamma=0.5),
                               [1, 1, 1, 0.5, 0.5, 0.5, 0.25])
    losses = [1.0, 0.9, 0.95, 0.95, 0.95, 0.95, 0.95]
    got = optim.lr_schedule("plateau", 1.0, 7, val_losses=losses, patience=1, factor=0.5)
    # epoch 1 improves; epochs 2 and 3 do not, so after epoch 3 (patience 1 exceeded) the rate halves
    np.testing.assert_allclose(got, [1, 1, 1, 1, 0.5, 0.5, 0.25])
    with pytest.raises(ValueError, match="val_losses"):
        optim.lr_schedule("plateau", 1.0, 3)
    with pytest.raises(ValueError, match="expected one of"):
        optim.lr_schedule("warmup", 1.0, 3)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("max_norm", [0.1, 1.0, 100.0])
def test_clip_grad_norm_scales_to_max_norm_and_returns_the_old_norm(seed, max_norm):
    g = torch.Generator().manual_seed(seed)
    params = [torch.zeros(s, requires_grad=True) for s in [(3, 4), (5,), ()]]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    unused = torch.zeros(2, requires_grad=True)
    old = torch.sqrt(sum((p.grad**2).sum() for p in params)).item()
    before = [p.grad.clone() for p in params]
    got = optim.clip_grad_norm([*params, unused], max_norm)
    assert got == pytest.approx(old, rel=1e-6)
    new = torch.sqrt(sum((p.grad**2).sum() for p in params)).item()
    assert new == pytest.approx(min(old, max_norm), rel=1e-4)
    scale = min(1.0, max_norm / (old + 1e-6))
    for p, b in zip(params, before, strict=True):
        torch.testing.assert_close(p.grad, b * scale)
    assert unused.grad is None


def test_clip_grad_norm_edge_cases():
    assert optim.clip_grad_norm([torch.zeros(2, requires_grad=True)], 1.0) == 0.0
    p = torch.zeros(3, requires_grad=True)
    p.grad = torch.zeros(3)
    assert optim.clip_grad_norm([p], 1.0) == 0.0
    assert torch.equal(p.grad, torch.zeros(3))
    with pytest.raises(ValueError, match="max_norm"):
        optim.clip_grad_norm([p], 0.0)
