"""Activation functions and their derivatives, computed by PyTorch (chapter 2).

- :data:`ACTIVATIONS`: name -> elementwise torch function (sigmoid, tanh, relu, leaky_relu, elu, gelu).
- :func:`activation`: the function by name, with a clear error for an unknown name.
- :func:`activation_and_gradient`: ``f(x)`` and ``f'(x)`` on a grid, the derivative by torch.autograd.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "relu": F.relu,
    "leaky_relu": lambda x: F.leaky_relu(x, negative_slope=0.01),
    "elu": lambda x: F.elu(x, alpha=1.0),
    "gelu": F.gelu,
}


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return the elementwise activation called ``name`` (a key of :data:`ACTIVATIONS`)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def activation_and_gradient(name: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(f(x), f'(x))`` for the activation ``name``; both have the shape of ``x``.

    The derivative comes from torch.autograd (at 0, ReLU's derivative is PyTorch's choice, 0).
    """
    f = activation(name)
    xt = torch.tensor(np.asarray(x, dtype=np.float64), requires_grad=True)
    y = f(xt)
    (dy,) = torch.autograd.grad(y.sum(), xt)
    return y.detach().numpy(), dy.numpy()
