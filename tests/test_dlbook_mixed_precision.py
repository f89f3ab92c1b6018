"""dlbook.mixed_precision: rounding against the bfloat16 format's definition, loss scaling against GradScaler."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dlbook import mixed_precision as mp

FINITE32 = st.floats(-(2.0**100), 2.0**100, allow_nan=False, allow_infinity=False, width=32)


def _bits(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32).view(np.uint32)


@settings(max_examples=80, deadline=None)
@given(hnp.arrays(np.float32, hnp.array_shapes(max_dims=3, max_side=5), elements=FINITE32))
def test_round_to_bfloat16_is_the_nearest_bfloat16(x):
    r = mp.round_to_bfloat16(x)
    assert r.dtype == np.float32 and r.shape == x.shape
    assert (_bits(r) & 0xFFFF == 0).all(), "a bfloat16 is a float32 whose low 16 bits are zero"
    # the two bfloat16 neighbours of x: truncate, and truncate + one unit in the last place
    low = (_bits(x) & 0xFFFF0000).view(np.float32)
    high = ((_bits(x) & 0xFFFF0000) + 0x10000).view(np.float32)
    err = np.abs(r.astype(np.float64) - x)
    best = np.minimum(np.abs(low.astype(np.float64) - x), np.abs(high.astype(np.float64) - x))
    assert (err <= best).all()
    np.testing.assert_array_equal(mp.round_to_bfloat16(r), r)  # idempotent


def test_round_to_bfloat16_ties_to_even_and_specials():
    one_ulp = 2.0**-7  # bfloat16 spacing just above 1
    x = np.array([1 + one_ulp / 2, 1 + 3 * one_ulp / 2, -(1 + one_ulp / 2), 0.0, -0.0, np.inf, 3.0e38],
                 dtype=np.float32)
    r = mp.round_to_bfloat16(x)
    np.testing.assert_array_equal(r[:5], np.array([1.0, 1 + 2 * one_ulp, -1.0, 0.0, -0.0], dtype=np.float32))
    assert np.signbit(r[4]) and r[5] == np.inf and np.isfinite(r[6])
    assert np.isnan(mp.round_to_bfloat16(np.array([np.nan], dtype=np.float32))).all()
    assert mp.round_to_bfloat16(torch.tensor([2.0])).tolist() == [2.0]


def test_autocast_dtype():
    assert mp.autocast_dtype("cpu") == torch.bfloat16
    assert mp.autocast_dtype(torch.device("mps")) == torch.float16
    with pytest.raises(ValueError):
        mp.autocast_dtype("meta")


def _model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("growth_interval", [1, 3])
def test_loss_scaled_step_matches_grad_scaler(seed, growth_interval):
    gen = torch.Generator().manual_seed(seed)
    ours, ref = _model(seed), _model(seed)
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.1, momentum=0.9)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=growth_interval)
    scale, good = 2.0**10, 0
    for step in range(8):
        x, y = torch.randn(4, 5, generator=gen), torch.randint(0, 3, (4,), generator=gen)
        blow_up = 1e36 if step in (2, 5) else 1.0  # overflows float32 once scaled: the step is skipped
        opt_ours.zero_grad()
        stepped, scale, good = mp.loss_scaled_step(F.cross_entropy(ours(x), y) * blow_up, opt_ours, scale, good,
                                                   growth_interval=growth_interval)
        opt_ref.zero_grad()
        scaler.scale(F.cross_entropy(ref(x), y) * blow_up).backward()
        scaler.step(opt_ref)
        scaler.update()
        assert stepped == (step not in (2, 5))
        assert scale == scaler.get_scale()
        assert good == int(scaler._get_growth_tracker())
        for p, q in zip(ours.parameters(), ref.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
            if stepped:
                torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-7)


def test_loss_scaled_step_unscales_and_rejects_bad_scale():
    model = _model(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    x, y = torch.randn(3, 5), torch.tensor([0, 1, 2])
    F.cross_entropy(model(x), y).backward()
    plain = [p.grad.clone() for p in model.parameters()]
    opt.zero_grad()
    stepped, scale, good = mp.loss_scaled_step(F.cross_entropy(model(x), y), opt, 2.0**16, 0)
    assert (stepped, scale, good) == (True, 2.0**16, 1)
    for p, g in zip(model.parameters(), plain, strict=True):
        torch.testing.assert_close(p.grad, g)
    with pytest.raises(ValueError):
        mp.loss_scaled_step(F.cross_entropy(model(x), y), opt, 0.0, 0)
