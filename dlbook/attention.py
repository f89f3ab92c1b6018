"""Attention: scaled dot-product attention, causal masks, multi-head attention, Transformer LMs.

Every function calls PyTorch's own op (``F.scaled_dot_product_attention``,
``F.multi_head_attention_forward``, ``nn.TransformerEncoderLayer``, ``F.layer_norm``); inputs may be
NumPy arrays or tensors. Part 4 of chapter 4 adds :func:`sinusoidal_positions`, a pre-norm
:class:`DecoderBlock` whose forward pass the learner writes, and :class:`TransformerLM` built from them.

Mask convention, as in ``F.scaled_dot_product_attention``: a boolean ``mask[i, j]`` is True
where query ``i`` **may** attend to key ``j``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
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


def sinusoidal_positions(T: int, d: int, base: float = 10000.0) -> torch.Tensor:
    """Return the sinusoidal position encoding of Vaswani et al. (2017), float64 (T, d).

    ``pe[pos, 2i] = sin(pos / base^(2i/d))`` and ``pe[pos, 2i + 1] = cos(pos / base^(2i/d))``; for an
    odd ``d`` the last column is a sine.
    """
    if T < 1 or d < 1 or not base > 0:
        raise ValueError(f"expected T >= 1, d >= 1 and base > 0, got T={T}, d={d}, base={base}")
    pos = torch.arange(T, dtype=torch.float64)[:, None]
    two_i = (torch.arange(d) // 2 * 2).to(torch.float64)
    angle = pos / torch.pow(torch.tensor(float(base), dtype=torch.float64), two_i / d)
    return torch.where(torch.arange(d) % 2 == 0, torch.sin(angle), torch.cos(angle))


class DecoderBlock(nn.Module):
    """A pre-norm Transformer decoder block (GPT-2's layout), its parameters in named parts.

    ``forward(x (N, T, E)) -> (N, T, E)``::

        x = x + causal multi-head self-attention(ln1(x))    # attention.multi_head_attention
        x = x + mlp(ln2(x))                                  # Linear(E, 4E), GELU, Linear(4E, E)

    Parts: ``ln1``, ``ln2`` (``nn.LayerNorm(E)``), ``attn`` (an ``nn.MultiheadAttention`` holding
    ``in_proj_weight`` (3E, E), ``in_proj_bias`` (3E,), ``out_proj.weight`` (E, E) and ``out_proj.bias``
    (E,); its own forward is called only by :meth:`attention_weights`), ``mlp``
    (``nn.Sequential(Linear, GELU, Linear)``) and ``num_heads``.
    """

    def __init__(self, d_model: int, num_heads: int, mlp_ratio: int = 4):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide d_model={d_model}")
        self.num_heads = num_heads
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = nn.MultiheadAttention(d_model, num_heads, batch_first=True)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, mlp_ratio * d_model), nn.GELU(),
                                 nn.Linear(mlp_ratio * d_model, d_model))

    def attend(self, h: torch.Tensor) -> torch.Tensor:
        """Return causal multi-head self-attention of ``h`` (N, T, E) with this block's weights."""
        a = self.attn
        return multi_head_attention(h, a.in_proj_weight, a.in_proj_bias, a.out_proj.weight, a.out_proj.bias,
                                    self.num_heads, causal=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the block's output (N, T, E) for ``x`` (N, T, E)."""
        x = x + self.attend(self.ln1(x))
        return x + self.mlp(self.ln2(x))

    @torch.no_grad()
    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Return the causal attention weights of every head for the block's input ``x``, (N, heads, T, T)."""
        h = self.ln1(x)
        blocked = ~causal_mask(x.shape[1], device=x.device)
        _, w = self.attn(h, h, h, attn_mask=blocked, need_weights=True, average_attn_weights=False)
        return w


BlockForward = Callable[[torch.Tensor, DecoderBlock], torch.Tensor]


class TransformerLM(nn.Module):
    """A decoder-only Transformer language model built from :class:`DecoderBlock` s.

    ``forward(ids (N, T)) -> logits (N, T, V)`` for T at most ``max_len``: token embedding plus the
    fixed :func:`sinusoidal_positions`, ``layers`` blocks, a final LayerNorm and a linear read-out.
    ``block_forward(x, block)``, if given, computes each block instead of ``block(x)`` (the learner's
    own forward pass, with the same parameters). ``attention_maps(ids)``: (layers, N, heads, T, T).
    """

    def __init__(self, vocab_size: int, max_len: int = 128, d_model: int = 128, heads: int = 4, layers: int = 2,
                 block_forward: BlockForward | None = None):
        super().__init__()
        self.max_len = max_len
        self.block_forward = block_forward
        self.tok = nn.Embedding(vocab_size, d_model)
        self.register_buffer("pos", sinusoidal_positions(max_len, d_model).float(), persistent=False)
        self.blocks = nn.ModuleList(DecoderBlock(d_model, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)
        # GPT-2's initialisation (small weights, residual outputs scaled down), except the token embedding,
        # which keeps nn.Embedding's N(0, 1): the fixed sinusoids have amplitude 1 and must not drown it.
        for name, p in self.named_parameters():
            if name == "tok.weight":
                continue
            if p.ndim == 2:
                std = 0.02 / math.sqrt(2 * layers) if name.endswith(("out_proj.weight", "mlp.2.weight")) else 0.02
                nn.init.normal_(p, std=std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.ndim != 2:
            raise ValueError(f"expected ids of shape (N, T), got {tuple(ids.shape)}")
        if ids.shape[1] > self.max_len:
            raise ValueError(f"sequence length {ids.shape[1]} exceeds max_len={self.max_len}")
        return self.tok(ids) + self.pos[: ids.shape[1]]

    def _block(self, h: torch.Tensor, block: DecoderBlock) -> torch.Tensor:
        return block(h) if self.block_forward is None else self.block_forward(h, block)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Return logits (N, T, V) for the next token at every position of ``ids`` (N, T)."""
        h = self._embed(ids)
        for block in self.blocks:
            h = self._block(h, block)
        return self.head(self.norm(h))

    @torch.no_grad()
    def attention_maps(self, ids: torch.Tensor) -> torch.Tensor:
        """Return the attention weights of every layer and head, (layers, N, heads, T, T)."""
        h = self._embed(ids)
        maps = []
        for block in self.blocks:
            maps.append(block.attention_weights(h))
            h = self._block(h, block)
        return torch.stack(maps)
