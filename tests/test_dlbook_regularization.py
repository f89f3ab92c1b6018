"""dlbook.regularization: dropout, the L2 penalty and early stopping."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from dlbook import regularization as reg


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_is_inverted_and_drops_about_p(seed, p):
    x = np.random.default_rng(seed).uniform(0.5, 2, size=(200, 200))
    out = reg.dropout(x, p, training=True, seed=seed)
    kept = out != 0
    np.testing.assert_allclose(out[kept], x[kept] / (1 - p), rtol=1e-12)
    assert abs((~kept).mean() - p) < 6 * np.sqrt(p * (1 - p) / x.size)
    assert out.mean() == pytest.approx(x.mean(), rel=0.05)


def test_dropout_eval_is_identity_and_extremes():
    x = np.random.default_rng(0).standard_normal((3, 4))
    np.testing.assert_array_equal(reg.dropout(x, 0.7, training=False), x)
    np.testing.assert_array_equal(reg.dropout(x, 0.0, training=True), x)
    np.testing.assert_array_equal(reg.dropout(x, 1.0, training=True), np.zeros_like(x))


def test_dropout_is_seeded_and_leaves_torch_rng_alone():
    x = np.ones((50, 50))
    state = torch.random.get_rng_state()
    a, b = reg.dropout(x, 0.5, True, seed=3), reg.dropout(x, 0.5, True, seed=3)
    assert torch.equal(state, torch.random.get_rng_state())
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, reg.dropout(x, 0.5, True, seed=4))


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_dropout_rejects_bad_p(p):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        reg.dropout(np.ones(3), p, True)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-10, 10, allow_nan=False), min_size=1, max_size=20))
def test_l2_penalty_is_the_sum_of_squares_and_its_gradient_is_2w(values):
    w = torch.tensor(values, dtype=torch.float64, requires_grad=True)
    penalty = reg.l2_penalty([w, w[:1]])
    assert penalty.item() == pytest.approx(sum(v * v for v in values) + values[0] ** 2, rel=1e-9, abs=1e-12)
    penalty.backward()
    expected = 2 * w.detach().clone()
    expected[0] *= 2
    torch.testing.assert_close(w.grad, expected)


def test_l2_penalty_needs_parameters():
    with pytest.raises(ValueError, match="no parameters"):
        reg.l2_penalty([])


def test_early_stopping_stops_after_patience_and_restores_the_best_weights():
    model = nn.Linear(2, 1)
    stopper = reg.EarlyStopping(patience=2)
    losses = [1.0, 0.5, 0.6, 0.4, 0.45, 0.41, 0.9]
    stops = []
    for epoch, loss in enumerate(losses):
        with torch.no_grad():
            model.weight.fill_(epoch)
        stops.append(stopper.step(loss, model))
        if stops[-1]:
            break
    assert stops == [False, False, False, False, False, True]
    assert stopper.best == 0.4 and stopper.best_epoch == 3
    stopper.restore(model)
    assert torch.all(model.weight == 3)


def test_early_stopping_min_delta_and_errors():
    model = nn.Linear(1, 1)
    stopper = reg.EarlyStopping(patience=1, min_delta=0.1)
    assert not stopper.step(1.0, model)
    assert stopper.step(0.95, model)  # improved by less than min_delta: no improvement
    with pytest.raises(RuntimeError, match="before any step"):
        reg.EarlyStopping().restore(model)
    with pytest.raises(ValueError, match="patience"):
        reg.EarlyStopping(patience=0)
