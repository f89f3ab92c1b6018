"""Seeding and determinism: the one piece of global state dlbook manages."""

from __future__ import annotations

import os
import random
import sys

import numpy as np
import torch


def seed_everything(seed: int = 0, deterministic: bool = True) -> np.random.Generator:
    """Seed Python, NumPy and PyTorch (all devices); return a fresh NumPy ``Generator``.

    With ``deterministic=True`` PyTorch is asked for deterministic kernels where they exist
    (``warn_only`` so that ops without one still run) and cuDNN autotuning is switched off, so a
    re-run gives the same numbers on the same machine.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"expected seed to be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        _deterministic_algorithms()
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    return np.random.default_rng(seed)


def _deterministic_algorithms() -> None:
    """``torch.use_deterministic_algorithms(True, warn_only=True)``, without its 1.6 s import.

    That function imports ``torch._inductor.config`` (and with it much of ``torch._dynamo``, ~800
    modules) only to set Inductor's ``deterministic`` flag, which only ``torch.compile`` reads. Every
    notebook calls :func:`seed_everything` at its start, so every kernel paid it. Inductor reads the same
    flag from ``TORCHINDUCTOR_DETERMINISTIC`` when it is first imported, so that is set instead; when
    Inductor is already loaded the flag is set on it directly, as torch does. (The import still comes with
    the first ``torch.optim`` optimizer, whose methods torch wraps in ``torch._disable_dynamo``; a notebook
    that builds none is spared it, and one that does pays it once, where it builds it.)
    """
    if "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(True, warn_only=True)
        return
    os.environ["TORCHINDUCTOR_DETERMINISTIC"] = "1"
    torch._C._set_deterministic_algorithms(True, warn_only=True)
