"""Convolutional network definitions used in chapter 3 (all ``nn.Sequential``, so layers can be inspected).

- :func:`lenet5`: LeNet-5 (LeCun et al., 1998) for 28x28 grey images, with ReLU and max pooling.
- :func:`small_cnn`: a compact modern CNN (conv-BN-ReLU blocks, dropout) for 28x28 grey images.
- :func:`feature_maps`: the output of every layer of an ``nn.Sequential`` for one batch.
"""

from __future__ import annotations

import torch
from torch import nn


def lenet5(num_classes: int = 10) -> nn.Sequential:
    """Return LeNet-5 for inputs (N, 1, 28, 28): logits (N, num_classes).

    conv 5x5 (6, padding 2) - ReLU - max pool 2 - conv 5x5 (16) - ReLU - max pool 2 - 120 - 84 - classes.
    Padding 2 makes the 28x28 input act like the original 32x32.
    """
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),   # (N, 6, 14, 14)
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),             # (N, 16, 5, 5)
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, num_classes),
    )  # fmt: skip


def conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    """Return [3x3 conv (no bias, padding 1), BatchNorm2d, ReLU]: a block that keeps H and W."""
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU()]


def small_cnn(num_classes: int = 10, width: int = 16, dropout: float = 0.3) -> nn.Sequential:
    """Return a compact CNN for inputs (N, 1, 28, 28): logits (N, num_classes).

    Three conv-BN-ReLU blocks with ``width``, ``2*width`` and ``4*width`` channels, max pooling after
    the first two (28 -> 14 -> 7), then dropout and one linear layer on the (4*width, 7, 7) features.
    """
    return nn.Sequential(
        *conv_bn_relu(1, width), nn.MaxPool2d(2),                    # (N, w, 14, 14)
        *conv_bn_relu(width, 2 * width), nn.MaxPool2d(2),            # (N, 2w, 7, 7)
        *conv_bn_relu(2 * width, 4 * width),                         # (N, 4w, 7, 7)
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(4 * width * 7 * 7, num_classes),
    )  # fmt: skip


@torch.no_grad()
def feature_maps(model: nn.Sequential, x: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """Return ``[(layer name, output)]`` for every layer of ``model`` applied in turn to ``x``."""
    was_training = model.training
    model.eval()
    outputs = []
    for name, layer in model.named_children():
        x = layer(x)
        outputs.append((f"{name}: {type(layer).__name__}", x))
    model.train(was_training)
    return outputs
