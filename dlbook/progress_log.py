"""The learner's progress file: which checks ran and passed, hints shown, metrics reached.

Only in a learner workspace. ``make lab``, ``python -m autograder workspace`` and Binder's postBuild
build ``workspace/`` and write ``workspace/.dlbook-release.json`` there; a kernel whose working
directory (the notebook's folder) or its parent holds that file is a learner's, and only there does
dlbook record anything, in ``<workspace>/.dlbook-progress.json``. Grading never looks like that:
nbgrader autograde runs in ``build/course/{submitted,autograded}/<student>/<chapter>/``, the bench
and the test suite in the source chapters or temporary folders, the confined grader in its sandbox.
``DLBOOK_PROGRESS=0`` turns recording off even in a workspace. Points never depend on this file.

When ``import dlbook`` runs inside an IPython kernel in a workspace, :func:`register_hook` adds one
``post_run_cell`` callback (once per kernel). For a cell whose first line is ``ex = "<grade_id>"`` (an
exercise's check) it records the exercise, passed or failed, and the time; on failure it prints
where the next hint is (``hint 1 of 3: `dlbook.hint('ch03_conv2d_backward')```).

The file is written through a temporary file and ``os.replace`` under a lock, so a crash never leaves
half a file and two kernels never lose each other's records; a file that cannot be read is moved
aside (``.dlbook-progress.corrupt-<time>.json``) with a warning, never silently dropped. Nothing here
raises into a learner's cell: a failure to record becomes a one-line warning.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

PROGRESS_FILE = ".dlbook-progress.json"
# Written by autograder.workspace.sync_workspace at the root of every learner workspace.
WORKSPACE_MARKER = ".dlbook-release.json"
PROGRESS_ENV = "DLBOOK_PROGRESS"
FORMAT_VERSION = 1
# The first line of every exercise's check cell (chapter 1's first notebook spells it EX).
CHECK_CELL = re.compile(r"""\A\s*(?:ex|EX)\s*=\s*["']([A-Za-z0-9_]+)["']""")
CHAPTER_FOLDER = re.compile(r"^\d\d_[a-z0-9_]+$")


class ProgressWarning(UserWarning):
    """Progress could not be read or recorded; the learner's work is unaffected."""


def recording_disabled() -> bool:
    """Return True when ``DLBOOK_PROGRESS`` is set to 0, off, no or false."""
    return os.environ.get(PROGRESS_ENV, "").strip().lower() in {"0", "off", "no", "false"}


def find_workspace(start: str | os.PathLike | None = None) -> Path | None:
    """Return the learner workspace that holds ``start`` (default: the working directory), or None.

    A workspace is a folder with ``.dlbook-release.json``; ``start`` itself or its parent (a chapter
    folder) qualifies, nothing further up, so a workspace never claims folders nested deeper inside it.
    """
    try:
        here = Path(start) if start is not None else Path.cwd()
        for folder in (here, here.parent):
            if (folder / WORKSPACE_MARKER).is_file():
                return folder
    except OSError:  # a deleted working directory, a folder we may not read (a grading sandbox)
        pass
    return None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def empty_progress() -> dict[str, Any]:
    return {"version": FORMAT_VERSION, "attempts": [], "hints": {}, "metrics": []}


def _valid(data: Any) -> bool:
    return (isinstance(data, dict) and isinstance(data.get("attempts", []), list)
            and isinstance(data.get("hints", {}), dict) and isinstance(data.get("metrics", []), list))


def load_progress(workspace: str | os.PathLike) -> dict[str, Any]:
    """Return the progress recorded in ``workspace`` (an empty record if there is none).

    A file that is not valid progress JSON is renamed to ``.dlbook-progress.corrupt-<time>.json``
    beside it, a :class:`ProgressWarning` says so, and an empty record is returned.
    """
    path = Path(workspace) / PROGRESS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return empty_progress()
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError):
        data = None
    if not _valid(data):
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        aside = path.with_name(f".dlbook-progress.corrupt-{stamp}.json")
        n = 1
        while aside.exists():
            n += 1
            aside = path.with_name(f".dlbook-progress.corrupt-{stamp}-{n}.json")
        os.replace(path, aside)
        warnings.warn(f"dlbook: {path} could not be read as progress; moved it to {aside.name} and started a "
                      f"new record (your notebooks are unaffected)", ProgressWarning, stacklevel=2)
        return empty_progress()
    out = empty_progress()
    out.update(data)
    return out


def _write_atomic(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _locked(workspace: Path) -> Iterator[None]:
    """Hold an exclusive lock on the workspace's progress (POSIX; elsewhere a no-op)."""
    try:
        import fcntl
    except ImportError:  # Windows: the atomic replace still keeps the file whole
        yield
        return
    with open(workspace / ".dlbook-progress.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def updating(workspace: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Yield the workspace's progress for changing in place; write it back atomically afterwards."""
    workspace = Path(workspace)
    with _locked(workspace):
        data = load_progress(workspace)
        yield data
        _write_atomic(workspace / PROGRESS_FILE, data)


def record_attempt(workspace: str | os.PathLike, exercise: str, passed: bool, chapter: str | None = None) -> None:
    """Append one run of ``exercise``'s check (passed or not, now) to the workspace's progress."""
    with updating(workspace) as data:
        data["attempts"].append({"exercise": exercise, "passed": bool(passed), "time": _now(),
                                 **({"chapter": chapter} if chapter else {})})


def hints_shown(workspace: str | os.PathLike, exercise: str) -> int:
    """Return how many hints of ``exercise`` the learner has seen."""
    value = load_progress(workspace)["hints"].get(exercise, 0)
    return value if isinstance(value, int) and value >= 0 else 0


def set_hints_shown(workspace: str | os.PathLike, exercise: str, count: int) -> None:
    with updating(workspace) as data:
        data["hints"][exercise] = max(int(count), int(data["hints"].get(exercise, 0) or 0))


def record_metric_value(workspace: str | os.PathLike, name: str, value: float, chapter: str | None) -> None:
    """Append a metric the learner's own run reached (``dlbook.record_metric``) to the progress."""
    notebook = os.environ.get("JPY_SESSION_NAME")  # set by jupyter_server for a notebook's kernel
    with updating(workspace) as data:
        data["metrics"].append({"name": name, "value": float(value), "time": _now(), "chapter": chapter,
                                **({"notebook": Path(notebook).name} if notebook else {})})


def chapter_of(folder: Path, workspace: Path) -> str | None:
    """Return the chapter folder name (``NN_slug``) when ``folder`` is a chapter of ``workspace``."""
    if folder.parent == workspace and CHAPTER_FOLDER.match(folder.name):
        return folder.name
    return None


# --- the IPython hook ---------------------------------------------------------------------------------
_active: dict[str, Path] = {}  # "workspace" -> the workspace while the hook is registered in this kernel


def active_workspace() -> Path | None:
    """Return the workspace this kernel records progress in, or None when recording is off."""
    return _active.get("workspace")


def _warn(message: str) -> None:
    print(f"[dlbook] {message}", file=sys.stderr)


def _post_run_cell(result: Any) -> None:
    """Record an exercise check's outcome; on failure point at the next hint. Never raises."""
    try:
        info = getattr(result, "info", None)
        match = CHECK_CELL.match(getattr(info, "raw_cell", "") or "")
        workspace = active_workspace()
        if not match or workspace is None:
            return
        exercise = match.group(1)
        passed = bool(getattr(result, "success", False))
        cwd = Path.cwd()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            record_attempt(workspace, exercise, passed, chapter_of(cwd, workspace))
            if not passed:
                from . import hints

                pointer = hints.pointer(exercise, workspace=workspace, folder=cwd)
                if pointer:
                    print(pointer)
        for w in caught:
            _warn(str(w.message))
    except Exception as err:  # a progress file must never break the learner's cell
        _warn(f"progress not recorded ({type(err).__name__}: {err})")


def register_hook(shell: Any = None, start: str | os.PathLike | None = None) -> bool:
    """Register the progress hook in an IPython kernel that runs in a learner workspace.

    Return True if the hook is (now or already) registered. Does nothing, and returns False, outside
    an IPython kernel (plain Python, a terminal IPython), outside a workspace, or with
    ``DLBOOK_PROGRESS=0``.
    """
    if shell is None:
        ipython = sys.modules.get("IPython")  # never import IPython just to find out it is not running
        shell = ipython.get_ipython() if ipython is not None else None
    if shell is None or getattr(shell, "kernel", None) is None or recording_disabled():
        return False
    workspace = find_workspace(start)
    if workspace is None:
        return False
    callbacks = shell.events.callbacks.get("post_run_cell", [])
    if not any(getattr(cb, "__module__", None) == __name__ and getattr(cb, "__name__", None) == "_post_run_cell"
               for cb in callbacks):
        shell.events.register("post_run_cell", _post_run_cell)
    _active["workspace"] = workspace.resolve()
    return True


def timestamp(text: str) -> float:
    """Return the POSIX time of an ISO time stamp written by this module (0.0 if unreadable)."""
    try:
        return datetime.fromisoformat(text).timestamp()
    except (TypeError, ValueError):
        return 0.0


__all__ = ["PROGRESS_FILE", "WORKSPACE_MARKER", "find_workspace", "load_progress", "record_attempt",
           "register_hook", "active_workspace", "hints_shown", "set_hints_shown", "record_metric_value"]
