"""Quantization: affine int8 quantization of tensors, and post-training int8 quantization of models.

Affine int8: ``q = clamp(round(x / scale) + zero_point, -128, 127)``, ``x ~ (q - zero_point) * scale``.
Models are quantized with torchao (``quantize_`` with ``Int8DynamicActivationInt8WeightConfig``),
PyTorch's model-optimisation library, when it is installed; otherwise with the older, deprecated
``torch.ao.quantization.quantize_dynamic`` that ships inside torch. Both store int8 weights with
float scales and quantize activations on the fly (dynamic quantization); :func:`int8_backend` says
which one is used.
"""

from __future__ import annotations

import copy
import io
import logging
import time
import warnings

import torch
import torch.nn as nn

QMIN, QMAX = -128, 127


def choose_qparams(x: torch.Tensor, qmin: int = QMIN, qmax: int = QMAX) -> tuple[float, int]:
    """Return ``(scale, zero_point)`` mapping the range ``[min(x, 0), max(x, 0)]`` onto ``[qmin, qmax]``.

    ``scale = (max - min) / (qmax - qmin)`` (at least float32 eps), ``zero_point = qmin - round(min / scale)``
    clamped to ``[qmin, qmax]``; the range always contains 0 so that 0 is exactly representable.
    Built on ``torch.ao.quantization.observer.MinMaxObserver`` (per-tensor affine).
    """
    from torch.ao.quantization.observer import MinMaxObserver

    if not isinstance(x, torch.Tensor) or x.numel() == 0:
        raise ValueError("expected a non-empty torch.Tensor")
    if not qmin < qmax:
        raise ValueError(f"expected qmin < qmax, got {qmin}, {qmax}")
    observer = MinMaxObserver(dtype=torch.qint8, quant_min=qmin, quant_max=qmax)
    observer(x.detach().float().cpu())
    scale, zero_point = observer.calculate_qparams()
    return float(scale.item()), int(zero_point.item())


def quantize_tensor(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """Return int8 ``clamp(round(x / scale) + zero_point, -128, 127)``, same shape as ``x``.

    Built on ``torch.fake_quantize_per_tensor_affine`` (which returns the dequantized values).
    """
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    if not QMIN <= zero_point <= QMAX:
        raise ValueError(f"zero_point must be in [{QMIN}, {QMAX}], got {zero_point}")
    x = x.detach().float()
    fake = torch.fake_quantize_per_tensor_affine(x, scale, int(zero_point), QMIN, QMAX)
    return (torch.round(fake / scale) + zero_point).to(torch.int8)


def dequantize_tensor(q: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """Return float32 ``(q - zero_point) * scale``, same shape as ``q``."""
    if q.dtype not in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8):
        raise TypeError(f"expected an integer tensor q, got dtype {q.dtype}")
    return (q.to(torch.float32) - zero_point) * scale


def _torchao():
    logging.getLogger("torchao").setLevel(logging.ERROR)  # GPU-only kernels fail to load on a CPU build
    # torchao registers an Enum with torch's pytree at import, which torch logs as a deprecation.
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torchao.quantization as tq
    except ImportError:
        return None
    return tq


def int8_backend() -> str:
    """Return the library :func:`quantize_int8` uses: ``"torchao"`` or ``"torch.ao"``."""
    return "torchao" if _torchao() is not None else "torch.ao"


def quantize_int8(model: nn.Module) -> nn.Module:
    """Return an int8 copy of ``model`` (every ``nn.Linear``: int8 weights, dynamically quantized inputs).

    ``model`` itself is left unchanged. Runs on the CPU.
    """
    qmodel = copy.deepcopy(model).cpu().eval()
    tq = _torchao()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if tq is not None:
            tq.quantize_(qmodel, tq.Int8DynamicActivationInt8WeightConfig())
        else:
            from torch.ao.quantization import quantize_dynamic

            qmodel = quantize_dynamic(qmodel, {nn.Linear}, dtype=torch.qint8)
    return qmodel


def model_size_bytes(model: nn.Module) -> int:
    """Return the size in bytes of ``model``'s state dict saved with ``torch.save`` (its size on disk)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(model.state_dict(), buffer)
    return buffer.tell()


@torch.no_grad()
def cpu_latency(model: nn.Module, x: torch.Tensor, repeats: int = 20) -> float:
    """Return the median seconds of one forward pass of ``model`` on the CPU batch ``x``."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    model = model.eval()
    x = x.cpu()
    model(x)  # warm-up: first calls allocate and pick kernels
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - start)
    return float(sorted(times)[len(times) // 2])
