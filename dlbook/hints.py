"""Progressive hints for the exercises: ``dlbook.hint("ch03_conv2d_backward")`` shows the next one.

Each chapter folder has ``hints.json``, ``{grade_id: [hint 1, hint 2, hint 3]}``: from the idea, to
the shape or the NumPy function family, to the common mistake; none holds solution code. nbgrader copies
it into the student release beside the notebooks, and ``make lab`` into the workspace.

Where the hints are looked up: the folder given, else the kernel's working directory (the notebook's
folder), else the exercise's chapter folder below it (``ch03_...`` -> ``03_*/``), else the course's
``chapters/`` folder next to the installed package. If the course updated ``hints.json``, the workspace
also holds ``hints.updated-<hash>.json`` (``make lab`` never overwrites): the newest file wins.

How many hints were shown is remembered in the workspace's progress file (:mod:`dlbook.progress_log`)
in a learner workspace, and for the session elsewhere.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from . import progress_log

HINTS_FILE = "hints.json"
COURSE_CHAPTERS = Path(__file__).resolve().parent.parent / "chapters"
GRADE_ID = re.compile(r"^ch(\d\d)_[a-z0-9_]+$")

_session_shown: dict[str, int] = {}  # outside a workspace: hints shown in this session


def _candidates(folder: Path) -> list[Path]:
    files = [folder / HINTS_FILE, *folder.glob("hints.updated-*.json")]
    return sorted((p for p in files if p.is_file()), key=lambda p: p.stat().st_mtime, reverse=True)


def _search_folders(grade_id: str, folder: str | os.PathLike | None) -> list[Path]:
    here = Path(folder) if folder is not None else Path.cwd()
    folders = [here]
    match = GRADE_ID.match(grade_id)
    if match:
        for base in (here, here.parent, COURSE_CHAPTERS):
            folders.extend(sorted(base.glob(f"{match.group(1)}_*")))
    return folders


def load_hints(grade_id: str, folder: str | os.PathLike | None = None) -> list[str] | None:
    """Return the hints of ``grade_id`` (a list of strings), or None if no hints file has them."""
    for place in _search_folders(grade_id, folder):
        for path in _candidates(place):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            hints = data.get(grade_id) if isinstance(data, dict) else None
            if isinstance(hints, list) and hints and all(isinstance(h, str) for h in hints):
                return hints
    return None


def _shown(grade_id: str, workspace: Path | None) -> int:
    if workspace is not None:
        return progress_log.hints_shown(workspace, grade_id)
    return _session_shown.get(grade_id, 0)


def _set_shown(grade_id: str, count: int, workspace: Path | None) -> None:
    if workspace is not None:
        progress_log.set_hints_shown(workspace, grade_id, count)
    else:
        _session_shown[grade_id] = max(count, _session_shown.get(grade_id, 0))


def _workspace(folder: str | os.PathLike | None) -> Path | None:
    if progress_log.recording_disabled():
        return None
    return progress_log.find_workspace(folder)


def hint(grade_id: str, number: int | None = None, folder: str | os.PathLike | None = None) -> None:
    """Print the next hint for exercise ``grade_id`` (or hint ``number``, counted from 1); return None.

    After the last hint it says there are no more and points at the chapter text. ``folder``: where
    to look for ``hints.json`` (default: the working directory, i.e. the notebook's folder).
    """
    hints = load_hints(grade_id, folder)
    if hints is None:
        message = (f"No hints found for {grade_id!r}: expected {HINTS_FILE} beside the notebook (its chapter folder) "
                   f"with an entry for it. Check the spelling: it is the `ex = \"...\"` line of the exercise's check.")
        print(message)
        return None
    total = len(hints)
    workspace = _workspace(folder)
    if number is None:
        shown = _shown(grade_id, workspace)
        if shown >= total:
            message = (f"No more hints for {grade_id} (all {total} shown; `dlbook.hint({grade_id!r}, 1)` shows one "
                       f"again). Reread the chapter text just above the exercise and the function's docstring, "
                       f"and compare with what the check's message says is wrong.")
            print(message)
            return None
        number = shown + 1
    elif not 1 <= number <= total:
        raise ValueError(f"{grade_id} has hints 1 to {total}, got number={number}")
    message = f"hint {number} of {total} for {grade_id}: {hints[number - 1]}"
    print(message)
    try:
        _set_shown(grade_id, number, workspace)
    except Exception as err:  # the hint was shown; remembering it is a courtesy
        print(f"[dlbook] could not remember the hint count ({type(err).__name__}: {err})")
    return None


def pointer(grade_id: str, workspace: Path | None = None, folder: str | os.PathLike | None = None) -> str | None:
    """Return the line shown after a failed check (``hint 2 of 3: `dlbook.hint(...)```), or None without hints."""
    hints = load_hints(grade_id, folder)
    if hints is None:
        return None
    shown = _shown(grade_id, workspace)
    if shown >= len(hints):
        return f"all {len(hints)} hints for {grade_id} shown: `dlbook.hint({grade_id!r}, 1)` shows the first again"
    return f"hint {shown + 1} of {len(hints)}: `dlbook.hint({grade_id!r})`"
