"""Batch normalisation forward and backward, computed by PyTorch (chapter 2).

In training mode a batch ``x (N, D)`` is normalised with its own per-feature mean and (biased)
variance, then scaled and shifted: ``out = gamma * (x - mean) / sqrt(var + eps) + beta``; the
running statistics move towards the batch ones, ``running = (1 - momentum) * running + momentum *
batch`` (the running variance uses the *unbiased* batch variance, as ``nn.BatchNorm1d`` does). In
eval mode the running statistics are used instead. Arrays in, arrays out (float64 NumPy).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ._convert import float64_tensor as _t


def _check(x: np.ndarray, gamma: np.ndarray) -> None:
    x, gamma = np.asarray(x), np.asarray(gamma)
    if x.ndim != 2:
        raise ValueError(f"expected x of shape (N, D), got {x.shape}")
    if gamma.shape != (x.shape[1],):
        raise ValueError(f"expected gamma of shape ({x.shape[1]},) for x of shape {x.shape}, got {gamma.shape}")


def batchnorm_forward(
    x: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    running_mean: np.ndarray,
    running_var: np.ndarray,
    training: bool,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> np.ndarray:
    """Return the batch-normalised ``x``: (N, D); in training mode update the running stats in place.

    ``gamma``, ``beta``, ``running_mean``, ``running_var``: (D,). Computed by ``F.batch_norm``.
    Training mode needs N > 1 (the variance of one example is undefined), as in PyTorch.
    """
    _check(x, gamma)
    if training and np.asarray(x).shape[0] < 2:
        raise ValueError(f"batch norm in training mode needs more than 1 example per feature, got x {np.shape(x)}")
    rm, rv = _t(running_mean), _t(running_var)
    out = F.batch_norm(_t(x), rm, rv, _t(gamma), _t(beta), training=training, momentum=momentum, eps=eps)
    if training:
        running_mean[...] = rm.numpy()
        running_var[...] = rv.numpy()
    return out.numpy()


def batchnorm_backward(dout: np.ndarray, x: np.ndarray, gamma: np.ndarray,
                       eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(dx, dgamma, dbeta)`` of training-mode batch norm: (N, D), (D,), (D,); by torch.autograd."""
    _check(x, gamma)
    if np.shape(dout) != np.shape(x):
        raise ValueError(f"dout has shape {np.shape(dout)}, expected the shape of x {np.shape(x)}")
    xt, gt, bt = _t(x, True), _t(gamma, True), _t(np.zeros_like(gamma), True)
    out = F.batch_norm(xt, None, None, gt, bt, training=True, eps=eps)
    dx, dg, db = torch.autograd.grad(out, (xt, gt, bt), grad_outputs=_t(dout))
    return dx.numpy(), dg.numpy(), db.numpy()
