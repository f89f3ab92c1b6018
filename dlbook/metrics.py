"""Recording a notebook's headline numbers for the benchmark (``make bench``).

A chapter calls ``record_metric("test_accuracy", acc)``. When ``$DLBOOK_METRICS_FILE`` is set (the
benchmark sets it per notebook) the value is merged into that JSON file, written atomically; it is
also printed as ``[dlbook metric] name = value`` (the tests read that line), except to a learner.
Metric names are documented in the README. In a learner's kernel in a learner workspace
(:mod:`dlbook.progress_log`) the value is added to the learner's progress file instead, for the
progress page (``python -m dlbook.progress``).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

METRICS_ENV = "DLBOOK_METRICS_FILE"


def read_metrics(path: str | os.PathLike) -> dict[str, float]:
    """Return the metrics recorded in ``path`` (an empty dict if the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return {}
    with path.open() as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path} should hold a JSON object of metrics, got {type(data).__name__}")
    return data


def record_metric(name: str, value: float) -> float:
    """Record ``value`` under ``name`` for the benchmark and return it unchanged."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"metric name must be an identifier like 'test_accuracy', got {name!r}")
    if isinstance(value, (str, bytes)):
        raise TypeError(f"metric {name!r} must be a number, got {type(value).__name__} {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"metric {name!r} must be a number, got {type(value).__name__}") from err
    if not math.isfinite(number):
        raise ValueError(f"metric {name!r} is {number}; only finite numbers can be recorded")
    from . import progress_log

    learner_workspace = progress_log.active_workspace()
    if learner_workspace is None:  # a learner reads the notebook's own sentence; tests and tools read this line
        print(f"[dlbook metric] {name} = {number:.6g}")
    target = os.environ.get(METRICS_ENV)
    if target:
        path = Path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = read_metrics(path)
        data[name] = number
        # Write to a temporary file and rename, so a crash never leaves half a JSON file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=2, sort_keys=True)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    if learner_workspace is not None:
        _record_for_learner(learner_workspace, name, number)
    return number


def _record_for_learner(workspace: Path, name: str, number: float) -> None:
    from . import progress_log

    try:
        progress_log.record_metric_value(workspace, name, number, progress_log.chapter_of(Path.cwd(), workspace))
    except Exception as err:  # the learner's run must never fail over its progress page
        print(f"[dlbook] metric not added to your progress ({type(err).__name__}: {err})")
