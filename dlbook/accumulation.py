"""Gradient accumulation: one large batch, processed as several micro-batches.

:func:`micro_batches` cuts a batch into micro-batches (the last one may be smaller);
:func:`full_batch_gradients` is what accumulating them must reproduce: the gradient of the mean
loss over the whole batch, computed by one forward and one backward pass over all of it
(``torch.autograd.grad``, leaving every ``.grad`` untouched).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def micro_batches(x: torch.Tensor, y: torch.Tensor, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Return ``[(x_0, y_0), (x_1, y_1), ...]``: consecutive slices of ``size`` examples (the last may be smaller).

    Args:
        x: (N, ...) inputs; y: (N, ...) targets, the same N.
        size: examples per micro-batch, a positive int.
    """
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if x.shape[:1] != y.shape[:1] or x.dim() == 0:
        raise ValueError(f"expected x and y with the same first dimension N, got {tuple(x.shape)} and {tuple(y.shape)}")
    return list(zip(torch.split(x, size), torch.split(y, size), strict=True))


def full_batch_gradients(
    model: torch.nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[float, list[torch.Tensor | None]]:
    """Return ``(loss, grads)`` of the mean loss over all examples of ``batches``, in one pass.

    Args:
        model: maps inputs (n, ...) to outputs; loss_fn(output, target) returns the *mean* loss of a batch.
        batches: a non-empty list of ``(x, y)`` pairs, concatenated along dimension 0.

    Returns:
        ``loss`` as a Python float and one gradient per ``model.parameters()`` entry, in that order:
        ``None`` for a parameter that does not require grad or that the loss does not depend on.
        No ``.grad`` attribute is changed.
    """
    if not batches:
        raise ValueError("expected at least one (x, y) micro-batch, got none")
    x = torch.cat([xb for xb, _ in batches])
    y = torch.cat([yb for _, yb in batches])
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    loss = loss_fn(model(x), y)
    if loss.dim() != 0:
        raise ValueError(f"loss_fn should return a scalar (the mean loss), got shape {tuple(loss.shape)}")
    grads = iter(torch.autograd.grad(loss, trainable, allow_unused=True))
    return loss.item(), [next(grads) if p.requires_grad else None for p in params]
