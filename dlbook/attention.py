"""Attention: scaled dot-product attention, causal masks, multi-head attention, a tiny Transformer LM.

Every function calls PyTorch's own op (``F.scaled_dot_product_attention``,
``F.multi_head_attention_forward``, ``nn.TransformerEncoderLayer``); inputs may be NumPy arrays or
tensors. Mask convention, as in ``F.scaled_dot_product_attention``: a boolean ``mask[i, j]`` is True
where query ``i`` **may** attend to key ``j``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._convert import as_tensor as _t


def causal_mask(T: int, device: torch.device | None = None) -> torch.Tensor:
    """Return a bool (T, T) mask, True on and below the diagonal: position ``i`` sees ``j <= i``."""
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()


def scaled_dot_product_attention(q: Any, k: Any, v: Any, mask: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(out, weights)``: ``softmax(q k^T / sqrt(d) masked) v`` and the attention weights.

    Args:
        q: (..., Tq, d) queries; k: (..., Tk, d) keys; v: (..., Tk, dv) values;
        mask: bool (Tq, Tk) (or broadcastable to (..., Tq, Tk)), True where attending is allowed.

    Returns:
        out: (..., Tq, dv) and weights: (..., Tq, Tk), each row of weights summing to 1.
    """
    q, k, v = _t(q), _t(k), _t(v)
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"expected q (..., Tq, d), k (..., Tk, d), v (..., Tk, dv); got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    mask = None if mask is None else _t(mask).to(torch.bool)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    # The weights are the output for values = the identity matrix: row i of weights @ I is row i.
    eye = torch.eye(k.shape[-2], dtype=q.dtype, device=q.device).expand(*k.shape[:-1], k.shape[-2])
    weights = F.scaled_dot_product_attention(q, k, eye, attn_mask=mask)
    return out, weights


def multi_head_attention(x: Any, W_in: Any, b_in: Any, W_out: Any, b_out: Any, num_heads: int,
                         causal: bool = False) -> torch.Tensor:
    """Return multi-head self-attention of ``x`` (N, T, E), shape (N, T, E), as ``nn.MultiheadAttention``.

    Args:
        x: (N, T, E); W_in: (3E, E) stacked query, key, value projections; b_in: (3E,);
        W_out: (E, E); b_out: (E,); num_heads divides E; causal: position i attends to j <= i only.
    """
    x, W_in, b_in, W_out, b_out = (_t(a) for a in (x, W_in, b_in, W_out, b_out))
    if x.ndim != 3:
        raise ValueError(f"expected x of shape (N, T, E), got {tuple(x.shape)}")
    N, T, E = x.shape
    if E % num_heads:
        raise ValueError(f"num_heads={num_heads} must divide the embedding size E={E}")
    # nn.MultiheadAttention's bool mask is the opposite of ours: True marks a *forbidden* pair.
    blocked = ~causal_mask(T, device=x.device) if causal else None
    seq_first = x.transpose(0, 1)
    out, _ = F.multi_head_attention_forward(
        seq_first, seq_first, seq_first, E, num_heads, W_in, b_in, None, None, False, 0.0,
        W_out, b_out, training=False, need_weights=False, attn_mask=blocked)
    return out.transpose(0, 1)


class TinyTransformerLM(nn.Module):
    """A decoder-only Transformer language model: token + position embeddings, causal blocks, read-out.

    ``forward(ids (N, T)) -> logits (N, T, V)``, for T at most ``max_len``. Pre-norm blocks from
    ``nn.TransformerEncoderLayer`` with a causal mask. ``attention_maps(ids)`` returns every layer's
    attention weights (layers, N, heads, T, T).
    """

    def __init__(self, vocab_size: int, max_len: int = 32, d_model: int = 64, heads: int = 4, layers: int = 2,
                 dropout: float = 0.0):
        super().__init__()
        self.max_len = max_len
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(max_len, d_model)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(d_model, heads, 4 * d_model, dropout, activation="gelu", batch_first=True,
                                       norm_first=True)
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.ndim != 2:
            raise ValueError(f"expected ids of shape (N, T), got {tuple(ids.shape)}")
        if ids.shape[1] > self.max_len:
            raise ValueError(f"sequence length {ids.shape[1]} exceeds max_len={self.max_len}")
        positions = torch.arange(ids.shape[1], device=ids.device)
        return self.tok(ids) + self.pos(positions)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Return logits (N, T, V) for the next token at every position of ``ids`` (N, T)."""
        h = self._embed(ids)
        blocked = ~causal_mask(ids.shape[1], device=ids.device)
        for block in self.blocks:
            h = block(h, src_mask=blocked)
        return self.head(self.norm(h))

    @torch.no_grad()
    def attention_maps(self, ids: torch.Tensor) -> torch.Tensor:
        """Return the attention weights of every layer and head, (layers, N, heads, T, T)."""
        h = self._embed(ids)
        blocked = ~causal_mask(ids.shape[1], device=ids.device)
        maps = []
        for block in self.blocks:
            a = block.norm1(h)
            _, w = block.self_attn(a, a, a, attn_mask=blocked, need_weights=True, average_attn_weights=False)
            maps.append(w)
            h = block(h, src_mask=blocked)
        return torch.stack(maps)
