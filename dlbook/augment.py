"""Data augmentation for image batches, in plain torch (no torchvision).

Every transform takes a float batch ``x`` of shape (N, C, H, W) on any device and returns a new
batch of the same shape; the random ones take a ``torch.Generator`` so that a run repeats.

- :func:`shift_images`: translate each image by whole pixels, filling with zeros (deterministic).
- :func:`random_shift`, :func:`random_hflip`, :func:`random_rotation`: the random versions.
- :func:`augment_batch`: shift, flip and rotate in one call, as used in training.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _check_images(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
        raise ValueError(f"expected a batch of images x of shape (N, C, H, W), got {shape}")
    if not x.is_floating_point():
        raise TypeError(f"expected a float image batch, got {x.dtype}")


def shift_images(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """Return ``x`` (N, C, H, W) with image n moved down by ``dy[n]`` and right by ``dx[n]`` pixels.

    ``out[n, :, i, j] = x[n, :, i - dy[n], j - dx[n]]`` where that pixel exists, else ``fill``.
    ``dy``, ``dx``: integer tensors of shape (N,); negative values move up / left.
    """
    _check_images(x)
    n, _, h, w = x.shape
    dy = torch.as_tensor(dy, device=x.device)
    dx = torch.as_tensor(dx, device=x.device)
    if dy.shape != (n,) or dx.shape != (n,):
        raise ValueError(f"dy and dx must have shape ({n},), got {tuple(dy.shape)} and {tuple(dx.shape)}")
    if dy.is_floating_point() or dx.is_floating_point():
        raise TypeError("dy and dx must be integer tensors (whole-pixel shifts)")
    rows = torch.arange(h, device=x.device).view(1, h, 1) - dy.view(n, 1, 1)  # source row of each output row
    cols = torch.arange(w, device=x.device).view(1, 1, w) - dx.view(n, 1, 1)
    inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)  # (N, H, W)
    flat = (rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1)).view(n, 1, h * w).expand(-1, x.shape[1], -1)
    out = torch.gather(x.reshape(n, x.shape[1], h * w), 2, flat).view_as(x)
    return torch.where(inside.unsqueeze(1), out, torch.full_like(out, fill))


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Return ``x`` with each image shifted by a uniform random whole-pixel offset in [-max_shift, max_shift]."""
    _check_images(x)
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    shifts = torch.randint(-max_shift, max_shift + 1, (2, x.shape[0]), generator=generator)
    return shift_images(x, shifts[0].to(x.device), shifts[1].to(x.device))


def random_hflip(x: torch.Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """Return ``x`` with each image mirrored left-right with probability ``p``."""
    _check_images(x)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be a probability in [0, 1], got {p}")
    flip = (torch.rand(x.shape[0], generator=generator) < p).to(x.device).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(-1), x)


def rotate_images(x: torch.Tensor, degrees: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """Return ``x`` with image n rotated by ``degrees[n]`` (counter-clockwise) about its centre.

    Bilinear interpolation (``F.affine_grid`` + ``F.grid_sample``); pixels from outside get ``fill``.
    """
    _check_images(x)
    degrees = torch.as_tensor(degrees, dtype=x.dtype, device=x.device)
    if degrees.shape != (x.shape[0],):
        raise ValueError(f"degrees must have shape ({x.shape[0]},), got {tuple(degrees.shape)}")
    theta = degrees * (math.pi / 180.0)
    cos, sin = torch.cos(theta), torch.sin(theta)
    zero = torch.zeros_like(cos)
    # The grid maps output coordinates to input coordinates, so the inverse rotation goes here.
    matrix = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(matrix, list(x.shape), align_corners=False)
    out = F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out + fill


def random_rotation(x: torch.Tensor, max_degrees: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Return ``x`` with each image rotated by a uniform random angle in [-max_degrees, max_degrees]."""
    _check_images(x)
    if max_degrees < 0:
        raise ValueError(f"max_degrees must be >= 0, got {max_degrees}")
    angles = (torch.rand(x.shape[0], generator=generator) * 2 - 1) * max_degrees
    return rotate_images(x, angles.to(x.device))


def augment_batch(x: torch.Tensor, max_shift: int = 2, flip_p: float = 0.5, max_degrees: float = 0.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Return a randomly augmented copy of ``x`` (N, C, H, W): rotation, then shift, then flip."""
    if max_degrees > 0:
        x = random_rotation(x, max_degrees, generator)
    if max_shift > 0:
        x = random_shift(x, max_shift, generator)
    if flip_p > 0:
        x = random_hflip(x, flip_p, generator)
    return x
