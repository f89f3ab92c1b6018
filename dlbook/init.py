"""Weight initialisation and the signal statistics it controls (chapter 2).

For a linear layer ``y = x @ W.T`` with ``W`` of shape (fan_out, fan_in), the schemes draw
``W ~ N(0, std^2)`` with

- ``"naive"``: ``std = 1`` (a fixed scale that ignores the layer size);
- ``"lecun"``: ``std = 1 / sqrt(fan_in)`` (keeps the variance of a linear or SELU layer);
- ``"xavier"`` (Glorot): ``std = sqrt(2 / (fan_in + fan_out))`` (for tanh / sigmoid);
- ``"he"`` (Kaiming): ``std = sqrt(2 / fan_in)`` (for ReLU, which zeroes half of its inputs).

The weights are drawn by ``torch.nn.init``; :func:`signal_statistics` measures, layer by layer, the
spread of the activations in the forward pass and of the gradients in the backward pass.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .activations import activation

SCHEMES = ("naive", "lecun", "xavier", "he")


def _check(fan_in: int, fan_out: int, scheme: str) -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"unknown initialisation scheme {scheme!r}; expected one of {SCHEMES}")
    for name, value in (("fan_in", fan_in), ("fan_out", fan_out)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def init_std(fan_in: int, fan_out: int, scheme: str) -> float:
    """Return the standard deviation that ``scheme`` gives a (fan_out, fan_in) weight matrix."""
    _check(fan_in, fan_out, scheme)
    if scheme == "naive":
        return 1.0
    if scheme == "lecun":
        return 1.0 / math.sqrt(fan_in)
    if scheme == "xavier":
        return nn.init.calculate_gain("linear") * math.sqrt(2.0 / (fan_in + fan_out))
    return nn.init.calculate_gain("relu") / math.sqrt(fan_in)


def init_weight(fan_in: int, fan_out: int, scheme: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Return a float32 weight of shape (fan_out, fan_in) drawn from N(0, init_std(...)^2) by torch.nn.init."""
    _check(fan_in, fan_out, scheme)
    w = torch.empty(fan_out, fan_in)
    if scheme == "xavier":
        return nn.init.xavier_normal_(w, generator=generator)
    if scheme == "he":
        return nn.init.kaiming_normal_(w, mode="fan_in", nonlinearity="relu", generator=generator)
    return nn.init.normal_(w, 0.0, init_std(fan_in, fan_out, scheme), generator=generator)


def init_linear_(model: nn.Module, scheme: str, generator: torch.Generator | None = None) -> nn.Module:
    """Return ``model`` after re-drawing the weight of every ``nn.Linear`` with ``scheme`` (biases to 0)."""
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, nn.Linear):
                layer.weight.copy_(init_weight(layer.in_features, layer.out_features, scheme, generator))
                if layer.bias is not None:
                    layer.bias.zero_()
    return model


class DeepMLP(nn.Module):
    """A plain stack of ``depth`` (Linear, activation) layers of equal ``width``, no output layer.

    Shape: input (N, width) -> output (N, width). ``self.outputs`` keeps each layer's output after a
    forward pass (with its gradient after a backward pass) so that its statistics can be read.
    """

    def __init__(self, depth: int = 10, width: int = 256, act: str = "tanh", scheme: str = "xavier", seed: int = 0):
        super().__init__()
        if depth < 1 or width < 1:
            raise ValueError(f"depth and width must be >= 1, got depth={depth}, width={width}")
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.act = activation(act)
        self.outputs: list[torch.Tensor] = []
        init_linear_(self, scheme, torch.Generator().manual_seed(seed))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.outputs = []
        for layer in self.layers:
            x = self.act(layer(x))
            if x.requires_grad:
                x.retain_grad()
            self.outputs.append(x)
        return x


def signal_statistics(model: DeepMLP, x: torch.Tensor) -> dict[str, list[float]]:
    """Return per-layer ``{"activation_std": [...], "gradient_std": [...]}`` of a :class:`DeepMLP`.

    ``x``: (N, width). The backward pass starts from ``loss = sum(output * r)`` with a fixed random
    ``r``, so that every output unit sends back a unit-sized gradient.
    """
    out = model(x)
    r = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out * r).sum().backward()
    return {
        "activation_std": [h.detach().std().item() for h in model.outputs],
        "gradient_std": [h.grad.std().item() for h in model.outputs],
    }
