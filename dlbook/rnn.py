"""Recurrent networks: cells, backpropagation through time, and a character language model.

The cells follow PyTorch's conventions, so weights copy straight from ``nn.RNN``/``nn.LSTM``/``nn.GRU``:
``W_ih`` is (G*H, D) and ``W_hh`` is (G*H, H) with G gates stacked in torch's order (LSTM: i, f, g, o;
GRU: r, z, n). Every function here calls PyTorch's own op (``torch.rnn_tanh_cell``,
``torch.lstm_cell``, ``torch.gru_cell``, ``torch.autograd``); inputs may be NumPy arrays or tensors.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ._convert import as_tensor as _t


def _check_2d(name: str, x: torch.Tensor) -> None:
    if x.ndim != 2:
        raise ValueError(f"expected {name} of shape (N, features), got {tuple(x.shape)}")


def rnn_cell(x: Any, h: Any, W_ih: Any, W_hh: Any, b: Any = None) -> torch.Tensor:
    """Return the next hidden state ``tanh(x W_ih^T + h W_hh^T + b)``, shape (N, H).

    Args:
        x: (N, D) inputs; h: (N, H) previous hidden state; W_ih: (H, D); W_hh: (H, H); b: (H,) or None.
    """
    x, h, W_ih, W_hh, b = (_t(a) for a in (x, h, W_ih, W_hh, b))
    _check_2d("x", x)
    _check_2d("h", h)
    return torch.rnn_tanh_cell(x, h, W_ih, W_hh, b, None)


def rnn_forward(xs: Any, h0: Any, W_ih: Any, W_hh: Any, b: Any = None) -> torch.Tensor:
    """Return the hidden states ``hs`` (T, N, H) of a tanh RNN run over ``xs`` (T, N, D) from ``h0`` (N, H)."""
    xs = _t(xs)
    if xs.ndim != 3:
        raise ValueError(f"expected xs of shape (T, N, D), got {tuple(xs.shape)}")
    h = _t(h0)
    hs = []
    for x in xs:
        h = rnn_cell(x, h, W_ih, W_hh, b)
        hs.append(h)
    return torch.stack(hs)


def rnn_bptt(xs: Any, h0: Any, W_ih: Any, W_hh: Any, b: Any, dhs: Any) -> tuple[torch.Tensor, ...]:
    """Return ``(dxs, dh0, dW_ih, dW_hh, db)``: gradients of ``sum(hs * dhs)`` by torch.autograd.

    Args:
        xs: (T, N, D); h0: (N, H); W_ih: (H, D); W_hh: (H, H); b: (H,);
        dhs: (T, N, H) the loss gradient with respect to every hidden state ``hs[t]``.

    Returns:
        dxs (T, N, D), dh0 (N, H), dW_ih (H, D), dW_hh (H, H), db (H,).
    """
    leaves = [_t(a).detach().double().requires_grad_(True) for a in (xs, h0, W_ih, W_hh, b)]
    hs = rnn_forward(*leaves)
    dhs = _t(dhs).double()
    if dhs.shape != hs.shape:
        raise ValueError(f"expected dhs of shape {tuple(hs.shape)} (T, N, H), got {tuple(dhs.shape)}")
    return torch.autograd.grad(hs, leaves, grad_outputs=dhs)


def lstm_cell(x: Any, h: Any, c: Any, W_ih: Any, W_hh: Any, b_ih: Any = None,
              b_hh: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(h_next, c_next)``, each (N, H): one LSTM step, exactly as ``nn.LSTMCell``.

    Args:
        x: (N, D); h, c: (N, H); W_ih: (4H, D); W_hh: (4H, H); b_ih, b_hh: (4H,) or None.
        Gates are stacked in torch's order: input, forget, cell (g), output.
    """
    x, h, c, W_ih, W_hh, b_ih, b_hh = (_t(a) for a in (x, h, c, W_ih, W_hh, b_ih, b_hh))
    _check_2d("x", x)
    _check_2d("h", h)
    if W_ih.shape[0] != 4 * h.shape[1]:
        raise ValueError(f"expected W_ih with 4H = {4 * h.shape[1]} rows, got {tuple(W_ih.shape)}")
    return torch.lstm_cell(x, (h, c), W_ih, W_hh, b_ih, b_hh)


def gru_cell(x: Any, h: Any, W_ih: Any, W_hh: Any, b_ih: Any = None, b_hh: Any = None) -> torch.Tensor:
    """Return ``h_next`` (N, H): one GRU step, exactly as ``nn.GRUCell``.

    Args:
        x: (N, D); h: (N, H); W_ih: (3H, D); W_hh: (3H, H); b_ih, b_hh: (3H,) or None.
        Gates are stacked in torch's order: reset, update (z), new (n).
    """
    x, h, W_ih, W_hh, b_ih, b_hh = (_t(a) for a in (x, h, W_ih, W_hh, b_ih, b_hh))
    _check_2d("x", x)
    _check_2d("h", h)
    if W_ih.shape[0] != 3 * h.shape[1]:
        raise ValueError(f"expected W_ih with 3H = {3 * h.shape[1]} rows, got {tuple(W_ih.shape)}")
    return torch.gru_cell(x, h, W_ih, W_hh, b_ih, b_hh)


def gradient_norms_by_distance(W_hh: Any, xs: Any, h0: Any | None = None, W_ih: Any = None) -> np.ndarray:
    """Return ``norms`` (T,): ``norms[k]`` = ||dL/dh_{T-1-k}|| for a loss on the last state only.

    A tanh RNN with recurrent weights ``W_hh`` (H, H) runs over ``xs`` (T, N, D) (``W_ih`` defaults to
    the identity, so D = H); the loss gradient is a fixed unit vector on ``hs[T-1]``. ``k`` is the
    distance in time steps, so ``norms`` shows how gradients vanish or explode as they flow back.
    """
    W_hh = _t(W_hh).double()
    xs = _t(xs).double()
    T, N, _ = xs.shape
    H = W_hh.shape[0]
    W_ih = torch.eye(H, xs.shape[2], dtype=torch.float64) if W_ih is None else _t(W_ih).double()
    h = torch.zeros(N, H, dtype=torch.float64) if h0 is None else _t(h0).double()
    h = h.detach().requires_grad_(True)
    hs = []
    for x in xs:
        hs.append(h)
        h = rnn_cell(x, h, W_ih, W_hh)
    direction = torch.ones_like(h) / np.sqrt(h.numel())
    grads = torch.autograd.grad(h, hs, grad_outputs=direction)
    # grads[t] is dL/d(input state of step t) = dL/dh_{t-1}; the last one is one step away.
    return np.array([g.norm().item() for g in reversed(grads)])


class CharRNN(nn.Module):
    """A character language model: embedding, a recurrent layer, a linear read-out.

    ``forward(ids (N, T)) -> logits (N, T, V)``; ``cell`` is ``"lstm"``, ``"gru"`` or ``"rnn"``.
    """

    def __init__(self, vocab_size: int, embed: int = 32, hidden: int = 256, layers: int = 1,
                 cell: str = "lstm", dropout: float = 0.0):
        super().__init__()
        kinds = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
        if cell not in kinds:
            raise ValueError(f"cell must be one of {sorted(kinds)}, got {cell!r}")
        self.embed = nn.Embedding(vocab_size, embed)
        self.rnn = kinds[cell](embed, hidden, num_layers=layers, batch_first=True,
                               dropout=dropout if layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Return logits (N, T, V) for the next character at every position of ``ids`` (N, T)."""
        if ids.ndim != 2:
            raise ValueError(f"expected ids of shape (N, T), got {tuple(ids.shape)}")
        out, _ = self.rnn(self.embed(ids))
        return self.head(self.drop(out))
