"""dlbook.init: standard deviations, drawn weights and the signal statistics they produce."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from dlbook import init


@pytest.mark.parametrize(("fan_in", "fan_out"), [(1, 1), (784, 256), (10, 1000)])
def test_init_std_closed_forms(fan_in, fan_out):
    assert init.init_std(fan_in, fan_out, "naive") == 1.0
    assert init.init_std(fan_in, fan_out, "lecun") == pytest.approx(1 / math.sqrt(fan_in))
    assert init.init_std(fan_in, fan_out, "xavier") == pytest.approx(math.sqrt(2 / (fan_in + fan_out)))
    assert init.init_std(fan_in, fan_out, "he") == pytest.approx(math.sqrt(2 / fan_in))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("scheme", init.SCHEMES)
@pytest.mark.parametrize(("fan_in", "fan_out"), [(800, 300), (300, 800)])
def test_init_weight_has_the_right_shape_and_spread(seed, scheme, fan_in, fan_out):
    w = init.init_weight(fan_in, fan_out, scheme, torch.Generator().manual_seed(seed))
    assert w.shape == (fan_out, fan_in) and w.dtype == torch.float32
    std = init.init_std(fan_in, fan_out, scheme)
    assert abs(w.mean().item()) < 6 * std / math.sqrt(w.numel())
    assert w.std().item() == pytest.approx(std, rel=0.02)


def test_init_weight_agrees_with_torch_nn_init_defaults():
    # torch's own kaiming/xavier normal with the same generator give the same numbers
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    ours = init.init_weight(50, 40, "xavier", g1)
    theirs = nn.init.xavier_normal_(torch.empty(40, 50), generator=g2)
    torch.testing.assert_close(ours, theirs)


def test_init_weight_is_seeded():
    a = init.init_weight(20, 10, "he", torch.Generator().manual_seed(1))
    b = init.init_weight(20, 10, "he", torch.Generator().manual_seed(1))
    c = init.init_weight(20, 10, "he", torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("bad", [("magic", 3, 3), ("he", 0, 3), ("he", 3, -1), ("he", 2.5, 3)])
def test_bad_arguments_raise(bad):
    scheme, fan_in, fan_out = bad
    with pytest.raises(ValueError, match="expected|positive int"):
        init.init_weight(fan_in, fan_out, scheme)


def test_init_linear_redraws_every_linear_and_zeroes_biases():
    model = nn.Sequential(nn.Linear(100, 200), nn.ReLU(), nn.Linear(200, 300))
    init.init_linear_(model, "he", torch.Generator().manual_seed(0))
    for layer in (model[0], model[2]):
        assert torch.all(layer.bias == 0)
        assert layer.weight.std().item() == pytest.approx(math.sqrt(2 / layer.in_features), rel=0.05)


def test_signal_statistics_show_vanishing_and_stable_signals():
    x = torch.randn(256, 128, generator=torch.Generator().manual_seed(0))
    he = init.signal_statistics(init.DeepMLP(10, 128, "relu", "he"), x)
    xavier = init.signal_statistics(init.DeepMLP(10, 128, "relu", "xavier"), x)
    naive = init.signal_statistics(init.DeepMLP(10, 128, "relu", "naive"), x)
    assert len(he["activation_std"]) == 10 and len(he["gradient_std"]) == 10
    # He keeps the scale within a small factor; Xavier shrinks it by about sqrt(2) per layer; naive explodes
    assert 0.3 < he["activation_std"][-1] / he["activation_std"][0] < 3
    assert xavier["activation_std"][-1] / xavier["activation_std"][0] < 0.1
    assert naive["activation_std"][-1] / naive["activation_std"][0] > 1e6


def test_deep_mlp_rejects_bad_sizes():
    with pytest.raises(ValueError, match="depth and width"):
        init.DeepMLP(0, 10)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 5000), st.integers(1, 5000))
def test_xavier_lies_between_lecun_of_both_fans(fan_in, fan_out):
    x = init.init_std(fan_in, fan_out, "xavier")
    a, b = init.init_std(fan_in, fan_out, "lecun"), init.init_std(fan_out, fan_in, "lecun")
    assert min(a, b) - 1e-12 <= x <= max(a, b) + 1e-12
