"""Chapter 1 references: derivatives and reverse-mode autodiff, computed by torch.autograd.

These are what the hidden tests compare a learner's from-scratch code with, and what later cells
of chapter 1 use so that a wrong answer never cascades. They are deliberately *not* the
from-scratch answers: each one asks PyTorch for the derivative.

- :func:`derivative`, :func:`gradient`: exact derivatives of functions written with operators.
- :func:`mse_gradients`: loss and gradients of linear regression with mean squared error.
- :func:`unbroadcast`, :func:`matmul_backward`, :func:`log_softmax`, :func:`softmax_cross_entropy`:
  the vectorised backward pieces.
- :class:`Value` (scalars) and :class:`Tensor` (arrays): the same interface as the engines the
  learner builds (``data``, ``grad``, ``_prev``, ``_op``, ``backward()``), backed by torch.autograd.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ._convert import float64_tensor as _t


def derivative(f: Callable[[Any], Any], x: float) -> float:
    """Return the exact derivative ``f'(x)`` of a scalar function built from operators (+, *, **, /)."""
    xt = _t(float(x), requires_grad=True)
    (g,) = torch.autograd.grad(f(xt), xt)
    return g.item()


def gradient(f: Callable[[torch.Tensor], torch.Tensor], x: np.ndarray) -> np.ndarray:
    """Return the exact gradient of scalar ``f`` at ``x`` (same shape as ``x``); ``f`` takes a torch tensor."""
    xt = _t(x, requires_grad=True)
    (g,) = torch.autograd.grad(f(xt), xt)
    return g.numpy()


def mse_gradients(X: np.ndarray, y: np.ndarray, w: np.ndarray, b: float) -> tuple[float, np.ndarray, float]:
    """Return ``(loss, dw, db)`` for ``loss = mean((X @ w + b - y) ** 2)``.

    Shapes: ``X (N, D)``, ``y (N,)``, ``w (D,)``, ``b`` scalar; ``dw (D,)``, ``db`` scalar.
    """
    Xt, yt = _t(X), _t(y)
    wt, bt = _t(w, requires_grad=True), _t(b, requires_grad=True)
    loss = ((Xt @ wt + bt - yt) ** 2).mean()
    dw, db = torch.autograd.grad(loss, (wt, bt))
    return loss.item(), dw.numpy(), db.item()


def unbroadcast(grad: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Return ``grad`` summed down to ``shape``: the gradient of an input that was broadcast to ``grad.shape``."""
    return _t(grad).sum_to_size(tuple(shape)).numpy().reshape(shape)


def matmul_backward(dout: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(da, db)`` for ``out = a @ b``; ``a (N, K)``, ``b (K, M)``, ``dout (N, M)``."""
    at, bt = _t(a, requires_grad=True), _t(b, requires_grad=True)
    da, db = torch.autograd.grad(at @ bt, (at, bt), grad_outputs=_t(dout))
    return da.numpy(), db.numpy()


def log_softmax(z: np.ndarray) -> np.ndarray:
    """Return ``log(softmax(z))`` along the last axis, computed stably; same shape as ``z``."""
    return torch.log_softmax(_t(z), dim=-1).numpy()


def softmax_cross_entropy(logits: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
    """Return ``(loss, dlogits)``: mean cross-entropy of ``logits (N, C)`` against int ``targets (N,)``."""
    lt = _t(logits, requires_grad=True)
    loss = F.cross_entropy(lt, torch.as_tensor(np.asarray(targets), dtype=torch.long))
    (dl,) = torch.autograd.grad(loss, lt)
    return loss.item(), dl.numpy()


class Value:
    """A scalar node of a computation graph, differentiated by torch.autograd.

    Same interface as the engine built in chapter 1: ``data``, ``grad``, ``_prev``, ``_op``,
    ``label``, the operators ``+ - * / **``, ``exp() log() tanh() relu()`` and ``backward()``.
    """

    def __init__(self, data: float | torch.Tensor, _children: tuple[Value, ...] = (), _op: str = "", label: str = ""):
        if isinstance(data, torch.Tensor):
            self._t = data
        else:
            self._t = torch.tensor(float(data), dtype=torch.float64, requires_grad=True)
        if not self._t.is_leaf:
            self._t.retain_grad()
        self._prev = set(_children)
        self._op = _op
        self.label = label

    @property
    def data(self) -> float:
        return float(self._t.detach())

    @data.setter
    def data(self, value: float) -> None:
        with torch.no_grad():
            self._t.fill_(float(value))

    @property
    def grad(self) -> float:
        return 0.0 if self._t.grad is None else float(self._t.grad)

    @grad.setter
    def grad(self, value: float) -> None:
        self._t.grad = torch.tensor(float(value), dtype=torch.float64)

    def _wrap(self, other: Any) -> Value:
        return other if isinstance(other, Value) else Value(other)

    def __add__(self, other: Any) -> Value:
        other = self._wrap(other)
        return Value(self._t + other._t, (self, other), "+")

    def __mul__(self, other: Any) -> Value:
        other = self._wrap(other)
        return Value(self._t * other._t, (self, other), "*")

    def __pow__(self, k: float) -> Value:
        if not isinstance(k, (int, float)):
            raise TypeError(f"Value ** k supports int/float exponents, got {type(k).__name__}")
        return Value(self._t**k, (self,), f"**{k}")

    def exp(self) -> Value:
        return Value(torch.exp(self._t), (self,), "exp")

    def log(self) -> Value:
        return Value(torch.log(self._t), (self,), "log")

    def tanh(self) -> Value:
        return Value(torch.tanh(self._t), (self,), "tanh")

    def relu(self) -> Value:
        return Value(torch.relu(self._t), (self,), "relu")

    def __neg__(self) -> Value:
        return self * -1

    def __radd__(self, other: Any) -> Value:
        return self + other

    def __sub__(self, other: Any) -> Value:
        return self + (-self._wrap(other))

    def __rsub__(self, other: Any) -> Value:
        return self._wrap(other) + (-self)

    def __rmul__(self, other: Any) -> Value:
        return self * other

    def __truediv__(self, other: Any) -> Value:
        return self * self._wrap(other) ** -1

    def __rtruediv__(self, other: Any) -> Value:
        return self._wrap(other) * self**-1

    def backward(self) -> None:
        """Fill ``grad`` of every node that this one depends on (accumulating, like the engine)."""
        self._t.backward(retain_graph=True)

    def __repr__(self) -> str:
        return f"Value(data={self.data:.4g}, grad={self.grad:.4g})"


class Tensor:
    """An array node of a computation graph, differentiated by torch.autograd (float64).

    Same interface as the vectorised engine of chapter 1: ``data`` and ``grad`` (NumPy arrays),
    ``+ * @``, ``relu() sum() mean() cross_entropy(targets)``, ``zero_grad()`` and ``backward()``.
    Updating ``p.data -= lr * p.grad`` changes the parameter in place.
    """

    def __init__(self, data: Any, _children: tuple[Tensor, ...] = (), _op: str = ""):
        if isinstance(data, torch.Tensor):
            self._t = data
            if not self._t.is_leaf:
                self._t.retain_grad()
        else:
            self._t = _t(data, requires_grad=True)
        self._prev = set(_children)
        self._op = _op

    @property
    def data(self) -> np.ndarray:
        return self._t.detach().numpy()

    @data.setter
    def data(self, value: Any) -> None:
        with torch.no_grad():
            self._t.copy_(_t(value))

    @property
    def grad(self) -> np.ndarray:
        return np.zeros(self.shape) if self._t.grad is None else self._t.grad.numpy()

    @grad.setter
    def grad(self, value: Any) -> None:
        self._t.grad = _t(value).reshape(self._t.shape)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._t.shape)

    def _wrap(self, other: Any) -> Tensor:
        return other if isinstance(other, Tensor) else Tensor(_t(other))

    def __add__(self, other: Any) -> Tensor:
        other = self._wrap(other)
        return Tensor(self._t + other._t, (self, other), "+")

    def __mul__(self, other: Any) -> Tensor:
        other = self._wrap(other)
        return Tensor(self._t * other._t, (self, other), "*")

    def __matmul__(self, other: Any) -> Tensor:
        other = self._wrap(other)
        return Tensor(self._t @ other._t, (self, other), "@")

    __radd__ = __add__
    __rmul__ = __mul__

    def relu(self) -> Tensor:
        return Tensor(torch.relu(self._t), (self,), "relu")

    def sum(self) -> Tensor:
        return Tensor(self._t.sum(), (self,), "sum")

    def mean(self) -> Tensor:
        return Tensor(self._t.mean(), (self,), "mean")

    def cross_entropy(self, targets: np.ndarray) -> Tensor:
        """Return the mean cross-entropy of these logits ``(N, C)`` against int ``targets (N,)``."""
        y = torch.as_tensor(np.asarray(targets), dtype=torch.long)
        return Tensor(F.cross_entropy(self._t, y), (self,), "cross_entropy")

    def zero_grad(self) -> None:
        self._t.grad = None

    def backward(self) -> None:
        """Fill ``grad`` of every node this scalar depends on (seeded with d self / d self = 1)."""
        if self._t.numel() != 1:
            raise ValueError(f"backward() starts from a scalar, this tensor has shape {self.shape}")
        self._t.backward(retain_graph=True)

    def __repr__(self) -> str:
        return f"Tensor(shape={self.shape}, op={self._op!r})"
