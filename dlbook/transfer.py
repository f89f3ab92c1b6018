"""Transfer learning: a small CNN with a separable backbone and head, resizing, few-label subsets.

The chapter pretrains :class:`SmallCNN` on Fashion-MNIST, then fine-tunes it on scikit-learn's
digits. Both are brought to the same 16x16 grey-scale format with :func:`resize_images`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class SmallCNN(nn.Module):
    """A two-block CNN for 1x16x16 images: ``backbone`` (features) then ``head`` (a linear classifier).

    Shape: input (N, 1, 16, 16) -> features (N, 2 * width * 16) -> logits (N, classes).
    """

    def __init__(self, width: int = 16, classes: int = 10):
        super().__init__()
        if width < 1 or classes < 1:
            raise ValueError(f"expected width >= 1 and classes >= 1, got width={width}, classes={classes}")
        self.backbone = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 16x16 -> 8x8
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 8x8 -> 4x4
            nn.Flatten(),
        )  # fmt: skip
        self.head = nn.Linear(2 * width * 16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, 16, 16):
            raise ValueError(f"expected x of shape (N, 1, 16, 16), got {tuple(x.shape)}")
        return self.head(self.backbone(x))


def freeze_backbone(model: nn.Module, head: str = "head") -> list[str]:
    """Return the names of the parameters left trainable after freezing all but submodule ``head``.

    Every parameter outside ``model.<head>`` gets ``requires_grad = False``; those inside get True.
    Names are as in ``model.named_parameters()``, in that order.
    """
    if not isinstance(getattr(model, head, None), nn.Module):
        raise ValueError(f"model has no submodule named {head!r}")
    model.requires_grad_(False)
    getattr(model, head).requires_grad_(True)
    return [name for name, p in model.named_parameters() if p.requires_grad]


def resize_images(images: np.ndarray | torch.Tensor, size: int = 16) -> torch.Tensor:
    """Return float32 images (N, 1, size, size) in [0, 1] from (N, H, W) or (N, H*W) square images.

    uint8 input is divided by 255; float input is taken as already in [0, 1]. Shrinking uses area
    averaging, enlarging bilinear interpolation (``F.interpolate``).
    """
    # a copy: arrays read from files may be read-only, which torch.as_tensor warns about
    x = images.detach().clone() if isinstance(images, torch.Tensor) else torch.from_numpy(np.array(images))
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    x = x.float()
    if x.ndim == 2:
        side = int(round(x.shape[1] ** 0.5))
        if side * side != x.shape[1]:
            raise ValueError(f"expected flat square images (N, H*W), got {tuple(x.shape)}")
        x = x.reshape(-1, side, side)
    if x.ndim != 3:
        raise ValueError(f"expected images of shape (N, H, W) or (N, H*W), got {tuple(x.shape)}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    x = x[:, None]
    if x.shape[-1] > size:
        return F.interpolate(x, size=(size, size), mode="area")
    if x.shape[-1] < size:
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0.0, 1.0)
    return x.clone()


def few_per_class(labels: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """Return sorted indices of ``per_class`` randomly chosen examples of each class in ``labels``.

    Raises if a class has fewer than ``per_class`` examples.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"expected labels of shape (N,), got {labels.shape}")
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < per_class:
            raise ValueError(f"class {c} has only {len(idx)} examples, fewer than per_class={per_class}")
        chosen.append(rng.choice(idx, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen))
