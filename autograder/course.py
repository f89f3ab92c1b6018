"""Course operations on top of nbgrader: release, collect, autograde, feedback, export, scores."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from .config import CHAPTERS_DIR, DEFAULT_COURSE_DIR, write_course_config

CHAPTER_PATTERN = re.compile(r"^\d\d_[a-z0-9_]+$")
STUDENT_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$")


class CourseError(RuntimeError):
    """A course operation failed; the message says what was expected."""


def list_chapters(source_dir: Path = CHAPTERS_DIR) -> list[str]:
    """Return the chapter folder names (``NN_slug``) that hold at least one notebook, in order."""
    if not source_dir.is_dir():
        raise CourseError(f"expected a chapters directory at {source_dir}")
    return sorted(
        p.name
        for p in source_dir.iterdir()
        if p.is_dir() and CHAPTER_PATTERN.match(p.name) and any(p.glob("*.ipynb"))
    )


def _check_chapter(chapter: str, source_dir: Path) -> None:
    known = list_chapters(source_dir)
    if chapter not in known:
        raise CourseError(f"unknown chapter {chapter!r}; expected one of: {', '.join(known)}")


def run_nbgrader(
    course_dir: Path,
    *args: str,
    source_dir: Path = CHAPTERS_DIR,
    fast: bool | None = None,
    quiet: bool = False,
    module: str = "nbgrader",
    warm_kernels: bool = False,
) -> str:
    """Run ``nbgrader ARGS`` in ``course_dir`` and return its log; raise :class:`CourseError` on failure.

    ``fast=True`` sets ``DLBOOK_FAST=1`` for the kernels nbgrader starts, ``False`` clears it.
    ``module`` runs another command with the same environment (``autograder.release_many``).
    ``warm_kernels``: autograde's kernels are forked from a warm template (``autograder/warm_kernels.py``).
    """
    from . import warm_kernels as warm

    write_course_config(course_dir, source_dir)
    env = dict(os.environ)
    env.pop(warm.ENV, None)
    if warm_kernels:
        env[warm.ENV] = "1"
    if fast is True:
        env["DLBOOK_FAST"] = "1"
    elif fast is False:
        env.pop("DLBOOK_FAST", None)
    env.setdefault("MPLBACKEND", "Agg")
    # nbgrader runs `alembic` and starts kernels from PATH: use this interpreter's environment.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    cmd = [sys.executable, "-m", module, *args]
    proc = subprocess.run(cmd, cwd=course_dir, env=env, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    if not quiet:
        sys.stderr.write(log)
    if proc.returncode != 0:
        tail = "\n".join(log.splitlines()[-30:])
        raise CourseError(f"`{module} {' '.join(args)}` failed (exit {proc.returncode}):\n{tail}")
    return log


RELEASE_STAMPS = ".dlbook-release"  # COURSE_DIR/.dlbook-release/<chapter>.sha256: what each release was made from


def source_fingerprint(chapter: str, source_dir: Path = CHAPTERS_DIR) -> str:
    """SHA-256 of everything a chapter's release is made from: its files (those nbgrader copies), the
    release settings (``autograder/config.py``, the preprocessors) and nbgrader's version."""
    import fnmatch
    import hashlib

    import nbgrader

    from . import config, preprocessors

    ignored = ["*.ipynb_checkpoints*", "*__pycache__*", "*.pyc", "feedback", *config.CHAPTER_PRIVATE_FILES]
    h = hashlib.sha256(f"nbgrader {nbgrader.__version__}\0".encode())
    for module in (config, preprocessors):
        h.update(Path(module.__file__).read_bytes())
    folder = Path(source_dir) / chapter
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if any(fnmatch.fnmatch(part, pattern) for part in rel.split("/") for pattern in ignored):
            continue
        h.update(rel.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def release(
    chapters: list[str] | None = None,
    course_dir: Path = DEFAULT_COURSE_DIR,
    source_dir: Path = CHAPTERS_DIR,
    quiet: bool = False,
    only_changed: bool = False,
) -> list[Path]:
    """Generate the student versions of ``chapters`` (default: all); return their release folders.

    ``only_changed``: skip a chapter whose release was made from the same sources (:func:`source_fingerprint`)
    and is still there; ``make lab`` and Binder start in seconds when nothing changed.
    """
    chapters = chapters or list_chapters(source_dir)
    todo: dict[str, str] = {}  # chapter -> fingerprint of what it is released from
    for chapter in chapters:
        _check_chapter(chapter, source_dir)
        stamp = course_dir / RELEASE_STAMPS / f"{chapter}.sha256"
        fingerprint = source_fingerprint(chapter, source_dir)
        unchanged = (stamp.is_file() and stamp.read_text().strip() == fingerprint
                     and any((course_dir / "release" / chapter).glob("*.ipynb")))
        if not (only_changed and unchanged):
            stamp.unlink(missing_ok=True)  # no stamp for a release that is being replaced
            todo[chapter] = fingerprint
    if todo:
        # one process for all of them (autograder/release_many.py); a failure leaves no stamp for any
        run_nbgrader(course_dir, str(Path(course_dir).resolve()), str(Path(source_dir).resolve()), *todo,
                     source_dir=source_dir, quiet=quiet, module="autograder.release_many")
    for chapter, fingerprint in todo.items():
        stamp = course_dir / RELEASE_STAMPS / f"{chapter}.sha256"
        stamp.parent.mkdir(parents=True, exist_ok=True)
        tmp = stamp.with_suffix(".tmp")
        tmp.write_text(fingerprint + "\n")
        tmp.replace(stamp)  # atomic: a stamp is whole or absent
    return [course_dir / "release" / chapter for chapter in chapters]


def collect(chapter: str, submissions: Path, course_dir: Path = DEFAULT_COURSE_DIR) -> list[str]:
    """Copy submissions into the course's ``submitted/`` tree; return the student ids.

    Accepts ``SUBMISSIONS/<student>/<chapter>/*.ipynb`` (nbgrader's layout) or
    ``SUBMISSIONS/<student>/*.ipynb``. The originals are only read, never modified.
    """
    submissions = Path(submissions)
    if not submissions.is_dir():
        raise CourseError(f"expected a folder of submissions at {submissions}")
    students = []
    for student_dir in sorted(p for p in submissions.iterdir() if p.is_dir()):
        inner = student_dir / chapter if (student_dir / chapter).is_dir() else student_dir
        notebooks = sorted(inner.glob("*.ipynb"))
        if not notebooks:
            continue
        if not STUDENT_PATTERN.match(student_dir.name):
            raise CourseError(
                f"student folder {student_dir.name!r} is not a valid id: expected letters, digits, '_', '.', '-', '@'"
            )
        dest = course_dir / "submitted" / student_dir.name / chapter
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        for nb in notebooks:
            shutil.copy2(nb, dest / nb.name)
        students.append(student_dir.name)
    if not students:
        raise CourseError(
            f"no submissions found in {submissions}: expected {submissions}/<student>/{chapter}/*.ipynb "
            f"or {submissions}/<student>/*.ipynb"
        )
    return students


def autograde(
    chapter: str,
    submissions: Path | None = None,
    course_dir: Path = DEFAULT_COURSE_DIR,
    source_dir: Path = CHAPTERS_DIR,
    fast: bool = True,
    quiet: bool = False,
    warm_kernels: bool = True,
    student: str | None = None,
    exclude: tuple[str, ...] = (),
) -> list[str]:
    """Autograde every submission of ``chapter`` (after collecting ``submissions`` if given).

    Grading runs the notebooks in fast mode by default: the graded test cells never depend on the
    chapter's long training runs. Each notebook's kernel is forked from a warm template unless
    ``warm_kernels`` is false (``autograder/warm_kernels.py``: what differs from a new process, and why
    that is no new risk for plain nbgrader). ``student`` grades that learner only; ``exclude`` skips
    those learners. Returns the student ids graded.
    """
    _check_chapter(chapter, source_dir)
    if not (course_dir / "release" / chapter).is_dir():
        release([chapter], course_dir, source_dir, quiet=quiet)
    if submissions is not None:
        collect(chapter, submissions, course_dir)
    submitted = course_dir / "submitted"
    students = sorted(p.name for p in submitted.iterdir() if (p / chapter).is_dir()) if submitted.is_dir() else []
    students = [s for s in students if (student is None or s == student) and s not in exclude]
    if not students:
        raise CourseError(f"nothing to grade: no {submitted}/<student>/{chapter}/ folders"
                          + (f" for {student!r}" if student else "") + (f" but {list(exclude)}" if exclude else ""))
    selection = [*([f"--student={student}"] if student else []),
                 *([f"--CourseDirectory.student_id_exclude={','.join(exclude)}"] if exclude else [])]
    run_nbgrader(course_dir, "autograde", chapter, "--force", *selection, source_dir=source_dir, fast=fast, quiet=quiet,
                 warm_kernels=warm_kernels)
    return students


def feedback(chapter: str, course_dir: Path = DEFAULT_COURSE_DIR, source_dir: Path = CHAPTERS_DIR,
             quiet: bool = False) -> Path:
    """Generate HTML feedback (hidden tests removed) for every autograded submission; return its folder."""
    _check_chapter(chapter, source_dir)
    run_nbgrader(course_dir, "generate_feedback", chapter, "--force", source_dir=source_dir, quiet=quiet)
    return course_dir / "feedback"


def export(to: Path, course_dir: Path = DEFAULT_COURSE_DIR, source_dir: Path = CHAPTERS_DIR,
           quiet: bool = False) -> Path:
    """Write every student's grades to the CSV file ``to``; return its path."""
    to = Path(to).resolve()
    to.parent.mkdir(parents=True, exist_ok=True)
    run_nbgrader(course_dir, "export", f"--CsvExportPlugin.to={to}", source_dir=source_dir, quiet=quiet)
    return to


def scores(chapter: str, course_dir: Path = DEFAULT_COURSE_DIR) -> dict[str, dict[str, tuple[float, float]]]:
    """Return ``{student: {grade_id: (score, max_score)}}`` for ``chapter`` from the gradebook."""
    from nbgrader.api import Gradebook

    result: dict[str, dict[str, tuple[float, float]]] = {}
    with Gradebook(f"sqlite:///{course_dir / 'gradebook.db'}") as gb:
        for submission in gb.assignment_submissions(chapter):
            per_cell = {}
            for notebook in submission.notebooks:
                for grade in notebook.grades:
                    score = grade.score if grade.score is not None else 0.0
                    per_cell[grade.name] = (float(score), float(grade.max_score))
            result[submission.student.id] = per_cell
    return result
