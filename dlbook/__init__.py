"""dlbook: reference implementations and helpers for the dlbook deep-learning course.

Chapters import what they need by module name (``from dlbook import autograd, data, train``); the
most used helpers are also available here.
"""

from .device import device
from .metrics import record_metric
from .seed import seed_everything
from .settings import choose, fast_mode

__all__ = ["device", "record_metric", "seed_everything", "choose", "fast_mode"]
__version__ = "0.1.0"
