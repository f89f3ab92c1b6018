"""dlbook: reference implementations and helpers for the dlbook deep-learning course.

Chapters import what they need by module name (``from dlbook import autograd, data, train``); the
most used helpers are also available here.
"""

from . import progress_log
from .devices import device
from .hints import hint
from .metrics import record_metric
from .seed import seed_everything
from .settings import choose, fast_mode

__all__ = ["device", "hint", "record_metric", "seed_everything", "choose", "fast_mode", "HELPER_MODULES"]

# The course's tooling (checks, data, devices, metrics, plots, seeding, settings, the training loop):
# a learner's solution may use these. Every other dlbook module is a reference implementation, and the
# grader flags a solution that uses one (autograder/grading/notebook.py, ``reference_calls``).
HELPER_MODULES = frozenset({"check", "data", "devices", "hints", "metrics", "plot", "progress", "progress_log", "seed",
                            "settings", "train"})
__version__ = "0.1.0"

# In a learner's kernel in a learner workspace (``make lab``, Binder), record each exercise check's
# outcome; anywhere else (plain Python, grading, the benchmark) this does nothing. See progress_log.
try:
    progress_log.register_hook()
except Exception as _err:  # importing dlbook must never fail over a convenience
    print(f"[dlbook] progress recording is off ({type(_err).__name__}: {_err})")
