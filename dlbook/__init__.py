"""dlbook: reference implementations and helpers for the dlbook deep-learning course.

Chapters import what they need by module name (``from dlbook import autograd, data, train``); the
most used helpers are also available here.
"""

from .devices import device
from .metrics import record_metric
from .seed import seed_everything
from .settings import choose, fast_mode

__all__ = ["device", "record_metric", "seed_everything", "choose", "fast_mode", "HELPER_MODULES"]

# The course's tooling (checks, data, devices, metrics, plots, seeding, settings, the training loop):
# a learner's solution may use these. Every other dlbook module is a reference implementation, and the
# grader flags a solution that uses one (autograder/grading/notebook.py, ``reference_calls``).
HELPER_MODULES = frozenset({"check", "data", "devices", "metrics", "plot", "seed", "settings", "train"})
__version__ = "0.1.0"
