"""Plotting helpers: image grids, learning curves and computation graphs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np


def show_images(
    images: Any,
    labels: Sequence[Any] | None = None,
    ncols: int = 10,
    class_names: Sequence[str] | None = None,
    size: float = 1.2,
    cmap: str = "gray",
) -> plt.Figure:
    """Return a figure showing ``images`` in a grid, titled with their labels.

    ``images``: (N, H, W) or (N, H*W) for square images, or (N, C, H, W) with C in {1, 3}.
    """
    arr = _image_grid_array(images)
    n = len(arr)
    if n == 0:
        raise ValueError("show_images() got no images; expected at least one")
    if labels is not None and len(labels) < n:
        raise ValueError(f"got {n} images but only {len(labels)} labels")
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + 0.3 * (labels is not None)))
    for i, ax in enumerate(np.atleast_1d(axes).ravel()):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(arr[i], cmap=cmap)
        if labels is not None:
            label = labels[i]
            if class_names is not None:
                label = class_names[int(label)]
            ax.set_title(str(label), fontsize=8)
    # A fixed layout, not fig.tight_layout(): that measures every axis's text and took 1.6 s for 100 images;
    # the grid is regular, so the space for an 8-point title (about 0.25 in) above each row is known.
    title_in = 0.25 if labels is not None else 0.0
    height = fig.get_figheight()
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02 / height * size, top=1 - (title_in + 0.02) / height,
                        wspace=0.05, hspace=(title_in + 0.05) / size)
    return fig


def _image_grid_array(images: Any) -> np.ndarray:
    """``images`` as (N, H, W) or (N, H, W, 3) float32, or a ValueError that says what was expected."""
    arr = np.asarray(images.detach().cpu() if hasattr(images, "detach") else images, dtype=np.float32)
    if arr.ndim == 2:
        side = int(round(np.sqrt(arr.shape[1])))
        if side * side != arr.shape[1]:
            raise ValueError(f"expected flat square images (N, H*W), got {arr.shape}")
        arr = arr.reshape(-1, side, side)
    if arr.ndim == 4:
        if arr.shape[1] not in (1, 3):
            raise ValueError(f"expected (N, C, H, W) with C = 1 or 3 channels, got {arr.shape}")
        arr = arr[:, 0] if arr.shape[1] == 1 else arr.transpose(0, 2, 3, 1)
    if arr.ndim not in (3, 4):
        raise ValueError(f"expected images of shape (N, H, W) or (N, C, H, W), got {arr.shape}")
    return arr


def plot_history(histories: dict[str, dict[str, list[float]]], metric: str = "val_accuracy",
                 ax: plt.Axes | None = None) -> plt.Axes:
    """Return an axis with one learning curve per run: ``{"run name": history, ...}``."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    for name, history in histories.items():
        if metric not in history:
            raise KeyError(f"run {name!r} has no {metric!r}; it has {sorted(history)}")
        values = history[metric]
        ax.plot(range(1, len(values) + 1), values, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend()
    return ax


def _graph_layers(root: Any) -> list[list[Any]]:
    """Return nodes grouped by their distance from the inputs (leaves in layer 0)."""
    depth: dict[int, int] = {}
    nodes: dict[int, Any] = {}

    def visit(v: Any) -> int:
        if id(v) in depth:
            return depth[id(v)]
        nodes[id(v)] = v
        d = 0 if not v._prev else 1 + max(visit(c) for c in v._prev)
        depth[id(v)] = d
        return d

    visit(root)
    layers: list[list[Any]] = [[] for _ in range(max(depth.values()) + 1)]
    for key, d in depth.items():
        layers[d].append(nodes[key])
    return layers


def draw_graph(root: Any, ax: plt.Axes | None = None) -> plt.Axes:
    """Return an axis drawing the computation graph that ends in ``root``, inputs on the left.

    Works with any node that has ``data``, ``grad``, ``_prev`` and ``_op`` (and optionally
    ``label``): the learner's ``Value`` and ``dlbook.autograd.Value`` alike. Each box shows the
    node's label, data and grad; the operation that made a node is written on its incoming edges.
    """
    layers = _graph_layers(root)
    pos: dict[int, tuple[float, float]] = {}
    for x, layer in enumerate(layers):
        layer.sort(key=lambda v: (getattr(v, "label", ""), v.data))
        for i, v in enumerate(layer):
            pos[id(v)] = (x * 3.0, (len(layer) - 1) / 2.0 - i)
    if ax is None:
        height = max(2.5, 1.1 * max(len(layer) for layer in layers))
        _, ax = plt.subplots(figsize=(3 + 2.6 * len(layers), height))
    for layer in layers:
        for v in layer:
            x1, y1 = pos[id(v)]
            for child in v._prev:
                x0, y0 = pos[id(child)]
                ax.annotate("", xy=(x1 - 0.9, y1), xytext=(x0 + 0.9, y0),
                            arrowprops=dict(arrowstyle="->", color="0.5"))
            label = getattr(v, "label", "") or ""
            text = f"{label + ' | ' if label else ''}data {v.data:.4g}\ngrad {v.grad:.4g}"
            ax.text(x1, y1, text, ha="center", va="center", fontsize=8,
                    bbox=dict(boxstyle="round", fc="#e8f0fe" if v._prev else "#fef7e0", ec="0.4"))
            if v._op:
                ax.text(x1 - 1.25, y1 + 0.22, v._op, ha="center", fontsize=9, color="#b3261e")
    xs = [p[0] for p in pos.values()]
    ys = [p[1] for p in pos.values()]
    ax.set_xlim(min(xs) - 1.3, max(xs) + 1.3)
    ax.set_ylim(min(ys) - 0.8, max(ys) + 0.8)
    ax.axis("off")
    return ax
