"""Shared fixtures: the chapters, and one nbgrader course graded once per test session."""

from __future__ import annotations

import hashlib
import os
import runpy
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import pytest

from autograder import course
from autograder.config import CHAPTERS_DIR, REPO_ROOT
from autograder.grade import Settings, grade

os.environ.setdefault("MPLBACKEND", "Agg")
# One torch thread per process: the suite runs two notebooks at once on 2 cores, and oversubscribed
# torch threads slow small models down many times over. Kernels started by the tests inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# DLBOOK_CHAPTERS=02_training,03_cnn limits the notebook and pipeline tests to those chapters
# (handy while writing one); by default every chapter is tested.
CHAPTERS = course.list_chapters(CHAPTERS_DIR)
if os.environ.get("DLBOOK_CHAPTERS"):
    _wanted = set(os.environ["DLBOOK_CHAPTERS"].split(","))
    if _wanted - set(CHAPTERS):
        raise pytest.UsageError(f"DLBOOK_CHAPTERS names unknown chapters: {sorted(_wanted - set(CHAPTERS))}")
    CHAPTERS = [c for c in CHAPTERS if c in _wanted]
NOTEBOOKS = sorted(p for c in CHAPTERS for p in (CHAPTERS_DIR / c).glob("*.ipynb"))

# One deliberate bug per chapter, in chapters/NN_slug/bugs.py: SOLUTION_ID (the grade_id of a
# solution cell), CODE (appended to that cell; it wraps the correct function, so it does not depend on
# how the solution is written) and LOSES (the graded cells that must lose their points).
BUGS: dict[str, tuple[str, str, set[str]]] = {}
for _path in sorted(CHAPTERS_DIR.glob("*/bugs.py")):
    _bug = runpy.run_path(str(_path))
    BUGS[_path.parent.name] = (_bug["SOLUTION_ID"], _bug["CODE"], set(_bug["LOSES"]))


def nbgrader_meta(cell: nbformat.NotebookNode) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def fill_solutions(student_nb: nbformat.NotebookNode, source_nb: nbformat.NotebookNode,
                   extra: dict[str, str] | None = None) -> nbformat.NotebookNode:
    """Return a copy of a student notebook whose solution cells hold the instructor's answers.

    ``extra`` maps a solution grade_id to code appended to that cell (a deliberate bug).
    """
    answers = {nbgrader_meta(c)["grade_id"]: c.source for c in source_nb.cells if nbgrader_meta(c).get("solution")}
    nb = nbformat.from_dict(student_nb)
    for cell in nb.cells:
        meta = nbgrader_meta(cell)
        if meta.get("solution"):
            cell.source = answers[meta["grade_id"]] + (extra or {}).get(meta["grade_id"], "")
    return nb


def _hashes(folder: Path) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _judge_scores(reports: list[dict]) -> dict[str, dict[str, tuple[float, float]]]:
    """Return {student: {grade_id: (points, max_points)}} from ``grade``'s reports."""
    return {r["student"]: {e["grade_id"]: (e["points"], e["max_points"])
                           for n in r["notebooks"] for e in n["exercises"]} for r in reports}


def _grade_chapter(chapter: str, root: Path) -> tuple[Path, dict[Path, str], dict, dict]:
    """Release ``chapter`` into its own course directory and autograde alice, bob and carol there.

    Each chapter is graded twice: by nbgrader (``autograde``, tests in the kernel) and by the
    confined grader (``grade``, tests in the judge); both must agree.

    carol hands in only the notebook that holds the bug (her other notebooks would be alice's), which
    keeps the test suite's time down.
    """
    course_dir = root / "course" / chapter
    course.release([chapter], course_dir, quiet=True)
    subs = root / "submissions" / chapter
    for src in sorted((CHAPTERS_DIR / chapter).glob("*.ipynb")):
        student_nb = nbformat.read(course_dir / "release" / chapter / src.name, as_version=4)
        source_nb = nbformat.read(src, as_version=4)
        learners = {"alice": fill_solutions(student_nb, source_nb), "bob": student_nb}
        ids = {nbgrader_meta(c).get("grade_id") for c in source_nb.cells}
        if chapter in BUGS and BUGS[chapter][0] in ids:
            grade_id, code, _ = BUGS[chapter]
            learners["carol"] = fill_solutions(student_nb, source_nb, {grade_id: code})
        for student, nb in learners.items():
            dest = subs / student / chapter / src.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, dest)
    hashes = _hashes(subs)
    course.autograde(chapter, subs, course_dir, fast=True, quiet=True)
    batch = grade(chapter, subs, CHAPTERS_DIR, root / "graded" / chapter, workers=1,
                  settings=Settings(cell_timeout=300, notebook_budget=1200), progress=False)
    return course_dir, hashes, course.scores(chapter, course_dir), {"reports": batch.by_student,
                                                                      "scores": _judge_scores(batch.reports)}


@pytest.fixture(scope="session")
def graded(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Release every chapter, autograde three learners per chapter, return the courses and scores.

    alice submits the instructor's solutions, bob the untouched student release, carol the
    solutions with the chapter's deliberate bug. Each chapter is its own nbgrader course directory
    (its own gradebook), so chapters are graded in parallel, one per core.
    """
    root = tmp_path_factory.mktemp("course")
    result: dict = {"course_dirs": {}, "hashes": {}, "scores": {}, "judge": {}}
    workers = max(1, min(len(CHAPTERS), os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {chapter: pool.submit(_grade_chapter, chapter, root) for chapter in CHAPTERS}
        for chapter, future in futures.items():
            course_dir, hashes, scores, judged = future.result()
            result["course_dirs"][chapter] = course_dir
            result["hashes"].update(hashes)
            result["scores"][chapter] = scores
            result["judge"][chapter] = judged
    return result


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="module")
def pg():
    """A throwaway PostgreSQL 15 cluster on 127.0.0.1 (tests/servers.py), stopped after the module's tests."""
    from .servers import Postgres

    server = Postgres()
    try:
        yield server
    finally:
        server.stop()
