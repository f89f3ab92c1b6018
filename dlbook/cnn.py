"""Convolutional network definitions used in chapter 3 (all ``nn.Sequential``, so layers can be inspected).

- :func:`lenet5`: LeNet-5 (LeCun et al., 1998) for 28x28 grey images, with ReLU and max pooling.
- :func:`small_cnn`: a compact modern CNN (conv-BN-ReLU blocks, dropout) for 28x28 grey images.
- :func:`feature_maps`: the output of every layer of an ``nn.Sequential`` for one batch.
- :class:`ResidualBlock`: the basic residual block of He et al. (2016), identity or projection shortcut.
- :func:`plain_block`: the same two conv-BN layers without the shortcut, for comparison.
- :func:`resnet`: a small ResNet (stem, stages of blocks, global average pooling, linear), or the
  same network without skips (``residual=False``); :func:`deep_cnn` builds He et al.'s 6n+2-layer
  networks (20 layers: 3 stages of 3 blocks) from it.
- :func:`gradient_norms_by_block`: the norm of the loss gradient reaching each block's input.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
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


class ResidualBlock(nn.Module):
    """The basic residual block of He et al. (2016): ``relu(F(x) + shortcut(x))``.

    ``F(x) = bn2(conv2(relu(bn1(conv1(x)))))`` with 3x3 convolutions (no bias, padding 1; ``conv1``
    has the stride). ``shortcut`` is ``None`` (the identity) when the shape is kept, else a 1x1
    convolution with the stride followed by batch norm (a projection), so that both terms match.

    Shape: x (N, C_in, H, W) -> (N, C_out, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Sequential | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the block's output (N, C_out, H', W') for ``x`` (N, C_in, H, W)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + identity)  # the last ReLU comes after the addition


def plain_block(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    """Return conv-BN-ReLU-conv-BN-ReLU: :class:`ResidualBlock`'s layers without the shortcut."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(out_channels),
        nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(),
    )  # fmt: skip


def resnet(widths: tuple[int, ...] = (16, 32, 64), blocks_per_stage: tuple[int, ...] = (3, 3, 3),
           residual: bool = True, in_channels: int = 1, num_classes: int = 10,
           stem_pool: bool = False) -> nn.Sequential:
    """Return a small ResNet for images (N, in_channels, H, W): logits (N, num_classes).

    Children: ``stem`` (3x3 conv-BN-ReLU to ``widths[0]`` channels, then a 2x2 max pooling if
    ``stem_pool``, which makes every block 4x cheaper), ``blocks`` (an ``nn.Sequential``:
    stage s has ``blocks_per_stage[s]`` blocks of ``widths[s]`` channels, and every stage after the
    first starts with stride 2), ``head`` (global average pooling, then one linear layer).
    ``residual=False`` puts :func:`plain_block` where the :class:`ResidualBlock` would be: the same
    convolutions and parameters, minus the skips (and minus the projections' 1x1 convolutions).
    The number of weight layers is ``2 * sum(blocks_per_stage) + 2``.
    """
    if len(widths) != len(blocks_per_stage) or not widths:
        raise ValueError(f"widths and blocks_per_stage need one entry per stage, got {widths} and {blocks_per_stage}")
    make = ResidualBlock if residual else plain_block
    blocks: list[nn.Module] = []
    channels = widths[0]
    for stage, (width, count) in enumerate(zip(widths, blocks_per_stage, strict=True)):
        for i in range(count):
            blocks.append(make(channels, width, 2 if stage > 0 and i == 0 else 1))
            channels = width
    return nn.Sequential(OrderedDict(
        stem=nn.Sequential(*conv_bn_relu(in_channels, widths[0]), *([nn.MaxPool2d(2)] if stem_pool else [])),
        blocks=nn.Sequential(*blocks),
        head=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)),
    ))


def deep_cnn(depth: int = 20, residual: bool = True, widths: tuple[int, int, int] = (16, 32, 64),
             in_channels: int = 1, num_classes: int = 10) -> nn.Sequential:
    """Return He et al.'s ``depth``-layer CIFAR network (``depth = 6n + 2``), with or without skips.

    Three stages of n blocks (see :func:`resnet`); 20 layers: a stem convolution, 18 convolutions in
    9 blocks, and the linear layer.
    """
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth must be 6n + 2 with n >= 1 (8, 14, 20, 32, ...), got {depth}")
    n = (depth - 2) // 6
    return resnet(widths, (n, n, n), residual, in_channels, num_classes)


def gradient_norms_by_block(blocks: nn.Sequential, head: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """Return ``[||dL/d(input of blocks[i])||_2 for each block i]`` for ``L = cross_entropy(head(blocks(x)), y)``.

    ``x``: the first block's input (N, ...); ``y``: (N,) class indices; the norm is over the whole
    batch's gradient tensor. The modules are used in the mode they are in; their parameters' ``.grad``
    is left untouched (``torch.autograd.grad``).
    """
    inputs = []
    h = x.detach().requires_grad_(True)
    for block in blocks:
        inputs.append(h)
        h = block(h)
    loss = F.cross_entropy(head(h), y)
    grads = torch.autograd.grad(loss, inputs)
    return [g.norm().item() for g in grads]
