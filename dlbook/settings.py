"""Run settings shared by every chapter: fast mode for the test suite, full mode for learners."""

from __future__ import annotations

import os
from typing import TypeVar

T = TypeVar("T")

FAST_ENV = "DLBOOK_FAST"


def fast_mode() -> bool:
    """Return True when ``DLBOOK_FAST=1``: the test suite shrinks data and epochs.

    Learners never need it; full settings are what the benchmark measures.
    """
    value = os.environ.get(FAST_ENV, "").strip().lower()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise ValueError(f"{FAST_ENV} must be 1 or 0, got {value!r}")


def choose(full: T, fast: T) -> T:
    """Return ``fast`` in fast mode and ``full`` otherwise.

    >>> epochs = choose(full=30, fast=2)
    """
    return fast if fast_mode() else full
