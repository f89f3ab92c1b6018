"""Semi-supervised learning: a few labels, many unlabelled images.

- :func:`labelled_subset`: pick ``per_class`` labelled examples of each class (seeded).
- :func:`pseudo_labels`: the model's own confident predictions as labels (a threshold on the top
  softmax probability).
- :func:`consistency_loss`: FixMatch's unlabelled loss (Sohn et al., 2020): pseudo-labels from a weakly
  augmented view are the targets for a strongly augmented view of the same images.
- :func:`weak_augment`, :func:`strong_augment`: the two augmentations, built from
  :mod:`dlbook.augment` (chapter 3) plus :func:`random_cutout` and :func:`random_contrast`.
- :func:`fit_semi_supervised`: one training loop for supervised-only, pseudo-labelling and FixMatch.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import augment
from .devices import device as default_device
from .train import History, LivePlot

METHODS = ("supervised", "pseudo_label", "fixmatch")


def _check_logits(name: str, logits: torch.Tensor) -> None:
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or not logits.is_floating_point():
        shape = tuple(logits.shape) if hasattr(logits, "shape") else type(logits).__name__
        raise ValueError(f"expected {name} to be a float tensor of shape (N, C), got {shape}")


def _check_threshold(threshold: float) -> None:
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"expected a confidence threshold in [0, 1], got {threshold}")


def labelled_subset(labels: np.ndarray | torch.Tensor, per_class: int, seed: int = 0) -> np.ndarray:
    """Return the sorted indices of ``per_class`` randomly chosen examples of every class in ``labels`` (N,).

    The same draw as chapter 7's :func:`dlbook.transfer.few_per_class` (the labelled images; the rest
    of the training set is the unlabelled pool).
    """
    from .transfer import few_per_class

    return few_per_class(np.asarray(labels), per_class, seed)


def pseudo_labels(logits: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(mask, labels)``: which predictions are confident, and the predicted classes.

    Args:
        logits: (N, C) a model's outputs (no gradient is kept).
        threshold: tau in [0, 1].

    Returns:
        mask: (N,) bool, True where the largest softmax probability is ``>= threshold``.
        labels: (N,) int64, the arg max class of every row (confident or not).
    """
    _check_logits("logits", logits)
    _check_threshold(threshold)
    confidence, labels = torch.softmax(logits.detach(), dim=1).max(dim=1)
    return confidence >= threshold, labels


def consistency_loss(weak_logits: torch.Tensor, strong_logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """Return FixMatch's unlabelled loss, a scalar: ``mean_n mask_n * CE(strong_logits_n, label_n)``.

    ``mask, label = pseudo_labels(weak_logits, threshold)``; the mean runs over all N rows (rows below
    the threshold count as 0), and no gradient flows into ``weak_logits``.

    Args:
        weak_logits: (N, C) outputs on weakly augmented images; strong_logits: (N, C) on strongly
        augmented views of the same images.
    """
    _check_logits("strong_logits", strong_logits)
    if not isinstance(weak_logits, torch.Tensor) or weak_logits.shape != strong_logits.shape:
        shape = tuple(weak_logits.shape) if hasattr(weak_logits, "shape") else type(weak_logits).__name__
        raise ValueError(f"expected weak_logits of the same shape as strong_logits {tuple(strong_logits.shape)}, "
                         f"got {shape}")
    mask, labels = pseudo_labels(weak_logits, threshold)
    per_example = F.cross_entropy(strong_logits, labels, reduction="none")
    return (per_example * mask.to(per_example.dtype)).mean()


def random_cutout(x: torch.Tensor, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Return ``x`` (N, C, H, W) with a ``size`` x ``size`` square at a random centre of each image set to 0.

    Squares may reach over the border (DeVries and Taylor, 2017); ``size`` 0 returns ``x`` unchanged.
    """
    augment._check_images(x)
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    n, _, h, w = x.shape
    if size == 0:
        return x.clone()
    cy = torch.randint(0, h, (n,), generator=generator).to(x.device).view(n, 1, 1)
    cx = torch.randint(0, w, (n,), generator=generator).to(x.device).view(n, 1, 1)
    top, left = cy - size // 2, cx - size // 2
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    square = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
    return x.masked_fill(square.unsqueeze(1), 0.0)


def random_contrast(x: torch.Tensor, low: float = 0.5, high: float = 1.5,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Return ``x`` (N, C, H, W) with each image's contrast about its mean scaled by a factor in [low, high],
    clipped to [0, 1]."""
    augment._check_images(x)
    if not 0.0 <= low <= high:
        raise ValueError(f"expected 0 <= low <= high, got low={low}, high={high}")
    factor = (low + (high - low) * torch.rand(x.shape[0], 1, 1, 1, generator=generator)).to(x.device, x.dtype)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * factor + mean).clamp(0.0, 1.0)


def weak_augment(x: torch.Tensor, generator: torch.Generator | None = None, max_shift: int = 1,
                 flip_p: float = 0.5) -> torch.Tensor:
    """Return a weakly augmented copy of ``x`` (N, C, H, W): a shift of at most ``max_shift`` pixels and a flip."""
    return augment.augment_batch(x, max_shift=max_shift, flip_p=flip_p, max_degrees=0.0, generator=generator)


def strong_augment(x: torch.Tensor, generator: torch.Generator | None = None, max_shift: int = 2,
                   flip_p: float = 0.5, max_degrees: float = 30.0, cutout: int = 5) -> torch.Tensor:
    """Return a strongly augmented copy of ``x`` (N, C, H, W): rotation, shift, flip, contrast, cutout."""
    x = augment.augment_batch(x, max_shift=max_shift, flip_p=flip_p, max_degrees=max_degrees, generator=generator)
    return random_cutout(random_contrast(x, generator=generator), cutout, generator)


@torch.no_grad()
def accuracy(model: nn.Module, X: torch.Tensor, y: torch.Tensor, batch_size: int = 2000) -> float:
    """Return the accuracy of classifier ``model`` on ``X`` (N, ...) with labels ``y`` (N,), in eval mode."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    correct = 0
    for start in range(0, len(X), batch_size):
        out = model(X[start:start + batch_size].to(dev))
        correct += int((out.argmax(dim=1).cpu() == y[start:start + batch_size]).sum())
    model.train(was_training)
    return correct / len(X)


def fit_semi_supervised(
    model: nn.Module,
    X_labelled: torch.Tensor,
    y_labelled: torch.Tensor,
    X_unlabelled: torch.Tensor | None = None,
    *,
    method: str = "fixmatch",
    steps: int,
    threshold: float = 0.95,
    unlabelled_weight: float = 1.0,
    batch_size: int = 64,
    unlabelled_ratio: int = 3,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    eval_every: int = 100,
    seed: int = 0,
    device: torch.device | None = None,
    live: bool = True,
    title: str = "",
    weak: Callable[..., torch.Tensor] = weak_augment,
    strong: Callable[..., torch.Tensor] = strong_augment,
) -> History:
    """Train ``model`` with Adam for ``steps`` steps; return its history.

    Every step draws ``batch_size`` labelled images (weakly augmented, cross-entropy) and, unless
    ``method`` is ``"supervised"``, ``unlabelled_ratio * batch_size`` unlabelled ones. The model labels
    them in eval mode on a weak view (:func:`pseudo_labels`); ``"pseudo_label"`` trains on that same
    weak view, ``"fixmatch"`` on a strong view (:func:`consistency_loss`). Loss:
    ``CE(labelled) + unlabelled_weight * unlabelled loss``. ``weak(x, generator)`` and
    ``strong(x, generator)`` are the two augmentations.

    History (one point per ``eval_every`` steps): ``train_loss``, ``mask_rate`` (the fraction of
    unlabelled images above the threshold), ``val_accuracy`` when ``val = (X, y)`` is given; ``seconds``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if len(X_labelled) != len(y_labelled) or len(X_labelled) == 0:
        raise ValueError(f"expected as many labelled images as labels (at least 1), got {len(X_labelled)} and "
                         f"{len(y_labelled)}")
    if method != "supervised" and (X_unlabelled is None or len(X_unlabelled) == 0):
        raise ValueError(f"method {method!r} needs unlabelled images, got none")
    _check_threshold(threshold)
    device = device or default_device()
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    plot = LivePlot(["loss", "accuracy", "rate"], title=title, enabled=live)
    start = time.perf_counter()
    losses, masks = [], []
    with tqdm(total=steps, desc=title or method, leave=True) as bar:
        for step in range(1, steps + 1):
            i = torch.randint(0, len(X_labelled), (batch_size,), generator=gen)
            xb = weak(X_labelled[i], gen).to(device)
            yb = y_labelled[i].to(device)
            if method == "supervised":
                loss = F.cross_entropy(model(xb), yb)
            else:
                j = torch.randint(0, len(X_unlabelled), (batch_size * unlabelled_ratio,), generator=gen)
                xu = X_unlabelled[j]
                xw = weak(xu, gen).to(device)
                # the targets come from the model in eval mode (no dropout), and carry no gradient
                model.eval()
                with torch.no_grad():
                    weak_logits = model(xw)
                model.train()
                xs = xw if method == "pseudo_label" else strong(xu, gen).to(device)
                out = model(torch.cat([xb, xs]))
                unlabelled = consistency_loss(weak_logits, out[batch_size:], threshold)
                loss = F.cross_entropy(out[:batch_size], yb) + unlabelled_weight * unlabelled
                masks.append(pseudo_labels(weak_logits, threshold)[0].float().mean().item())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            bar.update(1)
            if step % eval_every == 0 or step == steps:
                metrics = {"train_loss": float(np.mean(losses))}
                if masks:
                    metrics["mask_rate"] = float(np.mean(masks))
                if val is not None:
                    metrics["val_accuracy"] = accuracy(model, *val)
                losses, masks = [], []
                bar.set_postfix({k: f"{v:.3f}" for k, v in metrics.items()})
                plot.update(metrics)
    history = plot.close()
    history["seconds"] = [time.perf_counter() - start]
    return history
