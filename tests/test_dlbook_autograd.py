"""dlbook.autograd: every reference checked against torch used directly or a closed-form formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dlbook import autograd as ag

SEEDS = [0, 1, 2]
FLOATS = st.floats(-50, 50, allow_nan=False, allow_infinity=False, width=64)


def _torch_leaves(*arrays):
    return [torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=True) for a in arrays]


# ----------------------------------------------------------------------------- derivative, gradient


@pytest.mark.parametrize("x", [-2.5, -0.3, 0.0, 0.7, 3.0])
def test_derivative_matches_closed_form(x):
    def f(t):
        return t**3 - 2 * t / (t * t + 1)

    expected = 3 * x**2 - 2 * (1 - x**2) / (x**2 + 1) ** 2
    assert ag.derivative(f, x) == pytest.approx(expected, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n", [1, 2, 7])
def test_gradient_matches_closed_form(seed, n):
    x = np.random.default_rng(seed).standard_normal(n)

    def f(t):
        return (t**2).sum() + 3 * t.sum()

    got = ag.gradient(f, x)
    assert got.shape == x.shape
    np.testing.assert_allclose(got, 2 * x + 3, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("N", "D"), [(1, 1), (1, 4), (5, 1), (7, 3)])
def test_mse_gradients_match_closed_form(seed, N, D):
    rng = np.random.default_rng(seed)
    X, y, w = rng.standard_normal((N, D)), rng.standard_normal(N), rng.standard_normal(D)
    b = float(rng.standard_normal())
    loss, dw, db = ag.mse_gradients(X, y, w, b)
    r = X @ w + b - y
    assert loss == pytest.approx(np.mean(r**2), rel=1e-12)
    assert dw.shape == (D,)
    np.testing.assert_allclose(dw, 2.0 / N * X.T @ r, rtol=1e-10, atol=1e-12)
    assert db == pytest.approx(2.0 * r.mean(), rel=1e-10, abs=1e-12)


# ----------------------------------------------------------------------------- unbroadcast


UNBROADCAST_CASES = [
    ((4, 3), (4, 3), lambda g: g),
    ((4, 3), (3,), lambda g: g.sum(axis=0)),
    ((4, 3), (1, 3), lambda g: g.sum(axis=0, keepdims=True)),
    ((4, 3), (4, 1), lambda g: g.sum(axis=1, keepdims=True)),
    ((4, 3), (1, 1), lambda g: g.sum().reshape(1, 1)),
    ((4, 3), (), lambda g: g.sum()),
    ((5,), (), lambda g: g.sum()),
    ((5,), (1,), lambda g: g.sum().reshape(1)),
    ((1,), (1,), lambda g: g),
    ((1,), (), lambda g: g.sum()),
    ((2, 5, 3), (5, 1), lambda g: g.sum(axis=(0, 2)).reshape(5, 1)),
    ((2, 5, 3), (1, 3), lambda g: g.sum(axis=(0, 1)).reshape(1, 3)),
    ((2, 1, 3), (3,), lambda g: g.sum(axis=(0, 1))),
]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("grad_shape", "shape", "explicit"), UNBROADCAST_CASES)
def test_unbroadcast_matches_explicit_sums(seed, grad_shape, shape, explicit):
    grad = np.random.default_rng(seed).standard_normal(grad_shape)
    got = ag.unbroadcast(grad, shape)
    assert isinstance(got, np.ndarray)
    assert got.shape == shape
    np.testing.assert_allclose(got, explicit(grad), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("grad_shape", "shape"), [((4, 3), (3,)), ((2, 1, 3), (1, 3)), ((6,), ())])
def test_unbroadcast_is_the_gradient_of_torch_broadcasting(grad_shape, shape):
    rng = np.random.default_rng(3)
    grad = rng.standard_normal(grad_shape)
    (x,) = _torch_leaves(rng.standard_normal(shape))
    out = x * torch.ones(grad_shape, dtype=torch.float64)
    (dx,) = torch.autograd.grad(out, x, grad_outputs=torch.tensor(grad))
    np.testing.assert_allclose(ag.unbroadcast(grad, shape), dx.numpy(), rtol=1e-12, atol=1e-12)


@st.composite
def _broadcast_pair(draw):
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=4))
    # The input shape: some leading dims dropped, some remaining dims set to 1.
    keep = draw(st.integers(0, len(shape)))
    tail = shape[len(shape) - keep :]
    small = tuple(1 if draw(st.booleans()) else s for s in tail)
    grad = draw(hnp.arrays(np.float64, shape, elements=FLOATS))
    return grad, small


@settings(max_examples=60, deadline=None)
@given(_broadcast_pair())
def test_unbroadcast_preserves_total_sum_and_reaches_shape(pair):
    grad, small = pair
    got = ag.unbroadcast(grad, small)
    assert got.shape == small
    assert np.isclose(got.sum(), grad.sum(), rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------- matmul_backward


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("N", "K", "M"), [(1, 1, 1), (1, 5, 3), (4, 1, 2), (3, 7, 1), (5, 3, 4)])
def test_matmul_backward_matches_closed_form(seed, N, K, M):
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal((N, K)), rng.standard_normal((K, M))
    dout = rng.standard_normal((N, M))
    da, db = ag.matmul_backward(dout, a, b)
    assert da.shape == (N, K) and db.shape == (K, M)
    np.testing.assert_allclose(da, dout @ b.T, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(db, a.T @ dout, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- log_softmax


def _log_softmax_closed_form(z):
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (4, 1), (3, 7), (7,), (2, 3, 4)])
def test_log_softmax_matches_closed_form(seed, shape):
    z = 3 * np.random.default_rng(seed).standard_normal(shape)
    got = ag.log_softmax(z)
    assert got.shape == z.shape
    np.testing.assert_allclose(got, _log_softmax_closed_form(z), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("big", [1000.0, -1000.0])
def test_log_softmax_is_stable_for_huge_logits(big):
    z = np.array([[big, big - 1.0, big - 2.0], [big, big, big]])
    got = ag.log_softmax(z)
    assert np.isfinite(got).all()
    expected = _log_softmax_closed_form(np.array([[0.0, -1.0, -2.0], [0.0, 0.0, 0.0]]))
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=2, max_side=6),
                  elements=FLOATS))
def test_log_softmax_rows_logsumexp_to_zero(z):
    got = ag.log_softmax(z)
    assert (got <= 1e-12).all()
    lse = np.log(np.exp(got).sum(axis=-1))
    np.testing.assert_allclose(lse, 0.0, atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(
    hnp.arrays(np.float64, (3, 4), elements=FLOATS),
    st.floats(-500, 500, allow_nan=False),
)
def test_log_softmax_is_shift_invariant(z, c):
    np.testing.assert_allclose(ag.log_softmax(z + c), ag.log_softmax(z), atol=1e-9)


# ------------------------------------------------------------------------- softmax_cross_entropy


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("N", "C"), [(1, 1), (1, 4), (5, 2), (7, 3), (4, 10)])
def test_softmax_cross_entropy_matches_closed_form_and_torch(seed, N, C):
    rng = np.random.default_rng(seed)
    logits = 2 * rng.standard_normal((N, C))
    targets = rng.integers(0, C, size=N)
    loss, dlogits = ag.softmax_cross_entropy(logits, targets)
    assert dlogits.shape == (N, C)

    p = np.exp(_log_softmax_closed_form(logits))
    onehot = np.eye(C)[targets]
    closed_loss = -np.mean(np.log(p[np.arange(N), targets]))
    assert loss == pytest.approx(closed_loss, rel=1e-10, abs=1e-12)
    np.testing.assert_allclose(dlogits, (p - onehot) / N, rtol=1e-10, atol=1e-12)

    torch_loss = F.cross_entropy(torch.tensor(logits), torch.tensor(targets))
    assert loss == pytest.approx(torch_loss.item(), rel=1e-12, abs=1e-12)


def test_softmax_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1000.0, 0.0, -1000.0], [-1000.0, -1000.0, 1000.0]])
    loss, dlogits = ag.softmax_cross_entropy(logits, np.array([1, 2]))
    assert np.isfinite(loss) and np.isfinite(dlogits).all()
    assert loss == pytest.approx(1000.0 / 2, rel=1e-12)
    np.testing.assert_allclose(dlogits, np.array([[0.5, -0.5, 0.0], [0.0, 0.0, 0.0]]), atol=1e-12)


# ----------------------------------------------------------------------------- Value


def _expr_tanh(a, b, c):
    return (a * b + c).tanh()


def _expr_exp_div(a, b, c):
    return (a.exp() - b) / (c * c + 1.0)


def _expr_log_pow(a, b, c):
    return (a * a + 1).log() * b - c**3 + (b * b + 2) ** 0.5


def _expr_relu(a, b, c):
    return (a - b).relu() * c + (b - a).relu() + (c * 0.5).relu()


def _expr_reversed(a, b, c):
    return 2 - a + 3 / (b * b + 1) - (-c) * 4 + 1.5 * a


def _expr_reuse(a, b, c):
    x = a * b
    y = x + x * c
    return y * x - x / 2 + (x * x).tanh()


EXPRESSIONS = [_expr_tanh, _expr_exp_div, _expr_log_pow, _expr_relu, _expr_reversed, _expr_reuse]


@pytest.mark.parametrize("seed", SEEDS + [3, 4])
@pytest.mark.parametrize("expr", EXPRESSIONS, ids=lambda f: f.__name__)
def test_value_gradients_match_torch_autograd(seed, expr):
    a0, b0, c0 = np.random.default_rng(seed).standard_normal(3)
    a, b, c = ag.Value(a0), ag.Value(b0), ag.Value(c0)
    out = expr(a, b, c)
    out.backward()

    ta, tb, tc = _torch_leaves(a0, b0, c0)
    tout = expr(ta, tb, tc)
    tout.backward()
    assert out.data == pytest.approx(tout.item(), rel=1e-12, abs=1e-12)
    for v, t in [(a, ta), (b, tb), (c, tc)]:
        assert v.grad == pytest.approx(float(t.grad), rel=1e-10, abs=1e-12)
    assert out.grad == 1.0


@pytest.mark.parametrize("x0", [-1.3, 0.2, 2.0])
def test_value_unary_gradients_match_closed_forms(x0):
    cases = [
        (lambda v: v.tanh(), 1 - np.tanh(x0) ** 2),
        (lambda v: v.exp(), np.exp(x0)),
        (lambda v: (v * v).log(), 2 / x0),
        (lambda v: v.relu(), float(x0 > 0)),
        (lambda v: v**3, 3 * x0**2),
        (lambda v: 1 / v, -1 / x0**2),
    ]
    for f, expected in cases:
        x = ag.Value(x0)
        f(x).backward()
        assert x.grad == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_value_reused_intermediate_node_gets_summed_gradient():
    a, b = ag.Value(2.0), ag.Value(-3.0)
    x = a * b  # used three times below
    out = x * x + x
    out.backward()
    assert x.grad == pytest.approx(2 * (2.0 * -3.0) + 1)
    assert a.grad == pytest.approx((2 * -6.0 + 1) * -3.0)
    assert b.grad == pytest.approx((2 * -6.0 + 1) * 2.0)


def test_value_graph_structure():
    a, b = ag.Value(2.0, label="a"), ag.Value(3.0, label="b")
    s = a + b
    p = s * a
    assert s._prev == {a, b} and s._op == "+"
    assert p._prev == {s, a} and p._op == "*"
    assert (a**2)._op == "**2"
    assert a._prev == set() and a.label == "a"
    assert p.data == pytest.approx(10.0)


def test_value_backward_accumulates_and_grad_can_be_reset():
    a = ag.Value(1.5)
    out = a * a
    out.backward()
    assert a.grad == pytest.approx(3.0)
    out.backward()
    assert a.grad == pytest.approx(6.0)
    a.grad = 0.0
    out.backward()
    assert a.grad == pytest.approx(3.0)


def test_value_data_setter_and_training_loop_reduce_loss():
    # Fit w * x to y = 2 x with plain gradient descent, micrograd style.
    w = ag.Value(-1.0)
    xs, ys = [1.0, 2.0, -1.0], [2.0, 4.0, -2.0]
    losses = []
    for _ in range(20):
        loss = sum((w * x - y) ** 2 for x, y in zip(xs, ys, strict=True))
        w.grad = 0.0
        loss.backward()
        w.data = w.data - 0.05 * w.grad
        losses.append(loss.data)
    assert losses[-1] < 1e-3 * losses[0]
    assert w.data == pytest.approx(2.0, abs=1e-2)


def test_value_rejects_value_exponent():
    with pytest.raises(TypeError, match="exponent"):
        ag.Value(2.0) ** ag.Value(3.0)


# ----------------------------------------------------------------------------- Tensor


def _mlp_params(rng, D, H, C):
    return [rng.standard_normal((D, H)) * 0.5, rng.standard_normal(H) * 0.1,
            rng.standard_normal((H, C)) * 0.5, rng.standard_normal(C) * 0.1]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(
    ("N", "D", "H", "C"), [(1, 1, 1, 2), (1, 4, 3, 3), (5, 1, 4, 2), (7, 3, 5, 4)]
)
def test_tensor_mlp_gradients_match_torch(seed, N, D, H, C):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, D))
    y = rng.integers(0, C, size=N)
    params = _mlp_params(rng, D, H, C)

    W1, b1, W2, b2 = (ag.Tensor(p) for p in params)
    loss = ((ag.Tensor(X) @ W1 + b1).relu() @ W2 + b2).cross_entropy(y)
    loss.backward()

    tW1, tb1, tW2, tb2 = _torch_leaves(*params)
    tloss = F.cross_entropy(torch.relu(torch.tensor(X) @ tW1 + tb1) @ tW2 + tb2, torch.tensor(y))
    tloss.backward()

    assert float(loss.data) == pytest.approx(tloss.item(), rel=1e-12)
    for p, t in [(W1, tW1), (b1, tb1), (W2, tW2), (b2, tb2)]:
        assert p.grad.shape == t.shape
        np.testing.assert_allclose(p.grad, t.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_tensor_elementwise_sum_mean_gradients_match_closed_form(seed):
    rng = np.random.default_rng(seed)
    a0, b0 = rng.standard_normal((3, 4)), rng.standard_normal(4)
    a, b = ag.Tensor(a0), ag.Tensor(b0)
    out = (a * b + 2 * a + 1.0).mean() + (a * a).sum()
    out.backward()
    n = a0.size
    np.testing.assert_allclose(a.grad, (b0 + 2) / n + 2 * a0, rtol=1e-12)
    # b was broadcast over the rows: its gradient is the row sum (unbroadcast).
    np.testing.assert_allclose(b.grad, a0.sum(axis=0) / n, rtol=1e-12)
    np.testing.assert_allclose(b.grad, ag.unbroadcast(a0 / n, (4,)), rtol=1e-12)


def test_tensor_gradient_descent_updates_parameters_in_place():
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((8, 3)), rng.integers(0, 2, size=8)
    params = [ag.Tensor(p) for p in _mlp_params(rng, 3, 4, 2)]
    W1, b1, W2, b2 = params

    def forward():
        return ((ag.Tensor(X) @ W1 + b1).relu() @ W2 + b2).cross_entropy(y)

    loss0 = forward()
    loss0.backward()
    lr = 0.1
    expected = [p.data.copy() - lr * p.grad.copy() for p in params]
    for p in params:
        p.data -= lr * p.grad
    for p, e in zip(params, expected, strict=True):
        np.testing.assert_allclose(p.data, e, rtol=1e-12)
    # The next forward pass sees the updated values, and the loss went down.
    loss1 = forward()
    tparams = _torch_leaves(*expected)
    hidden = torch.relu(torch.tensor(X) @ tparams[0] + tparams[1])
    tloss = F.cross_entropy(hidden @ tparams[2] + tparams[3], torch.tensor(y))
    assert float(loss1.data) == pytest.approx(tloss.item(), rel=1e-12)
    assert float(loss1.data) < float(loss0.data)


def test_tensor_zero_grad_and_accumulation():
    a = ag.Tensor(np.array([1.0, -2.0, 3.0]))
    out = (a * a).sum()
    out.backward()
    np.testing.assert_allclose(a.grad, [2.0, -4.0, 6.0])
    out.backward()
    np.testing.assert_allclose(a.grad, [4.0, -8.0, 12.0])
    a.zero_grad()
    assert a.grad.shape == (3,)
    np.testing.assert_array_equal(a.grad, np.zeros(3))
    out.backward()
    np.testing.assert_allclose(a.grad, [2.0, -4.0, 6.0])


def test_tensor_grad_is_zero_before_backward_and_settable():
    a = ag.Tensor(np.ones((2, 3)))
    np.testing.assert_array_equal(a.grad, np.zeros((2, 3)))
    a.grad = np.arange(6.0)
    np.testing.assert_array_equal(a.grad, np.arange(6.0).reshape(2, 3))


@pytest.mark.parametrize("shape", [(2,), (2, 3), (1, 2)])
def test_tensor_backward_from_non_scalar_raises(shape):
    a = ag.Tensor(np.ones(shape))
    with pytest.raises(ValueError, match="scalar"):
        (a * 2).backward()


def test_tensor_graph_structure():
    a, b = ag.Tensor(np.ones((2, 2))), ag.Tensor(np.ones((2, 2)))
    m = a @ b
    assert m._prev == {a, b} and m._op == "@"
    assert m.shape == (2, 2)
    s = m.relu().sum()
    assert s._op == "sum" and s.shape == ()
