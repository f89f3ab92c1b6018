"""dlbook.interpret: saliency and integrated gradients against closed forms and torch.autograd."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from dlbook import interpret


def _linear_model(c=2, h=3, w=4, classes=5, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, classes)).double()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_saliency_of_linear_model_is_weight_magnitude(seed):
    model = _linear_model(seed=seed)
    x = torch.randn(3, 2, 3, 4, dtype=torch.float64)
    target = torch.tensor([0, 4, 2])
    sal = interpret.saliency_map(model, x, target)
    assert sal.shape == (3, 3, 4)
    expected = model[1].weight[target].detach().abs().reshape(3, 2, 3, 4).amax(dim=1)
    torch.testing.assert_close(sal, expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n", [1, 4])
def test_saliency_matches_per_image_autograd(seed, n):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 25, 4)).double()
    x = torch.randn(n, 1, 5, 5, dtype=torch.float64)
    target = torch.randint(0, 4, (n,))
    sal = interpret.saliency_map(model, x, target)
    for i in range(n):
        xi = x[i : i + 1].clone().requires_grad_(True)
        model(xi)[0, target[i]].backward()
        torch.testing.assert_close(sal[i], xi.grad[0].abs().amax(0))
    assert not x.requires_grad


@pytest.mark.parametrize("seed", [0, 1])
def test_integrated_gradients_linear_model_is_exact(seed):
    model = _linear_model(seed=seed)
    x = torch.randn(2, 2, 3, 4, dtype=torch.float64)
    baseline = torch.randn(2, 2, 3, 4, dtype=torch.float64)
    target = torch.tensor([1, 3])
    ig = interpret.integrated_gradients(model, x, target, baseline, steps=3)
    expected = (x - baseline) * model[1].weight[target].detach().reshape(2, 2, 3, 4)
    torch.testing.assert_close(ig, expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_integrated_gradients_completeness_and_riemann_sum(seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    x = torch.randn(3, 1, 3, 4, dtype=torch.float64)
    target = torch.tensor([0, 1, 2])
    ig = interpret.integrated_gradients(model, x, target, steps=200)
    with torch.no_grad():
        gap = model(x).gather(1, target[:, None])[:, 0] - model(torch.zeros_like(x)).gather(1, target[:, None])[:, 0]
    torch.testing.assert_close(ig.sum(dim=(1, 2, 3)), gap, atol=1e-3, rtol=1e-3)
    # explicit midpoint sum, one step at a time
    steps = 5
    total = torch.zeros_like(x)
    for k in range(steps):
        xk = ((k + 0.5) / steps * x).requires_grad_(True)
        model(xk).gather(1, target[:, None]).sum().backward()
        total += xk.grad
    torch.testing.assert_close(interpret.integrated_gradients(model, x, target, steps=steps), x * total / steps)


def test_bad_input():
    model = _linear_model()
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        interpret.saliency_map(model, torch.randn(2, 24, dtype=torch.float64), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="target"):
        interpret.saliency_map(model, torch.randn(2, 2, 3, 4, dtype=torch.float64), torch.tensor([0]))
    with pytest.raises(ValueError, match="steps"):
        interpret.integrated_gradients(model, torch.randn(1, 2, 3, 4, dtype=torch.float64), torch.tensor([0]), steps=0)
    with pytest.raises(ValueError, match="baseline"):
        interpret.integrated_gradients(model, torch.randn(1, 2, 3, 4, dtype=torch.float64), torch.tensor([0]),
                                       baseline=torch.zeros(1, 2, 3, 3))
