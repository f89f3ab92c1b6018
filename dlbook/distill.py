"""Knowledge distillation: the soft-target loss (Hinton et al., 2015) and a training loop for it."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .devices import device as default_device
from .train import History, fit


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 4.0,
    alpha: float = 0.5,
) -> torch.Tensor:
    """Return the scalar distillation loss, averaged over the batch.

    ``alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, labels)``

    Args:
        student_logits: (N, C); teacher_logits: (N, C) (no gradient flows into them); labels: (N,) int64.
        temperature: T > 0; alpha in [0, 1].
    """
    if student_logits.ndim != 2 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"expected student and teacher logits of the same shape (N, C), got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    if labels.shape != student_logits.shape[:1]:
        raise ValueError(f"expected labels of shape ({student_logits.shape[0]},), got {tuple(labels.shape)}")
    if temperature <= 0 or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"expected temperature > 0 and 0 <= alpha <= 1, got {temperature}, {alpha}")
    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits.detach() / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    hard = F.cross_entropy(student_logits, labels)
    return alpha * temperature**2 * soft + (1.0 - alpha) * hard


def fit_distill(
    student: nn.Module,
    teacher: nn.Module,
    train_loader: Iterable,
    *,
    epochs: int,
    optimizer: torch.optim.Optimizer,
    temperature: float = 4.0,
    alpha: float = 0.5,
    val_loader: Iterable | None = None,
    device: torch.device | None = None,
    live: bool = True,
    title: str = "distillation",
) -> History:
    """Train ``student`` on :func:`distillation_loss` against a frozen ``teacher``; return its history.

    :func:`dlbook.train.fit` with the distillation loss: one progress bar, one plot point per epoch
    (``train_loss``, ``train_accuracy``, and ``val_loss``/``val_accuracy`` with plain cross-entropy),
    ``seconds``.
    """
    device = device or default_device()
    teacher.to(device).eval()

    def loss(student_logits: torch.Tensor, labels: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = teacher(inputs)
        return distillation_loss(student_logits, teacher_logits, labels, temperature, alpha)

    return fit(student, train_loader, epochs=epochs, optimizer=optimizer, train_loss=loss, val_loader=val_loader,
               device=device, live=live, title=title)
