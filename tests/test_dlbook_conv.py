"""dlbook.conv: every reference checked against an independent NumPy computation, PyTorch or a law."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from dlbook import conv

SEEDS = [0, 1, 2]
# (N, C, H, W), (F, KH, KW), stride, padding, dilation: non-square, stride 2, padding 1 and 2,
# dilation 2, batch of 1, many channels, 1x1 kernels.
CONFIGS = [
    ((2, 3, 7, 5), (4, 3, 2), 1, 0, 1),
    ((1, 1, 6, 6), (1, 3, 3), 2, 1, 1),
    ((1, 2, 8, 9), (3, 3, 3), 1, 2, 1),
    ((2, 2, 9, 7), (2, 3, 3), 1, 0, 2),
    ((1, 8, 5, 6), (5, 1, 1), 1, 0, 1),
    ((1, 3, 10, 8), (2, 5, 3), 2, 2, 1),
    ((1, 4, 9, 9), (3, 3, 3), 2, 1, 2),
    ((1, 32, 5, 4), (7, 2, 3), 1, 1, 1),
]


def _windows(x: np.ndarray, kh: int, kw: int, s: int, p: int, d: int) -> np.ndarray:
    """Independent im2col: (N, C, OH, OW, KH, KW) patches from a sliding-window view."""
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    span_h, span_w = d * (kh - 1) + 1, d * (kw - 1) + 1
    win = np.lib.stride_tricks.sliding_window_view(xp, (span_h, span_w), axis=(2, 3))
    return win[:, :, ::s, ::s, ::d, ::d]


def _conv_numpy(x, w, b, s, p, d):
    win = _windows(x, w.shape[2], w.shape[3], s, p, d)
    return np.einsum("ncijpq,fcpq->nfij", win, w) + b[None, :, None, None]


@pytest.mark.parametrize("size,kernel,stride,padding,dilation",
                         [(28, 5, 1, 0, 1), (28, 3, 2, 1, 1), (7, 3, 1, 0, 2), (6, 3, 2, 0, 1), (1, 1, 1, 0, 1),
                          (9, 4, 3, 2, 2)])
def test_conv_output_size_matches_formula(size, kernel, stride, padding, dilation):
    expected = (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    got = conv.conv_output_size(size, kernel, stride, padding, dilation)
    assert type(got) is int and got == expected


@given(st.integers(1, 40), st.integers(1, 7), st.integers(1, 4), st.integers(0, 3), st.integers(1, 3))
@settings(max_examples=60, deadline=None)
def test_conv_output_size_agrees_with_a_real_convolution(size, kernel, stride, padding, dilation):
    if dilation * (kernel - 1) + 1 > size + 2 * padding:
        with pytest.raises(ValueError, match="does not fit"):
            conv.conv_output_size(size, kernel, stride, padding, dilation)
        return
    x = np.zeros((1, 1, size, 3))
    w = np.zeros((1, 1, kernel, 1))
    out = conv.conv2d(x, w, None, stride=(stride, 1), padding=(padding, 0), dilation=(dilation, 1))
    assert out.shape[2] == conv.conv_output_size(size, kernel, stride, padding, dilation)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "3"])
def test_conv_output_size_rejects_bad_arguments(bad):
    with pytest.raises(ValueError, match="must be an int"):
        conv.conv_output_size(10, bad)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("config", CONFIGS)
def test_conv2d_matches_numpy_einsum(seed, config):
    (n, c, h, w_), (f, kh, kw), s, p, d = config
    rng = np.random.default_rng(seed)
    x, w, b = rng.standard_normal((n, c, h, w_)), rng.standard_normal((f, c, kh, kw)), rng.standard_normal(f)
    got = conv.conv2d(x, w, b, stride=s, padding=p, dilation=d)
    np.testing.assert_allclose(got, _conv_numpy(x, w, b, s, p, d), rtol=1e-10, atol=1e-10)
    assert got.dtype == np.float64


def test_conv2d_accepts_pairs_and_no_bias():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((1, 2, 9, 8)), rng.standard_normal((3, 2, 3, 2))
    got = conv.conv2d(x, w, stride=(2, 1), padding=(1, 0))
    expected = F.conv2d(torch.tensor(x), torch.tensor(w), stride=(2, 1), padding=(1, 0)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_conv2d_errors_say_what_was_expected():
    with pytest.raises(ValueError, match=r"expected x of shape \(N, C, H, W\), got \(3, 28, 28\)"):
        conv.conv2d(np.zeros((3, 28, 28)), np.zeros((1, 3, 3, 3)))
    with pytest.raises(ValueError, match="x has 2 channels but w expects 3"):
        conv.conv2d(np.zeros((1, 2, 5, 5)), np.zeros((1, 3, 3, 3)))
    with pytest.raises(ValueError, match="one per filter"):
        conv.conv2d(np.zeros((1, 3, 5, 5)), np.zeros((4, 3, 3, 3)), np.zeros(3))
    with pytest.raises(ValueError, match="stride must be >= 1"):
        conv.conv2d(np.zeros((1, 3, 5, 5)), np.zeros((4, 3, 3, 3)), stride=0)
    with pytest.raises(TypeError, match="padding must be an int or a pair"):
        conv.conv2d(np.zeros((1, 3, 5, 5)), np.zeros((4, 3, 3, 3)), padding=1.5)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("config", CONFIGS)
def test_im2col_matches_sliding_windows(seed, config):
    (n, c, h, w_), (_, kh, kw), s, p, d = config
    x = np.random.default_rng(seed).standard_normal((n, c, h, w_))
    win = _windows(x, kh, kw, s, p, d)  # (N, C, OH, OW, KH, KW)
    expected = win.transpose(0, 1, 4, 5, 2, 3).reshape(n, c * kh * kw, -1)
    np.testing.assert_array_equal(conv.im2col(x, (kh, kw), s, p, d), expected)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("config", CONFIGS)
def test_col2im_is_the_adjoint_of_im2col(seed, config):
    (n, c, h, w_), (_, kh, kw), s, p, d = config
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w_))
    cols = conv.im2col(x, (kh, kw), s, p, d)
    y = rng.standard_normal(cols.shape)
    # <im2col(x), y> = <x, col2im(y)>: col2im is what the backward pass of im2col needs.
    lhs = np.sum(cols * y)
    rhs = np.sum(x * conv.col2im(y, x.shape, (kh, kw), s, p, d))
    assert lhs == pytest.approx(rhs, rel=1e-10, abs=1e-10)


def test_col2im_rejects_a_bad_shape():
    with pytest.raises(ValueError, match=r"input_shape must be \(N, C, H, W\)"):
        conv.col2im(np.zeros((1, 4, 4)), (3, 3), 2)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("config", CONFIGS)
def test_conv2d_backward_matches_adjoint_laws(seed, config):
    (n, c, h, w_), (f, kh, kw), s, p, d = config
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal((n, c, h, w_)), rng.standard_normal((f, c, kh, kw))
    out = conv.conv2d(x, w, None, s, p, d)
    dout = rng.standard_normal(out.shape)
    dx, dw, db = conv.conv2d_backward(dout, x, w, s, p, d)
    assert dx.shape == x.shape and dw.shape == w.shape and db.shape == (f,)
    # The convolution is linear in x and in w, so L = <conv(x, w), dout> has
    # L = <x, dx> = <w, dw>; and db is dout summed over everything but the filter axis.
    L = np.sum(out * dout)
    assert np.sum(x * dx) == pytest.approx(L, rel=1e-9, abs=1e-9)
    assert np.sum(w * dw) == pytest.approx(L, rel=1e-9, abs=1e-9)
    np.testing.assert_allclose(db, dout.sum(axis=(0, 2, 3)), rtol=1e-12, atol=1e-12)
    # And dw through im2col: sum_n D_n Xcol_n^T.
    cols = conv.im2col(x, (kh, kw), s, p, d)
    dw_cols = np.einsum("nfl,nkl->fk", dout.reshape(n, f, -1), cols).reshape(w.shape)
    np.testing.assert_allclose(dw, dw_cols, rtol=1e-10, atol=1e-10)


def test_conv2d_backward_checks_dout_shape():
    with pytest.raises(ValueError, match="expected the output's shape"):
        conv.conv2d_backward(np.zeros((1, 1, 3, 3)), np.zeros((1, 1, 4, 4)), np.zeros((1, 1, 3, 3)))


POOL_CONFIGS = [((2, 3, 8, 6), 2, 2), ((1, 1, 7, 9), 3, 2), ((1, 4, 6, 5), 2, 1), ((3, 2, 9, 7), 3, 3),
                ((1, 16, 4, 6), 2, 2), ((1, 1, 5, 5), 5, 1)]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape,k,s", POOL_CONFIGS)
def test_pooling_matches_sliding_windows(seed, shape, k, s):
    x = np.random.default_rng(seed).standard_normal(shape)
    win = _windows(x, k, k, s, 0, 1)
    np.testing.assert_array_equal(conv.max_pool2d(x, k, s), win.max(axis=(4, 5)))
    np.testing.assert_allclose(conv.avg_pool2d(x, k, s), win.mean(axis=(4, 5)), rtol=1e-12, atol=1e-12)


def test_pool_stride_defaults_to_kernel():
    x = np.random.default_rng(0).standard_normal((1, 2, 6, 6))
    np.testing.assert_array_equal(conv.max_pool2d(x, 2), conv.max_pool2d(x, 2, 2))
    np.testing.assert_array_equal(conv.avg_pool2d(x, 3), conv.avg_pool2d(x, 3, 3))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape,k,s", POOL_CONFIGS)
def test_max_pool_backward_routes_to_the_argmax(seed, shape, k, s):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    win = _windows(x, k, k, s, 0, 1)
    dout = rng.standard_normal(win.shape[:4])
    expected = np.zeros_like(x)
    n_, c_, oh_, ow_ = win.shape[:4]
    for n in range(n_):
        for c in range(c_):
            for i in range(oh_):
                for j in range(ow_):
                    p, q = np.unravel_index(np.argmax(win[n, c, i, j]), (k, k))
                    expected[n, c, i * s + p, j * s + q] += dout[n, c, i, j]
    np.testing.assert_allclose(conv.max_pool2d_backward(dout, x, k, s), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape,k,s", POOL_CONFIGS)
def test_avg_pool_backward_shares_equally(seed, shape, k, s):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    dout = rng.standard_normal(conv.avg_pool2d(x, k, s).shape)
    expected = np.zeros_like(x)
    for i in range(dout.shape[2]):
        for j in range(dout.shape[3]):
            expected[:, :, i * s : i * s + k, j * s : j * s + k] += dout[:, :, i : i + 1, j : j + 1] / (k * k)
    np.testing.assert_allclose(conv.avg_pool2d_backward(dout, x, k, s), expected, rtol=1e-12, atol=1e-12)


def test_pool_backward_checks_dout_shape():
    for backward in (conv.max_pool2d_backward, conv.avg_pool2d_backward):
        with pytest.raises(ValueError, match="expected the output's shape"):
            backward(np.zeros((1, 1, 3, 3)), np.zeros((1, 1, 4, 4)), 2)


def test_references_accept_torch_tensors():
    x = torch.randn(1, 2, 5, 5, requires_grad=True)
    w = torch.randn(3, 2, 3, 3)
    np.testing.assert_allclose(conv.conv2d(x, w), F.conv2d(x.double(), w.double()).detach().numpy(), rtol=1e-12)


def test_backward_references_work_with_grad_disabled():
    # A torch.autograd.Function's backward runs with grad mode off; the references must still work there.
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((1, 2, 6, 6)), rng.standard_normal((3, 2, 3, 3))
    with torch.no_grad():
        dx, dw, db = conv.conv2d_backward(np.ones((1, 3, 4, 4)), x, w)
        dmax = conv.max_pool2d_backward(np.ones((1, 2, 3, 3)), x, 2)
        davg = conv.avg_pool2d_backward(np.ones((1, 2, 3, 3)), x, 2)
    assert dx.shape == x.shape and dw.shape == w.shape and db.shape == (3,)
    assert dmax.sum() == pytest.approx(9 * 2) and davg.sum() == pytest.approx(9 * 2)
