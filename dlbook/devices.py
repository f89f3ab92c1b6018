"""Device selection: CUDA, then Apple MPS, then CPU; ``DLBOOK_DEVICE`` overrides."""

from __future__ import annotations

import os

import torch

DEVICE_ENV = "DLBOOK_DEVICE"


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def device() -> torch.device:
    """Return the torch.device chapters should compute on.

    Order: ``$DLBOOK_DEVICE`` if set (``cpu``, ``cuda``, ``cuda:1``, ``mps``), else CUDA when
    available, else Apple MPS, else CPU. An override naming a device that is not there raises,
    rather than silently running somewhere else.
    """
    requested = os.environ.get(DEVICE_ENV, "").strip()
    if requested:
        try:
            dev = torch.device(requested)
        except RuntimeError as err:
            raise ValueError(
                f"{DEVICE_ENV}={requested!r} is not a device name; expected cpu, cuda, cuda:N or mps"
            ) from err
        if dev.type not in ("cpu", "cuda", "mps"):
            raise ValueError(
                f"{DEVICE_ENV}={requested!r} names a {dev.type} device; expected cpu, cuda, cuda:N or mps"
            )
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"{DEVICE_ENV}={requested!r} but CUDA is not available here")
        if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
            raise RuntimeError(
                f"{DEVICE_ENV}={requested!r} but only {torch.cuda.device_count()} CUDA device(s)"
            )
        if dev.type == "mps" and not _mps_available():
            raise RuntimeError(f"{DEVICE_ENV}={requested!r} but Apple MPS is not available here")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def describe(dev: torch.device | None = None) -> str:
    """Return a one-line human description of ``dev`` (default: :func:`device`)."""
    dev = dev or device()
    if dev.type == "cuda":
        return f"{dev} ({torch.cuda.get_device_name(dev)})"
    if dev.type == "mps":
        return "mps (Apple GPU)"
    return f"cpu ({torch.get_num_threads()} threads)"
