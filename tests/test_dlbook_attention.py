"""dlbook.attention: checked against the attention formula, nn.MultiheadAttention and causality."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from dlbook import attention

SEEDS = [0, 1, 2]


def _formula(q, k, v, mask=None):
    scores = q @ k.transpose(-1, -2) / np.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    w = torch.softmax(scores, dim=-1)
    return w @ v, w


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1, 1), (2, 3, 4, 5, 2), (1, 5, 5, 3, 3), (3, 1, 7, 8, 4)])
@pytest.mark.parametrize("masked", [False, True])
def test_sdpa_matches_the_formula(seed, shape, masked):
    N, Tq, Tk, d, dv = shape
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(N, Tq, d, generator=g, dtype=torch.float64)
    k = torch.randn(N, Tk, d, generator=g, dtype=torch.float64)
    v = torch.randn(N, Tk, dv, generator=g, dtype=torch.float64)
    mask = torch.ones(Tq, Tk, dtype=torch.bool).tril(Tk - Tq) if masked else None
    out, w = attention.scaled_dot_product_attention(q.numpy(), k.numpy(), v.numpy(), mask)
    out_ref, w_ref = _formula(q, k, v, mask)
    torch.testing.assert_close(out, out_ref)
    torch.testing.assert_close(w, w_ref)


def test_sdpa_four_dimensional_and_bad_shapes():
    q = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    out, w = attention.scaled_dot_product_attention(q, q, q, attention.causal_mask(4))
    assert out.shape == (2, 3, 4, 5) and w.shape == (2, 3, 4, 4)
    assert torch.all(w.triu(1) == 0)
    with pytest.raises(ValueError, match="expected q"):
        attention.scaled_dot_product_attention(q, q[..., :3], q)


@given(st.integers(1, 9))
@settings(max_examples=20, deadline=None)
def test_causal_mask_is_lower_triangular(T):
    m = attention.causal_mask(T)
    assert m.dtype == torch.bool and m.shape == (T, T)
    assert all(bool(m[i, j]) == (j <= i) for i in range(T) for j in range(T))


def test_causal_mask_rejects_zero():
    with pytest.raises(ValueError):
        attention.causal_mask(0)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("N", "T", "E", "heads"), [(1, 1, 4, 1), (2, 5, 8, 2), (3, 4, 12, 3), (1, 6, 8, 8)])
@pytest.mark.parametrize("causal", [False, True])
def test_multi_head_attention_matches_nn(seed, N, T, E, heads, causal):
    torch.manual_seed(seed)
    mha = nn.MultiheadAttention(E, heads, batch_first=True).double()
    with torch.no_grad():
        mha.in_proj_bias.normal_()
        mha.out_proj.bias.normal_()
    x = torch.randn(N, T, E, dtype=torch.float64)
    blocked = ~attention.causal_mask(T) if causal else None
    ref, _ = mha(x, x, x, attn_mask=blocked)
    got = attention.multi_head_attention(x, mha.in_proj_weight.detach(), mha.in_proj_bias.detach(),
                                         mha.out_proj.weight.detach(), mha.out_proj.bias.detach(), heads, causal)
    torch.testing.assert_close(got, ref.detach())


def test_multi_head_attention_rejects_bad_heads():
    with pytest.raises(ValueError, match="divide"):
        attention.multi_head_attention(np.zeros((1, 2, 6)), np.zeros((18, 6)), np.zeros(18), np.zeros((6, 6)),
                                       np.zeros(6), 4)


def test_tiny_transformer_is_causal_and_maps_are_distributions():
    torch.manual_seed(0)
    model = attention.TinyTransformerLM(11, max_len=10, d_model=16, heads=2, layers=2).eval()
    ids = torch.randint(0, 11, (3, 8))
    out = model(ids)
    assert out.shape == (3, 8, 11)
    changed = ids.clone()
    changed[:, 6] = (changed[:, 6] + 1) % 11
    torch.testing.assert_close(model(changed)[:, :6], out[:, :6])
    maps = model.attention_maps(ids)
    assert maps.shape == (2, 3, 2, 8, 8)
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 3, 2, 8))
    assert torch.all(maps.triu(1) == 0)
    with pytest.raises(ValueError, match="max_len"):
        model(torch.zeros(1, 11, dtype=torch.int64))
