"""Where a classifier goes wrong: the confusion matrix and its most-confused pairs.

- :func:`confusion_matrix`: counts of (true class, predicted class), computed with ``torch.bincount``.
- :func:`most_confused`: the off-diagonal cells of a confusion matrix, largest first.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int) -> np.ndarray:
    """Return the (num_classes, num_classes) int64 matrix whose entry [t, p] counts true t predicted as p.

    ``y_true``, ``y_pred``: integer labels of shape (N,) in ``[0, num_classes)`` (arrays or tensors).
    """
    t = torch.as_tensor(np.asarray(y_true)).long().reshape(-1)
    p = torch.as_tensor(np.asarray(y_pred)).long().reshape(-1)
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.numel()} labels but y_pred has {p.numel()}; expected the same number")
    for name, v in (("y_true", t), ("y_pred", p)):
        if v.numel() and (v.min() < 0 or v.max() >= num_classes):
            raise ValueError(f"{name} must hold labels in [0, {num_classes}), got range [{v.min()}, {v.max()}]")
    counts = torch.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).numpy().astype(np.int64)


def most_confused(matrix: np.ndarray, k: int = 5) -> list[tuple[int, int, int]]:
    """Return up to ``k`` largest non-zero off-diagonal entries as ``(true class, predicted class, count)``."""
    m = np.asarray(matrix)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"expected a square confusion matrix, got shape {m.shape}")
    off = m.astype(np.int64).copy()
    np.fill_diagonal(off, -1)
    order = np.argsort(-off, axis=None, kind="stable")[:k]
    pairs = [(int(i), int(j), int(off[i, j])) for i, j in zip(*np.unravel_index(order, off.shape), strict=True)]
    return [p for p in pairs if p[2] > 0]
