"""dlbook.activations: values and derivatives against closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dlbook import activations

X = np.linspace(-5, 5, 41) + 0.013  # avoid exactly 0, where ReLU-like derivatives are a convention


def _phi(x):
    return np.exp(-x * x / 2) / math.sqrt(2 * math.pi)


def _Phi(x):
    return np.array([0.5 * (1 + math.erf(v / math.sqrt(2))) for v in np.ravel(x)]).reshape(np.shape(x))


CLOSED = {
    "sigmoid": (lambda x: 1 / (1 + np.exp(-x)), lambda x: np.exp(-x) / (1 + np.exp(-x)) ** 2),
    "tanh": (np.tanh, lambda x: 1 - np.tanh(x) ** 2),
    "relu": (lambda x: np.maximum(x, 0), lambda x: (x > 0).astype(float)),
    "leaky_relu": (lambda x: np.where(x > 0, x, 0.01 * x), lambda x: np.where(x > 0, 1.0, 0.01)),
    "elu": (lambda x: np.where(x > 0, x, np.exp(x) - 1), lambda x: np.where(x > 0, 1.0, np.exp(x))),
    "gelu": (lambda x: x * _Phi(x), lambda x: _Phi(x) + x * _phi(x)),
}


@pytest.mark.parametrize("name", sorted(CLOSED))
def test_activation_and_gradient_match_closed_forms(name):
    f, df = CLOSED[name]
    y, dy = activations.activation_and_gradient(name, X)
    assert y.shape == X.shape and dy.shape == X.shape
    np.testing.assert_allclose(y, f(X), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dy, df(X), rtol=1e-8, atol=1e-12)


def test_every_activation_has_a_closed_form_test():
    assert set(activations.ACTIVATIONS) == set(CLOSED)


@pytest.mark.parametrize("shape", [(), (1,), (3, 4), (2, 1, 5)])
def test_shapes_are_kept(shape):
    x = np.random.default_rng(0).standard_normal(shape)
    y, dy = activations.activation_and_gradient("tanh", x)
    assert y.shape == shape and dy.shape == shape


def test_unknown_activation_raises_with_the_choices():
    with pytest.raises(ValueError, match="expected one of"):
        activations.activation("swish!")


@settings(max_examples=50, deadline=None)
@given(st.floats(-30, 30, allow_nan=False))
def test_sigmoid_derivative_is_at_most_a_quarter(x):
    _, dy = activations.activation_and_gradient("sigmoid", np.array([x]))
    assert 0 <= dy[0] <= 0.25 + 1e-12
