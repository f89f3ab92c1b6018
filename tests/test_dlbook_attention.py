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


def _check_causal_lm(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """A 2-layer, 2-head LM of 11 tokens and max_len 10: logits (3, 8, 11) that position 6 changes only from 6 on,
    attention maps that are causal distributions, and a clear error past max_len. Returns (ids, logits)."""
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
    return ids, out


def test_tiny_transformer_is_causal_and_maps_are_distributions():
    torch.manual_seed(0)
    _check_causal_lm(attention.TinyTransformerLM(11, max_len=10, d_model=16, heads=2, layers=2).eval())


# ----------------------------------------------------------------------------- part 4: positions, blocks, the LM


def _paper_positions(T, d, base=10000.0):
    pe = np.zeros((T, d))
    for pos in range(T):
        for j in range(d):
            angle = pos / base ** (2 * (j // 2) / d)
            pe[pos, j] = np.sin(angle) if j % 2 == 0 else np.cos(angle)
    return pe


@pytest.mark.parametrize(("T", "d", "base"), [(1, 1, 1e4), (5, 4, 1e4), (7, 9, 1e4), (50, 16, 1e4), (3, 6, 10.0)])
def test_sinusoidal_positions_matches_the_paper(T, d, base):
    pe = attention.sinusoidal_positions(T, d, base)
    assert pe.dtype == torch.float64 and pe.shape == (T, d)
    np.testing.assert_allclose(pe.numpy(), _paper_positions(T, d, base), atol=1e-12, rtol=0)


@given(st.integers(1, 40), st.integers(1, 10), st.integers(0, 30))
@settings(max_examples=40, deadline=None)
def test_sinusoidal_positions_shift_is_a_rotation(T, half, k):
    # Each (sin, cos) pair at pos + k is the pair at pos rotated by an angle that depends on k only.
    d = 2 * half
    pe = attention.sinusoidal_positions(T + k, d).numpy()
    np.testing.assert_allclose(pe[:, 0::2] ** 2 + pe[:, 1::2] ** 2, np.ones((T + k, half)), atol=1e-12)
    freqs = 1.0 / 10000.0 ** (np.arange(half) * 2 / d)
    c, s = np.cos(k * freqs), np.sin(k * freqs)
    sin, cos = pe[:T, 0::2], pe[:T, 1::2]
    np.testing.assert_allclose(pe[k:, 0::2], sin * c + cos * s, atol=1e-9)
    np.testing.assert_allclose(pe[k:, 1::2], cos * c - sin * s, atol=1e-9)


def test_sinusoidal_positions_rejects_bad_sizes():
    with pytest.raises(ValueError, match="T >= 1"):
        attention.sinusoidal_positions(0, 4)


def _torch_pre_norm_block(block, x):
    """The same block written with nn.TransformerEncoderLayer (norm_first, GELU, causal mask), same weights."""
    E = x.shape[-1]
    layer = nn.TransformerEncoderLayer(E, block.num_heads, block.mlp[0].out_features, dropout=0.0,
                                       activation="gelu", batch_first=True, norm_first=True).double().eval()
    layer.norm1.load_state_dict(block.ln1.state_dict())
    layer.norm2.load_state_dict(block.ln2.state_dict())
    layer.self_attn.load_state_dict(block.attn.state_dict())
    layer.linear1.load_state_dict(block.mlp[0].state_dict())
    layer.linear2.load_state_dict(block.mlp[2].state_dict())
    return layer(x, src_mask=~attention.causal_mask(x.shape[1]))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("N", "T", "E", "heads"), [(1, 1, 4, 1), (2, 5, 8, 2), (3, 7, 12, 3), (1, 6, 6, 6)])
def test_decoder_block_matches_torch_encoder_layer(seed, N, T, E, heads):
    torch.manual_seed(seed)
    block = attention.DecoderBlock(E, heads).double()
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.5)
    x = torch.randn(N, T, E, dtype=torch.float64, requires_grad=True)
    got = block(x)
    x_ref = x.detach().clone().requires_grad_(True)
    ref = _torch_pre_norm_block(block, x_ref)
    torch.testing.assert_close(got, ref.detach())
    # Gradients flow through every parameter and the input, equal to the torch layer's.
    (got * torch.arange(got.numel(), dtype=torch.float64).reshape(got.shape).cos()).sum().backward()
    (ref * torch.arange(ref.numel(), dtype=torch.float64).reshape(ref.shape).cos()).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    assert all(p.grad is not None for p in block.parameters())


def test_decoder_block_is_causal_and_weights_are_distributions():
    torch.manual_seed(0)
    block = attention.DecoderBlock(8, 2).double()
    x = torch.randn(2, 6, 8, dtype=torch.float64)
    out = block(x)
    changed = x.clone()
    changed[:, 4] += 1.0
    torch.testing.assert_close(block(changed)[:, :4], out[:, :4])
    w = block.attention_weights(x)
    assert w.shape == (2, 2, 6, 6)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 2, 6, dtype=torch.float64))
    assert torch.all(w.triu(1) == 0)
    with pytest.raises(ValueError, match="divide"):
        attention.DecoderBlock(6, 4)


def test_transformer_lm_is_causal_uses_block_forward_and_maps():
    torch.manual_seed(0)
    model = attention.TransformerLM(11, max_len=10, d_model=16, heads=2, layers=2).eval()
    ids, out = _check_causal_lm(model)
    torch.testing.assert_close(model.pos, attention.sinusoidal_positions(10, 16).float())
    calls = []

    def block_forward(x, block):
        calls.append(block)
        return block(x)

    model.block_forward = block_forward
    torch.testing.assert_close(model(ids), out)
    assert calls == list(model.blocks)
