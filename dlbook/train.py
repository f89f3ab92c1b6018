"""A training loop with a progress bar and a live loss/accuracy plot.

In a notebook the progress bar is a widget (tqdm.auto) and the plot redraws after every epoch; in a
terminal or a log the same loop prints one line per epoch. Both return the metrics history.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .devices import device as default_device

History = dict[str, list[float]]


def in_notebook() -> bool:
    """Return True inside a Jupyter kernel (where plots and widgets can be displayed)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


class LivePlot:
    """Learning curves that redraw in place in a notebook, or print a line per update elsewhere.

    >>> live = LivePlot(["loss", "accuracy"])
    >>> live.update({"train_loss": 0.9, "val_loss": 1.0, "train_accuracy": 0.7})
    >>> live.close()

    Each metric ``m`` in ``panels`` gets one panel with every history key ending in ``m``
    (``train_loss`` and ``val_loss`` share the "loss" panel).
    """

    def __init__(self, panels: Iterable[str] = ("loss", "accuracy"), title: str = "", enabled: bool = True):
        self.panels = list(panels)
        self.title = title
        self.history: History = {}
        self.notebook = enabled and in_notebook()
        self._handle = None
        self._fig = None

    def update(self, metrics: dict[str, float]) -> None:
        """Append one point per metric and redraw (or print)."""
        for key, value in metrics.items():
            self.history.setdefault(key, []).append(float(value))
        if self.notebook:
            self._draw()
        else:
            step = max(len(v) for v in self.history.values())
            parts = [f"{k}={v:.4g}" for k, v in metrics.items()]
            print(f"{self.title + ' ' if self.title else ''}[{step}] " + "  ".join(parts), flush=True)

    def _draw(self) -> None:
        import matplotlib.pyplot as plt
        from IPython.display import display

        if self._fig is None:
            self._fig, axes = plt.subplots(1, len(self.panels), figsize=(5 * len(self.panels), 3.2))
            self._axes = np.atleast_1d(axes)
            plt.close(self._fig)  # shown through the display handle only, never twice
        for ax, panel in zip(self._axes, self.panels, strict=True):
            ax.clear()
            for key, values in self.history.items():
                if key.endswith(panel):
                    ax.plot(range(1, len(values) + 1), values, marker="o", ms=3, label=key)
            ax.set_xlabel("epoch")
            ax.set_title(panel)
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend()
        if self.title:
            self._fig.suptitle(self.title)
        self._fig.tight_layout()
        if self._handle is None:
            self._handle = display(self._fig, display_id=True)
        else:
            self._handle.update(self._fig)

    def close(self) -> History:
        """Close the figure and return the history.

        What was drawn stays in the notebook's output; the figure behind it is released, and a later
        :meth:`update` starts a new one.
        """
        if self._fig is not None:
            import matplotlib.pyplot as plt

            plt.close(self._fig)
            self._fig, self._axes, self._handle = None, None, None
        return self.history


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Return the number of parameters (tensor entries) of ``model``; only those with ``requires_grad`` if asked."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def make_loader(
    X: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    batch_size: int = 64,
    shuffle: bool = True,
    seed: int = 0,
) -> torch.utils.data.DataLoader:
    """Return a DataLoader over ``(X, y)``; shuffling is seeded, so epochs repeat across runs."""
    X = torch.as_tensor(X)
    y = torch.as_tensor(y)
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows but y has {y.shape[0]}; expected the same number")
    if X.dtype == torch.float64:
        X = X.float()
    generator = torch.Generator().manual_seed(seed)
    dataset = torch.utils.data.TensorDataset(X, y)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loader: Iterable,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
    device: torch.device | None = None,
) -> tuple[float, float]:
    """Return ``(mean loss, accuracy)`` of a classifier ``model`` over ``loader``."""
    device = device or default_device()
    was_training = model.training
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    for xb, yb in loader:
        xb, yb = xb.to(device), yb.to(device)
        out = model(xb)
        total_loss += loss_fn(out, yb).item() * len(yb)
        correct += int((out.argmax(dim=1) == yb).sum())
        count += len(yb)
    model.train(was_training)
    if count == 0:
        raise ValueError("evaluate() got an empty loader")
    return total_loss / count, correct / count


def fit(
    model: torch.nn.Module,
    train_loader: Iterable,
    *,
    epochs: int,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
    train_loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    val_loader: Iterable | None = None,
    scheduler: Any = None,
    device: torch.device | None = None,
    live: bool = True,
    title: str = "",
) -> History:
    """Train a classifier; return its history ``{"train_loss": [...], "val_accuracy": [...], ...}``.

    One progress bar over all batches, one plot point per epoch (train loss and accuracy, and
    validation loss and accuracy when ``val_loader`` is given), and ``seconds`` since the start.
    ``scheduler.step()`` runs once per epoch (ReduceLROnPlateau gets the validation loss).

    ``loss_fn(logits, labels)`` is the loss; ``train_loss(logits, labels, inputs)``, when given, is
    the training loss instead, for losses that also need the batch's inputs (distillation asks a
    teacher about them). Validation always uses ``loss_fn``.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if len(train_loader) == 0:  # type: ignore[arg-type]
        raise ValueError("fit() got an empty train_loader; expected at least one batch")
    device = device or default_device()
    model.to(device)
    plot = LivePlot(["loss", "accuracy"], title=title, enabled=live)
    start = time.perf_counter()
    steps = epochs * len(train_loader)  # type: ignore[arg-type]
    with tqdm(total=steps, desc=title or "training", leave=True) as bar:
        for _epoch in range(1, epochs + 1):
            model.train()
            total_loss, correct, count = 0.0, 0, 0
            for xb, yb in train_loader:
                xb, yb = xb.to(device), yb.to(device)
                optimizer.zero_grad(set_to_none=True)
                out = model(xb)
                loss = loss_fn(out, yb) if train_loss is None else train_loss(out, yb, xb)
                loss.backward()
                optimizer.step()
                total_loss += loss.item() * len(yb)
                correct += int((out.argmax(dim=1) == yb).sum())
                count += len(yb)
                bar.update(1)
            metrics = {"train_loss": total_loss / count, "train_accuracy": correct / count}
            if val_loader is not None:
                metrics["val_loss"], metrics["val_accuracy"] = evaluate(model, val_loader, loss_fn, device)
            if scheduler is not None:
                if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    scheduler.step(metrics.get("val_loss", metrics["train_loss"]))
                else:
                    scheduler.step()
            bar.set_postfix({k: f"{v:.3f}" for k, v in metrics.items()})
            plot.update(metrics)
    history = plot.close()
    history["seconds"] = [time.perf_counter() - start]
    return history
