"""Chapter 3 references: convolution and pooling, computed by torch.nn.functional and torch.autograd.

These are what the hidden tests compare a learner's from-scratch code with, and what later cells of
chapter 3 use so that a wrong answer never cascades. Each one asks PyTorch (``F.conv2d``,
``F.unfold``, ``F.max_pool2d``, ``torch.autograd.grad``) for the answer; none is the from-scratch
version. Inputs and outputs are float64 NumPy arrays in the channels-first layout:

- images ``x``: (N, C, H, W); filters ``w``: (F, C, KH, KW); biases ``b``: (F,);
- ``stride``, ``padding`` and ``dilation`` are an int (same for height and width) or a pair.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ._convert import float64_tensor

IntPair = int | tuple[int, int]


def _pair(name: str, value: Any, minimum: int) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, (int, np.integer)) and not isinstance(value, bool) else value
    if (
        not isinstance(pair, (tuple, list))
        or len(pair) != 2
        or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in pair)
    ):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(pair[0]), int(pair[1])


def _t(x: Any, name: str, ndim: int | None = None, requires_grad: bool = False) -> torch.Tensor:
    """Return ``x`` as a new float64 tensor, after checking that it has ``ndim`` dimensions."""
    t = float64_tensor(x, requires_grad=requires_grad)
    if ndim is not None and t.ndim != ndim:
        layout = {4: "(N, C, H, W)" if name != "w" else "(F, C, KH, KW)", 1: "(F,)"}.get(ndim, f"{ndim}-d")
        raise ValueError(f"expected {name} of shape {layout}, got {tuple(t.shape)}")
    return t


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """Return the output length of a convolution along one axis of length ``size``.

    Asks ``F.conv1d`` on a zero signal, so it is PyTorch's answer; raises ``ValueError`` when the
    (dilated) kernel does not fit in the padded input.
    """
    for name, value, low in (("size", size, 1), ("kernel", kernel, 1), ("stride", stride, 1),
                             ("padding", padding, 0), ("dilation", dilation, 1)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    span = dilation * (kernel - 1) + 1
    if span > size + 2 * padding:
        raise ValueError(f"a kernel spanning {span} pixels does not fit in {size} + 2*{padding} padded pixels")
    out = F.conv1d(torch.zeros(1, 1, size), torch.zeros(1, 1, kernel), stride=stride, padding=padding,
                   dilation=dilation)
    return int(out.shape[-1])


def conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, stride: IntPair = 1,
           padding: IntPair = 0, dilation: IntPair = 1) -> np.ndarray:
    """Return the convolution (cross-correlation) of ``x`` with ``w``, shape (N, F, OH, OW).

    ``x``: (N, C, H, W), ``w``: (F, C, KH, KW), ``b``: (F,) or None. Computed by ``F.conv2d``.
    """
    xt, wt = _t(x, "x", 4), _t(w, "w", 4)
    if xt.shape[1] != wt.shape[1]:
        raise ValueError(f"x has {xt.shape[1]} channels but w expects {wt.shape[1]} (w is (F, C, KH, KW))")
    bt = None if b is None else _t(b, "b", 1)
    if bt is not None and bt.shape[0] != wt.shape[0]:
        raise ValueError(f"b has {bt.shape[0]} entries, expected one per filter ({wt.shape[0]})")
    out = F.conv2d(xt, wt, bt, stride=_pair("stride", stride, 1), padding=_pair("padding", padding, 0),
                   dilation=_pair("dilation", dilation, 1))
    return out.numpy()


def im2col(x: np.ndarray, kernel_size: IntPair, stride: IntPair = 1, padding: IntPair = 0,
           dilation: IntPair = 1) -> np.ndarray:
    """Return every receptive field of ``x`` as a column: shape (N, C*KH*KW, OH*OW).

    Row ``(c*KH + i)*KW + j`` holds pixel ``(i, j)`` of channel ``c`` of each patch; column
    ``oh*OW + ow`` is the patch of output position ``(oh, ow)``. Computed by ``F.unfold``.
    """
    out = F.unfold(_t(x, "x", 4), _pair("kernel_size", kernel_size, 1), dilation=_pair("dilation", dilation, 1),
                   padding=_pair("padding", padding, 0), stride=_pair("stride", stride, 1))
    return out.numpy()


def col2im(cols: np.ndarray, input_shape: tuple[int, int, int, int], kernel_size: IntPair, stride: IntPair = 1,
           padding: IntPair = 0, dilation: IntPair = 1) -> np.ndarray:
    """Return the image (N, C, H, W) made by adding every column of ``cols`` back where it came from.

    The adjoint of :func:`im2col` (overlapping patches are summed, padding is dropped):
    ``cols``: (N, C*KH*KW, OH*OW), ``input_shape``: (N, C, H, W). Computed by ``F.fold``.
    """
    if len(input_shape) != 4:
        raise ValueError(f"input_shape must be (N, C, H, W), got {input_shape!r}")
    colt = _t(cols, "cols", 3)
    out = F.fold(colt, tuple(input_shape[2:]), _pair("kernel_size", kernel_size, 1),
                 dilation=_pair("dilation", dilation, 1), padding=_pair("padding", padding, 0),
                 stride=_pair("stride", stride, 1))
    return out.numpy()


def conv2d_backward(dout: np.ndarray, x: np.ndarray, w: np.ndarray, stride: IntPair = 1, padding: IntPair = 0,
                    dilation: IntPair = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(dx, dw, db)`` for ``out = conv2d(x, w, b, ...)`` given ``dout = dL/dout``.

    Shapes: ``dout`` (N, F, OH, OW), ``x`` (N, C, H, W), ``w`` (F, C, KH, KW); ``dx`` like ``x``,
    ``dw`` like ``w``, ``db`` (F,). Computed by ``torch.autograd.grad`` through ``F.conv2d``.
    """
    with torch.enable_grad():  # also inside a torch.autograd.Function's backward, where grad is off
        return _conv2d_backward(dout, x, w, stride, padding, dilation)


def _conv2d_backward(dout: np.ndarray, x: np.ndarray, w: np.ndarray, stride: IntPair, padding: IntPair,
                     dilation: IntPair) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xt, wt = _t(x, "x", 4, True), _t(w, "w", 4, True)
    bt = torch.zeros(wt.shape[0], dtype=torch.float64, requires_grad=True)
    out = F.conv2d(xt, wt, bt, stride=_pair("stride", stride, 1), padding=_pair("padding", padding, 0),
                   dilation=_pair("dilation", dilation, 1))
    doutt = _t(dout, "dout", 4)
    if doutt.shape != out.shape:
        raise ValueError(f"dout has shape {tuple(doutt.shape)}, expected the output's shape {tuple(out.shape)}")
    dx, dw, db = torch.autograd.grad(out, (xt, wt, bt), grad_outputs=doutt)
    return dx.numpy(), dw.numpy(), db.numpy()


def max_pool2d(x: np.ndarray, kernel_size: IntPair, stride: IntPair | None = None) -> np.ndarray:
    """Return the max over each ``kernel_size`` window of ``x`` (N, C, H, W): shape (N, C, OH, OW).

    ``stride`` defaults to ``kernel_size`` (non-overlapping windows). Computed by ``F.max_pool2d``.
    """
    k = _pair("kernel_size", kernel_size, 1)
    s = k if stride is None else _pair("stride", stride, 1)
    return F.max_pool2d(_t(x, "x", 4), k, s).numpy()


def _pool_backward(pool: Callable[..., torch.Tensor], dout: np.ndarray, x: np.ndarray, kernel_size: IntPair,
                   stride: IntPair | None) -> np.ndarray:
    """Return ``dx`` for ``out = pool(x, kernel_size, stride)`` by ``torch.autograd.grad``."""
    k = _pair("kernel_size", kernel_size, 1)
    s = k if stride is None else _pair("stride", stride, 1)
    with torch.enable_grad():  # also inside a torch.autograd.Function's backward, where grad is off
        xt = _t(x, "x", 4, True)
        out = pool(xt, k, s)
    doutt = _t(dout, "dout", 4)
    if doutt.shape != out.shape:
        raise ValueError(f"dout has shape {tuple(doutt.shape)}, expected the output's shape {tuple(out.shape)}")
    (dx,) = torch.autograd.grad(out, xt, grad_outputs=doutt)
    return dx.numpy()


def max_pool2d_backward(dout: np.ndarray, x: np.ndarray, kernel_size: IntPair,
                        stride: IntPair | None = None) -> np.ndarray:
    """Return ``dx`` (N, C, H, W) for ``out = max_pool2d(x, ...)`` given ``dout`` (N, C, OH, OW).

    Each window's gradient goes to its largest input (summed where windows overlap). Computed by
    ``torch.autograd.grad`` through ``F.max_pool2d``.
    """
    return _pool_backward(F.max_pool2d, dout, x, kernel_size, stride)


def avg_pool2d(x: np.ndarray, kernel_size: IntPair, stride: IntPair | None = None) -> np.ndarray:
    """Return the mean over each ``kernel_size`` window of ``x`` (N, C, H, W): shape (N, C, OH, OW).

    Computed by ``F.avg_pool2d``.
    """
    k = _pair("kernel_size", kernel_size, 1)
    s = k if stride is None else _pair("stride", stride, 1)
    return F.avg_pool2d(_t(x, "x", 4), k, s).numpy()


def avg_pool2d_backward(dout: np.ndarray, x: np.ndarray, kernel_size: IntPair,
                        stride: IntPair | None = None) -> np.ndarray:
    """Return ``dx`` (N, C, H, W) for ``out = avg_pool2d(x, ...)``: each window shares its gradient equally.

    Computed by ``torch.autograd.grad`` through ``F.avg_pool2d``.
    """
    return _pool_backward(F.avg_pool2d, dout, x, kernel_size, stride)
