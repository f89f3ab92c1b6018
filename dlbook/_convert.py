"""What the reference implementations share: turning a learner's arguments into tensors, and checks.

Learners pass lists, numpy arrays or tensors; the references compute with PyTorch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def float64_tensor(x: Any, requires_grad: bool = False) -> torch.Tensor:
    """Return a new float64 CPU tensor holding ``x`` (array-like, or a tensor, which is detached and copied).

    For the numpy-facing references: float64 keeps the comparison with a learner's float64 numpy
    answer exact to the last digits, and a fresh leaf tensor can ask for its own gradient.
    """
    arr = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    return torch.tensor(arr, dtype=torch.float64, requires_grad=requires_grad)


def as_tensor(x: Any) -> torch.Tensor | None:
    """Return ``x`` itself if it is a tensor or None, else a float64 tensor of it.

    For the references that also take tensors: a tensor keeps its dtype, device and graph.
    """
    if x is None or isinstance(x, torch.Tensor):
        return x
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def check_gamma(gamma: float) -> None:
    """Raise ``ValueError`` unless the discount factor ``gamma`` lies in [0, 1]."""
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must lie in [0, 1], got {gamma}")
