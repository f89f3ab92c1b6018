"""dlbook.quantize: affine int8 against torch's quantized tensors, model quantization, size, latency."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from dlbook import quantize as qz


def _torch_quantize(x, scale, zp):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantized tensors are deprecated, still the ground truth here
        return torch.quantize_per_tensor(x, scale, zp, torch.qint8).int_repr()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shape", [(1,), (5,), (3, 4), (2, 3, 4, 5)])
@pytest.mark.parametrize("scale,zp", [(0.02, 0), (0.1, -20), (0.005, 100), (1.0, -128)])
def test_quantize_tensor_matches_torch(seed, shape, scale, zp):
    x = 2 * torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    q = qz.quantize_tensor(x, scale, zp)
    assert q.dtype == torch.int8 and q.shape == x.shape
    torch.testing.assert_close(q, _torch_quantize(x, scale, zp))
    deq = qz.dequantize_tensor(q, scale, zp)
    assert deq.dtype == torch.float32
    inside = (x / scale + zp > -128) & (x / scale + zp < 127)
    assert bool(((deq - x).abs()[inside] <= scale / 2 + 1e-6).all())


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("offset", [-3.0, 0.0, 2.0])
def test_choose_qparams_matches_formula_and_roundtrip(seed, offset):
    x = torch.randn(50, generator=torch.Generator().manual_seed(seed)) + offset
    scale, zp = qz.choose_qparams(x)
    lo, hi = min(x.min().item(), 0.0), max(x.max().item(), 0.0)
    assert scale == pytest.approx((hi - lo) / 255, rel=1e-5)
    assert zp == max(-128, min(127, -128 - round(lo / scale)))
    err = (qz.dequantize_tensor(qz.quantize_tensor(x, scale, zp), scale, zp) - x).abs().max().item()
    assert err <= scale / 2 + 1e-6
    # zero is exactly representable
    assert qz.dequantize_tensor(qz.quantize_tensor(torch.zeros(1), scale, zp), scale, zp).item() == 0.0


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.01, 100.0))
def test_quantize_roundtrip_error_is_at_most_half_a_step(seed, spread):
    x = spread * torch.randn(30, generator=torch.Generator().manual_seed(seed))
    scale, zp = qz.choose_qparams(x)
    err = (qz.dequantize_tensor(qz.quantize_tensor(x, scale, zp), scale, zp) - x).abs().max().item()
    assert err <= scale / 2 * (1 + 1e-4) + 1e-7


def test_bad_input():
    with pytest.raises(ValueError, match="scale"):
        qz.quantize_tensor(torch.zeros(2), 0.0, 0)
    with pytest.raises(ValueError, match="zero_point"):
        qz.quantize_tensor(torch.zeros(2), 0.1, 200)
    with pytest.raises(TypeError, match="integer"):
        qz.dequantize_tensor(torch.zeros(2), 0.1, 0)
    with pytest.raises(ValueError, match="non-empty"):
        qz.choose_qparams(torch.zeros(0))


def test_quantize_int8_shrinks_model_and_keeps_outputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(196, 256), nn.ReLU(), nn.Linear(256, 10))
    x = torch.randn(64, 196)
    qmodel = qz.quantize_int8(model)
    assert qz.int8_backend() in ("torchao", "torch.ao")
    assert isinstance(model[0].weight, nn.Parameter) and model[0].weight.dtype == torch.float32  # unchanged
    ratio = qz.model_size_bytes(qmodel) / qz.model_size_bytes(model)
    assert ratio < 1 / 3.5
    with torch.no_grad():
        ref, out = model(x), qmodel(x)
    assert (out - ref).abs().max().item() < 0.05
    assert (out.argmax(1) == ref.argmax(1)).float().mean().item() > 0.95
    assert qz.cpu_latency(qmodel, x, repeats=3) > 0
    with pytest.raises(ValueError):
        qz.cpu_latency(model, x, repeats=0)
