"""Multi-task learning: one shared trunk, one head per task, and a weighted sum of the task losses.

- :func:`rotation_prediction_batch`: an auxiliary task built from unlabelled images (Gidaris et al.,
  2018): every image turned by 0, 90, 180 and 270 degrees, labelled with the number of quarter turns.
- :func:`multitask_loss`: fixed weights ``sum_k w_k L_k``, or uncertainty weighting (Kendall et al.,
  2018) ``sum_k exp(-s_k) L_k + s_k`` with learnable log-variances ``s_k = log sigma_k^2``.
- :class:`MultiTaskNet`: a trunk with a class head and a rotation head; :class:`UncertaintyWeights`
  holds the log-variances as parameters.
- :func:`fit_multitask`: the training loop (single-task, fixed weights or uncertainty weighting).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .devices import device as default_device
from .semi_supervised import accuracy, weak_augment
from .train import History, LivePlot

WEIGHTINGS = ("single_task", "fixed", "uncertainty")


def rotation_prediction_batch(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(rotated, labels)``: every image of ``x`` turned by k quarter turns, k = 0, 1, 2, 3.

    Args:
        x: (N, C, H, W) with H == W.

    Returns:
        rotated: (4N, C, H, W), ``rotated[k * N + n] = torch.rot90(x[n], k, dims=(-2, -1))`` (all images
        at k = 0, then all at k = 1, ...); labels: (4N,) int64, ``labels[k * N + n] = k``.
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[-1] != x.shape[-2]:
        shape = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
        raise ValueError(f"expected square images x of shape (N, C, H, H), got {shape}")
    n = x.shape[0]
    rotated = torch.cat([torch.rot90(x, k, dims=(-2, -1)) for k in range(4)])
    labels = torch.arange(4, device=x.device).repeat_interleave(n)
    return rotated, labels


def multitask_loss(task_losses: torch.Tensor, weights: torch.Tensor | None = None,
                   log_vars: torch.Tensor | None = None) -> torch.Tensor:
    """Return the total loss of K tasks, a scalar; give exactly one of ``weights`` and ``log_vars``.

    Args:
        task_losses: (K,) the tasks' losses L_k.
        weights: (K,) fixed weights w_k: the total is ``sum_k w_k L_k``.
        log_vars: (K,) learnable s_k = log sigma_k^2: the total is ``sum_k exp(-s_k) L_k + s_k``
            (Kendall et al., 2018). Gradients flow into both ``task_losses`` and ``log_vars``.
    """
    if not isinstance(task_losses, torch.Tensor) or task_losses.ndim != 1:
        shape = tuple(task_losses.shape) if hasattr(task_losses, "shape") else type(task_losses).__name__
        raise ValueError(f"expected task_losses of shape (K,), got {shape}")
    if (weights is None) == (log_vars is None):
        raise ValueError("expected exactly one of weights (fixed weighting) and log_vars (uncertainty weighting)")
    other = weights if weights is not None else log_vars
    if not isinstance(other, torch.Tensor) or other.shape != task_losses.shape:
        shape = tuple(other.shape) if hasattr(other, "shape") else type(other).__name__
        name = "weights" if weights is not None else "log_vars"
        raise ValueError(f"expected {name} of shape {tuple(task_losses.shape)} (one per task), got {shape}")
    if weights is not None:
        return torch.dot(weights.to(task_losses.dtype), task_losses)
    return (torch.exp(-log_vars) * task_losses + log_vars).sum()


class UncertaintyWeights(nn.Module):
    """Learnable log-variances ``log_vars`` (K,), initialised to 0 (every weight 1).

    ``forward(task_losses)`` returns :func:`multitask_loss` with them; ``weights()`` returns exp(-s_k).
    """

    def __init__(self, n_tasks: int):
        super().__init__()
        if n_tasks < 1:
            raise ValueError(f"expected n_tasks >= 1, got {n_tasks}")
        self.log_vars = nn.Parameter(torch.zeros(n_tasks))

    def forward(self, task_losses: torch.Tensor) -> torch.Tensor:
        return multitask_loss(task_losses, log_vars=self.log_vars)

    def weights(self) -> torch.Tensor:
        return torch.exp(-self.log_vars.detach())


class MultiTaskNet(nn.Module):
    """A shared ``trunk`` (images -> (N, features)) with a class head and a rotation head.

    ``forward(x)`` returns the class logits (N, n_classes), so the net is an ordinary classifier;
    ``rotation_logits(x)`` returns the auxiliary head's (N, 4).
    """

    def __init__(self, trunk: nn.Module, features: int, n_classes: int, n_rotations: int = 4):
        super().__init__()
        self.trunk = trunk
        self.class_head = nn.Linear(features, n_classes)
        self.rotation_head = nn.Linear(features, n_rotations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.class_head(self.trunk(x))

    def rotation_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.rotation_head(self.trunk(x))


def fit_multitask(
    model: MultiTaskNet,
    X_labelled: torch.Tensor,
    y_labelled: torch.Tensor,
    X_unlabelled: torch.Tensor,
    *,
    weighting: str = "fixed",
    steps: int,
    rotation_weight: float = 1.0,
    batch_size: int = 64,
    rotation_batch_size: int = 32,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    eval_every: int = 100,
    seed: int = 0,
    device: torch.device | None = None,
    live: bool = True,
    title: str = "",
    augment: Callable[..., torch.Tensor] = weak_augment,
) -> History:
    """Train ``model`` on the class task (labelled images) and rotation prediction (unlabelled ones).

    Each step: ``batch_size`` labelled images (``augment(x, generator)``) give the class loss L_1; unless
    ``weighting`` is ``"single_task"``, ``rotation_batch_size`` unlabelled images, each in 4 rotations
    (:func:`rotation_prediction_batch`), give the rotation loss L_2. ``"fixed"``: total
    ``L_1 + rotation_weight * L_2``; ``"uncertainty"``: :class:`UncertaintyWeights`, trained with the net.

    History (one point per ``eval_every`` steps): ``class_loss``, ``rotation_loss``, ``class_weight`` and
    ``rotation_weight`` (the effective weights), ``val_accuracy`` when ``val`` is given; ``seconds``.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    device = device or default_device()
    model.to(device).train()
    uncertainty = UncertaintyWeights(2).to(device)
    groups = [{"params": list(model.parameters())}]
    if weighting == "uncertainty":  # no weight decay on the log-variances: it would pull every weight to 1
        groups.append({"params": list(uncertainty.parameters()), "weight_decay": 0.0})
    optimizer = torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
    fixed = torch.tensor([1.0, rotation_weight], device=device)
    gen = torch.Generator().manual_seed(seed)
    plot = LivePlot(["loss", "weight", "accuracy"], title=title, enabled=live)
    start = time.perf_counter()
    log: dict[str, list[float]] = {"class_loss": [], "rotation_loss": []}
    with tqdm(total=steps, desc=title or weighting, leave=True) as bar:
        for step in range(1, steps + 1):
            i = torch.randint(0, len(X_labelled), (batch_size,), generator=gen)
            xb = augment(X_labelled[i], gen).to(device)
            class_loss = F.cross_entropy(model(xb), y_labelled[i].to(device))
            if weighting == "single_task":
                loss, rotation_loss = class_loss, torch.zeros(())
            else:
                j = torch.randint(0, len(X_unlabelled), (rotation_batch_size,), generator=gen)
                xr, yr = rotation_prediction_batch(X_unlabelled[j].to(device))
                rotation_loss = F.cross_entropy(model.rotation_logits(xr), yr)
                losses = torch.stack([class_loss, rotation_loss])
                loss = uncertainty(losses) if weighting == "uncertainty" else multitask_loss(losses, weights=fixed)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            log["class_loss"].append(class_loss.item())
            log["rotation_loss"].append(rotation_loss.item())
            bar.update(1)
            if step % eval_every == 0 or step == steps:
                w = uncertainty.weights().cpu() if weighting == "uncertainty" else fixed.cpu()
                metrics = {k: float(np.mean(v)) for k, v in log.items()}
                metrics["class_weight"] = float(w[0])
                metrics["rotation_weight"] = 0.0 if weighting == "single_task" else float(w[1])
                if val is not None:
                    metrics["val_accuracy"] = accuracy(model, *val)
                log = {k: [] for k in log}
                bar.set_postfix({k: f"{v:.3f}" for k, v in metrics.items()})
                plot.update(metrics)
    history = plot.close()
    history["seconds"] = [time.perf_counter() - start]
    return history
