"""Mixed precision: low-precision number formats, autocast, and dynamic loss scaling.

The references are built on PyTorch's own machinery: dtype casts for rounding, and the two ops
``torch.amp.GradScaler`` runs (``torch._amp_foreach_non_finite_check_and_unscale_`` and
``torch._amp_update_scale_``) for loss scaling. The chapter rebuilds both from plain tensor ops.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def round_to_bfloat16(x: Any) -> np.ndarray:
    """Return ``x`` rounded to the nearest bfloat16 (ties to even), as a float32 array of the same shape.

    ``x``: any shape, float32 values (a NumPy array or a tensor). bfloat16 keeps float32's 8 exponent
    bits and the top 7 of its 23 mantissa bits, so the range is float32's and the precision is
    about 2-3 decimal digits. Computed with torch's own cast ``.to(torch.bfloat16)``.
    """
    t = torch.as_tensor(np.asarray(x, dtype=np.float32))
    return t.to(torch.bfloat16).to(torch.float32).numpy()


def autocast_dtype(device: torch.device | str) -> torch.dtype:
    """Return the low-precision dtype autocast should use on ``device``.

    CPU: bfloat16 (the only one CPU autocast runs well); CUDA: bfloat16 where the GPU supports it
    (Ampere and newer), else float16 (which then needs loss scaling); MPS: float16.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    if device.type == "cpu":
        return torch.bfloat16
    raise ValueError(f"expected a cpu, cuda or mps device, got {device}")


def loss_scaled_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scale: float,
    good_steps: int,
    growth_factor: float = 2.0,
    backoff_factor: float = 0.5,
    growth_interval: int = 2000,
) -> tuple[bool, float, int]:
    """Return ``(stepped, new_scale, new_good_steps)`` after one dynamically loss-scaled optimizer step.

    Backpropagates ``loss * scale``, divides every gradient in ``optimizer`` by ``scale``, and:
    if all gradients are finite, steps the optimizer and counts a good step (after
    ``growth_interval`` good steps in a row the scale grows by ``growth_factor`` and the count
    restarts); otherwise skips the step, multiplies the scale by ``backoff_factor`` and resets the
    count. The caller zeroes the gradients before computing ``loss``. Same rules as
    ``torch.amp.GradScaler``, computed with the ops it uses.
    """
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    (loss * scale).backward()
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    device = loss.device
    found_inf = torch.zeros(1, device=device)
    inv_scale = torch.full((1,), scale, dtype=torch.float64, device=device).reciprocal().float()
    if grads:
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, inv_scale)
    scale_t = torch.full((1,), scale, dtype=torch.float32, device=device)
    tracker = torch.full((1,), good_steps, dtype=torch.int32, device=device)
    torch._amp_update_scale_(scale_t, tracker, found_inf, growth_factor, backoff_factor, growth_interval)
    stepped = found_inf.item() == 0.0
    if stepped:
        optimizer.step()
    return stepped, float(scale_t.item()), int(tracker.item())
