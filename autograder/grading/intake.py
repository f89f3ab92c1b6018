"""Intake: finding each student's notebooks in a submitted/ tree, a folder or an LMS zip."""

from __future__ import annotations

import re
import shutil
import zipfile
from pathlib import Path

from .notebook import load_submission

STUDENT_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$")
# --- one submission ------------------------------------------------------------------------------

def _ids(cells: list[dict]) -> set[str]:
    return {c["meta"].get("grade_id") for c in cells if isinstance(c["meta"].get("grade_id"), str)}


def match_notebooks(ref_names: list[str], ref_ids: dict[str, set[str]], folder: Path) -> dict[str, tuple]:
    """Return ``{reference name: (path or None, cells or None, error or None)}`` for a submission folder.

    A notebook is found by its name, else (renamed) by the grade_ids it contains.
    """
    files = sorted(folder.glob("*.ipynb")) if folder.is_dir() else []
    parsed: dict[Path, tuple] = {}
    for f in files:
        try:
            parsed[f] = (load_submission(f), None)
        except (ValueError, OSError) as err:
            parsed[f] = (None, str(err))
    out, used = {}, set()
    for name in ref_names:
        if folder / name in parsed:
            out[name] = (folder / name, *parsed[folder / name])
            used.add(folder / name)
    for name in ref_names:
        if name in out:
            continue
        best = max(((len(_ids(c) & ref_ids[name]), f) for f, (c, _) in parsed.items() if f not in used and c),
                   default=(0, None))
        if best[0] > 0:
            out[name] = (best[1], *parsed[best[1]])
            used.add(best[1])
    unmatched = [f for f in parsed if f not in used]
    missing = [n for n in ref_names if n not in out]
    if len(missing) == 1 and len(unmatched) == 1:  # one unreadable or unrecognisable file: that one
        out[missing[0]] = (unmatched[0], *parsed[unmatched[0]])
    for name in ref_names:
        out.setdefault(name, (None, None, "no such notebook in the submission"))
    return out


# --- a batch -----------------------------------------------------------------------------------

def _safe_extract(archive: Path, dest: Path, max_bytes: int = 2 << 30) -> None:
    """Extract a zip without letting a member escape ``dest`` or the total exceed ``max_bytes``."""
    total = 0
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            name = Path(info.filename)
            if info.is_dir() or name.is_absolute() or ".." in name.parts or info.filename.startswith("__MACOSX"):
                continue
            total += info.file_size
            if total > max_bytes:
                raise ValueError(f"{archive} unpacks to more than {max_bytes} bytes")
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)


def discover(submissions: Path, assignment: str, scratch: Path) -> tuple[dict[str, Path], list[str]]:
    """Return ({student: folder}, problems) from an nbgrader ``submitted/`` tree, a folder, or an LMS zip.

    Layouts: ``<student>/<assignment>/*.ipynb``, ``<student>/*.ipynb``, or loose files named
    ``<student>_<anything>.ipynb`` (the LMS pattern: the student id is everything before the first
    ``_``). In a zip, the same layouts, possibly under one top folder.
    """
    submissions = Path(submissions)
    if submissions.is_file() and zipfile.is_zipfile(submissions):
        root = scratch / "unzipped"
        _safe_extract(submissions, root)
        entries = [p for p in root.iterdir() if not p.name.startswith(".")]
        top = entries[0] if len(entries) == 1 and entries[0].is_dir() else None
        if top and not any(top.glob("*.ipynb")) and not (top / assignment).is_dir() and \
                any(top.glob("*/*.ipynb")) | any(top.glob("*/*/*.ipynb")):
            root = top  # one wrapping folder around the students' folders
        submissions = root
    if not submissions.is_dir():
        raise FileNotFoundError(f"expected a folder of submissions or a zip at {submissions}")
    students: dict[str, Path] = {}
    problems: list[str] = []
    for d in sorted(p for p in submissions.iterdir() if p.is_dir()):
        inner = d / assignment if (d / assignment).is_dir() else d
        if not any(inner.glob("*.ipynb")):
            continue
        if not STUDENT_PATTERN.match(d.name):
            problems.append(f"skipped folder {d.name!r}: not a valid student id")
            continue
        students[d.name] = inner
    loose = sorted(submissions.glob("*.ipynb"))
    for f in loose:
        student = f.name.split("_", 1)[0]
        if "_" not in f.name or not STUDENT_PATTERN.match(student):
            problems.append(f"skipped {f.name!r}: expected <student>_<anything>.ipynb")
            continue
        target = scratch / "lms" / student
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, target / f.name.split("_", 1)[1])
        students.setdefault(student, target)
    return students, problems


