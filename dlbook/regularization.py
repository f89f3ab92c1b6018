"""Regularisation: dropout, the L2 penalty, and early stopping (chapter 2).

- :func:`dropout`: inverted dropout by ``F.dropout`` (NumPy in, NumPy out).
- :func:`l2_penalty`: ``sum of squared weights``, the term that "L2 regularisation" adds to a loss.
- :class:`EarlyStopping`: stop when the validation loss has not improved for ``patience`` epochs,
  keeping a copy of the best model's weights to restore.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F


def dropout(x: np.ndarray, p: float, training: bool, seed: int = 0) -> np.ndarray:
    """Return inverted dropout of ``x`` (any shape): each entry zeroed with probability ``p``, survivors / (1 - p).

    In eval mode (``training=False``) ``x`` comes back unchanged. The mask is drawn by torch from
    ``seed``.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability p must be in [0, 1], got {p}")
    xt = torch.tensor(np.asarray(x, dtype=np.float64))
    if not training:
        return xt.numpy()
    torch_gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return F.dropout(xt, p=p, training=True).numpy()
    finally:
        torch.random.set_rng_state(torch_gen_state)


def l2_penalty(params: Iterable[torch.Tensor]) -> torch.Tensor:
    """Return ``sum_i ||w_i||^2`` over ``params`` (a scalar tensor that back-propagates)."""
    terms = [(p * p).sum() for p in params]
    if not terms:
        raise ValueError("l2_penalty() got no parameters")
    return torch.stack(terms).sum()


class EarlyStopping:
    """Tracks the validation loss; ``step(loss, model)`` returns True when training should stop.

    An epoch *improves* when its loss is below ``best - min_delta``; then the model's weights are
    copied (``best_state``). After ``patience`` epochs in a row without improvement, ``step``
    returns True. ``restore(model)`` loads the best weights back.
    """

    def __init__(self, patience: int = 3, min_delta: float = 0.0):
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        self.patience, self.min_delta = patience, min_delta
        self.best = float("inf")
        self.best_epoch = -1
        self.best_state: dict | None = None
        self.bad_epochs = 0
        self.epoch = -1

    def step(self, val_loss: float, model: torch.nn.Module) -> bool:
        """Return True when ``patience`` epochs have passed without improvement."""
        self.epoch += 1
        if val_loss < self.best - self.min_delta:
            self.best, self.best_epoch, self.bad_epochs = float(val_loss), self.epoch, 0
            self.best_state = copy.deepcopy(model.state_dict())
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.patience

    def restore(self, model: torch.nn.Module) -> torch.nn.Module:
        """Return ``model`` with the best weights seen so far loaded back."""
        if self.best_state is None:
            raise RuntimeError("EarlyStopping.restore() before any step(): no weights were saved")
        model.load_state_dict(self.best_state)
        return model
