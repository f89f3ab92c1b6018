"""Optimizers, learning-rate schedules and gradient clipping, as PyTorch provides them (chapter 2).

These are the references the chapter's from-scratch optimizers are compared with:

- :func:`make_optimizer`: ``torch.optim`` optimizer by name ("sgd", "momentum", "adagrad",
  "rmsprop", "adam", "adamw").
- :func:`trajectory`: run any optimizer with the ``step()``/``zero_grad()`` interface on a given
  loss and return the parameters after every step, to compare two optimizers step for step.
- :func:`lr_schedule`: the learning rate per epoch of a ``torch.optim.lr_scheduler`` schedule.
- :func:`clip_grad_norm`: ``torch.nn.utils.clip_grad_norm_``, returning a float.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

OPTIMIZERS = ("sgd", "momentum", "adagrad", "rmsprop", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine", "plateau")


def make_optimizer(name: str, params: Iterable[torch.Tensor], lr: float, **hparams: Any) -> torch.optim.Optimizer:
    """Return the ``torch.optim`` optimizer called ``name`` over ``params`` with learning rate ``lr``.

    "momentum" is SGD with ``momentum=0.9`` unless given. Other keyword arguments go to the
    optimizer (``betas``, ``weight_decay``, ``alpha``, ...).
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {OPTIMIZERS}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    params = list(params)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, **hparams)
    if name == "momentum":
        return torch.optim.SGD(params, lr=lr, **{"momentum": 0.9, **hparams})
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, **hparams)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, **hparams)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, **hparams)
    return torch.optim.AdamW(params, lr=lr, **hparams)


def trajectory(
    make: Callable[[list[torch.Tensor]], Any],
    start: Sequence[torch.Tensor],
    loss_fn: Callable[[list[torch.Tensor]], torch.Tensor],
    steps: int,
) -> list[list[torch.Tensor]]:
    """Return the parameters after each of ``steps`` optimizer steps: ``steps`` lists of detached copies.

    ``make(params)`` builds the optimizer (anything with ``step()`` and ``zero_grad()``) over fresh
    leaf copies of ``start``; each step computes ``loss_fn(params)``, back-propagates and steps.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    params = [p.detach().clone().requires_grad_(True) for p in start]
    opt = make(params)
    out = []
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(params).backward()
        opt.step()
        out.append([p.detach().clone() for p in params])
    return out


def lr_schedule(name: str, lr: float, epochs: int, val_losses: Sequence[float] | None = None,
                **hparams: Any) -> list[float]:
    """Return the learning rate used in each of ``epochs`` epochs under schedule ``name``.

    - "constant": ``lr`` throughout;
    - "step": ``StepLR`` (``step_size`` epochs, default epochs // 3; ``gamma``, default 0.1);
    - "cosine": ``CosineAnnealingLR`` (``T_max=epochs``, ``eta_min`` default 0);
    - "plateau": ``ReduceLROnPlateau`` fed ``val_losses`` (one per epoch; ``factor`` default 0.1,
      ``patience`` default 2).
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; expected one of {SCHEDULES}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched: Any = None
    if name == "step":
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=hparams.get("step_size", max(1, epochs // 3)),
                                                gamma=hparams.get("gamma", 0.1))
    elif name == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=hparams.get("eta_min", 0.0))
    elif name == "plateau":
        if val_losses is None or len(val_losses) < epochs:
            raise ValueError(f"the plateau schedule needs val_losses with {epochs} values, one per epoch")
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=hparams.get("factor", 0.1),
                                                           patience=hparams.get("patience", 2))
    lrs = []
    for epoch in range(epochs):
        lrs.append(opt.param_groups[0]["lr"])
        if name == "plateau":
            sched.step(val_losses[epoch])
        elif sched is not None:
            opt.step()  # keeps PyTorch from warning that the scheduler stepped first
            sched.step()
    return lrs


def clip_grad_norm(params: Iterable[torch.Tensor], max_norm: float) -> float:
    """Return the total gradient 2-norm of ``params`` before clipping; scales their ``.grad`` in place.

    If the norm exceeds ``max_norm`` every gradient is multiplied by ``max_norm / (norm + 1e-6)``;
    parameters whose ``.grad`` is None are skipped (``torch.nn.utils.clip_grad_norm_``).
    """
    if not max_norm > 0:
        raise ValueError(f"max_norm must be positive, got {max_norm}")
    params = [p for p in params if p.grad is not None]
    if not params:
        return 0.0
    return torch.nn.utils.clip_grad_norm_(params, max_norm).item()
