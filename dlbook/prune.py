"""Pruning: magnitude masks (unstructured and structured) on top of ``torch.nn.utils.prune``.

A mask is a 0/1 tensor of the weight's shape; pruning multiplies the weight by it. Unstructured
pruning zeroes the individual weights of smallest magnitude; structured pruning zeroes whole rows
(output neurons or convolution filters) of smallest L2 norm, which is what makes a layer smaller.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.utils.prune as torch_prune


def _check_sparsity(sparsity: float) -> None:
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be between 0 and 1, got {sparsity}")


def magnitude_prune_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Return a float 0/1 mask of ``weight``'s shape that zeroes its ``round(sparsity * numel)`` smallest |w|.

    ``weight``: any shape. Built on ``torch.nn.utils.prune.L1Unstructured``.
    """
    _check_sparsity(sparsity)
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"expected weight to be a torch.Tensor, got {type(weight).__name__}")
    w = weight.detach()
    return torch_prune.L1Unstructured(sparsity).compute_mask(w, torch.ones_like(w)).to(w.dtype)


def structured_prune_mask(weight: torch.Tensor, sparsity: float, dim: int = 0) -> torch.Tensor:
    """Return a float 0/1 mask of ``weight``'s shape zeroing the ``round(sparsity * n)`` slices along ``dim``
    with the smallest L2 norm (``n = weight.shape[dim]``; dim 0 = output neurons / filters).

    Built on ``torch.nn.utils.prune.LnStructured``.
    """
    _check_sparsity(sparsity)
    if weight.ndim < 2:
        raise ValueError(f"expected a weight with at least 2 dimensions, got shape {tuple(weight.shape)}")
    w = weight.detach()
    return torch_prune.LnStructured(sparsity, n=2, dim=dim).compute_mask(w, torch.ones_like(w)).to(w.dtype)


def prunable_layers(model: nn.Module) -> list[nn.Module]:
    """Return the ``nn.Linear`` and ``nn.Conv2d`` layers of ``model`` except the last (the classifier)."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return layers[:-1]


def prune_model(model: nn.Module, sparsity: float, structured: bool = False) -> nn.Module:
    """Return ``model``, pruned in place: each layer of :func:`prunable_layers` gets a weight mask.

    Unstructured: ``sparsity`` of each layer's weights (smallest |w|) are zeroed; structured: that
    fraction of each layer's output neurons (rows of smallest L2 norm). The masks stay attached
    (``torch.nn.utils.prune``), so fine-tuning keeps pruned weights at zero; :func:`make_permanent`
    folds them in.
    """
    _check_sparsity(sparsity)
    for layer in prunable_layers(model):
        if structured:
            torch_prune.ln_structured(layer, "weight", amount=sparsity, n=2, dim=0)
        else:
            torch_prune.l1_unstructured(layer, "weight", amount=sparsity)
    return model


def make_permanent(model: nn.Module) -> nn.Module:
    """Return ``model`` with every pruning mask folded into its weight (``torch.nn.utils.prune.remove``)."""
    for module in model.modules():
        if torch_prune.is_pruned(module) and hasattr(module, "weight_mask"):
            torch_prune.remove(module, "weight")
    return model


def weight_sparsity(model: nn.Module) -> float:
    """Return the fraction of exactly-zero entries among the weights of :func:`prunable_layers`."""
    layers = prunable_layers(model)
    if not layers:
        raise ValueError("model has no prunable Linear or Conv2d layer (the last one is the classifier)")
    zeros = sum(int((layer.weight == 0).sum()) for layer in layers)
    total = sum(layer.weight.numel() for layer in layers)
    return zeros / total
