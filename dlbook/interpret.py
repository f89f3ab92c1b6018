"""Interpretability: saliency maps and integrated gradients (Sundararajan et al., 2017) on torch.autograd."""

from __future__ import annotations

import torch
import torch.nn as nn


def _check_inputs(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f"expected x of shape (N, C, H, W), got {getattr(x, 'shape', type(x).__name__)}")
    target = torch.as_tensor(target, dtype=torch.int64, device=x.device)
    if target.shape != (x.shape[0],):
        raise ValueError(f"expected target of shape ({x.shape[0]},), got {tuple(target.shape)}")
    return target


def class_score_gradient(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Return d logit[n, target[n]] / d x[n] for each image: (N, C, H, W), same shape as ``x``."""
    target = _check_inputs(x, target)
    x = x.detach().clone().requires_grad_(True)
    logits = model(x)
    score = logits.gather(1, target[:, None]).sum()  # images are independent: one backward for all
    (grad,) = torch.autograd.grad(score, x)
    return grad


def saliency_map(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Return the saliency (N, H, W): ``max over channels of |d logit[target] / d x|``.

    Args: x (N, C, H, W) images; target (N,) int64 class per image. ``model`` should be in eval mode.
    """
    return class_score_gradient(model, x, target).abs().amax(dim=1)


def integrated_gradients(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    baseline: torch.Tensor | None = None,
    steps: int = 32,
) -> torch.Tensor:
    """Return integrated-gradient attributions (N, C, H, W), same shape as ``x``.

    ``(x - baseline) * mean_k grad(baseline + a_k (x - baseline))`` with midpoint alphas
    ``a_k = (k + 0.5) / steps``, ``k = 0..steps-1`` (the gradient is of logit[target]).
    ``baseline``: same shape as ``x``, default all zeros (a black image).
    """
    target = _check_inputs(x, target)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    baseline = torch.zeros_like(x) if baseline is None else baseline.to(x)
    if baseline.shape != x.shape:
        raise ValueError(f"expected baseline of shape {tuple(x.shape)}, got {tuple(baseline.shape)}")
    alphas = (torch.arange(steps, dtype=x.dtype, device=x.device) + 0.5) / steps
    n = x.shape[0]
    # All steps in one batch: (steps * N, C, H, W).
    path = baseline[None] + alphas[:, None, None, None, None] * (x - baseline)[None]
    grads = class_score_gradient(model, path.reshape(steps * n, *x.shape[1:]), target.repeat(steps))
    return (x - baseline).detach() * grads.reshape(steps, *x.shape).mean(dim=0)
