"""Shared fixtures: the chapters, and one nbgrader course graded once per test session."""

from __future__ import annotations

import hashlib
import os
import queue
import runpy
import shutil
import threading
from pathlib import Path
from typing import NamedTuple

import nbformat
import pytest

from autograder import course, variants
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

# Deliberate bugs, in chapters/NN_slug/bugs.py: a list BUGS of {"solution_id" (the grade_id of a
# solution cell), "code" (appended to that cell; it wraps the correct function, so it does not depend
# on how the solution is written), "loses" (the graded cells that must lose their points)}. carol hands
# in the solutions with every bug of her chapter, and only the notebooks that hold one.
class Bug(NamedTuple):
    solution_id: str
    code: str
    loses: frozenset[str]


BUGS: dict[str, list[Bug]] = {}
for _path in sorted(CHAPTERS_DIR.glob("*/bugs.py")):
    BUGS[_path.parent.name] = [Bug(b["solution_id"], b["code"], frozenset(b["loses"]))
                               for b in runpy.run_path(str(_path))["BUGS"]]


def bug_loses(chapter: str) -> set[str]:
    """The graded cells that carol's bugs must cost her, all of them."""
    return {g for bug in BUGS.get(chapter, []) for g in bug.loses}


def nbgrader_meta(cell: nbformat.NotebookNode) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


# the course secret of the graded chapters' per-learner releases (alice's)
VARIANT_SECRET = b"the test suite's course secret"


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


def _prepare_chapter(chapter: str, root: Path) -> tuple[Path, Path, dict[Path, str]]:
    """Release ``chapter`` into its own course directory and write alice's, bob's and carol's submissions.

    carol hands in only the notebooks that hold a bug (her other notebooks would be alice's), which
    keeps the test suite's time down.

    alice works on her own per-learner release (:mod:`autograder.variants`: the exercises that declare
    variants hold her values, not the instructor's) and the judge grades her with them, so each chapter's
    variants are checked with a learner's values at no extra cost; nbgrader, bob and carol use the defaults.
    The secret is passed, never read from ``$DLBOOK_COURSE_SECRET`` (a test may set that meanwhile).
    Returns the course directory, the submissions folder and the submissions' SHA-256 before grading.
    """
    course_dir = root / "course" / chapter
    course.release([chapter], course_dir, quiet=True)
    subs = root / "submissions" / chapter
    for src in sorted((CHAPTERS_DIR / chapter).glob("*.ipynb")):
        student_nb = nbformat.read(course_dir / "release" / chapter / src.name, as_version=4)
        source_nb = nbformat.read(src, as_version=4)
        alice_nb = nbformat.from_dict(variants.personalise(student_nb, VARIANT_SECRET, "alice"))
        learners = {"alice": fill_solutions(alice_nb, source_nb), "bob": student_nb}
        ids = {nbgrader_meta(c).get("grade_id") for c in source_nb.cells}
        bugs = {bug.solution_id: bug.code for bug in BUGS.get(chapter, []) if bug.solution_id in ids}
        if bugs:
            learners["carol"] = fill_solutions(student_nb, source_nb, bugs)
        for student, nb in learners.items():
            dest = subs / student / chapter / src.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, dest)
    # what else the release holds (chapter 8's ddp_train.py, hints.json) is in every learner's folder, as
    # their fetched and submitted assignment would have it
    for extra in sorted(p for p in (course_dir / "release" / chapter).iterdir() if p.suffix != ".ipynb"):
        for folder in sorted(subs.glob(f"*/{chapter}")):
            shutil.copy(extra, folder / extra.name)
    return course_dir, subs, _hashes(subs)


def _grade_with_nbgrader(chapter: str, root: Path, prepared: tuple) -> dict:
    """nbgrader's autograde (tests in the kernel), feedback and export; returns the scores
    ({student: {grade_id: (points, max)}}), the feedback folder and the grades CSV.

    alice's notebooks run in new kernel processes, as a learner's do in JupyterLab: her autograded
    notebooks are the execution check of every source notebook (test_notebooks_execute), which must not
    lean on what a warm kernel has imported already. bob and carol are graded in warm kernels, as
    ``make autograde`` does by default (``autograder/warm_kernels.py``).
    """
    course_dir, subs, _ = prepared
    course.autograde(chapter, subs, course_dir, fast=True, quiet=True, student="alice", warm_kernels=False)
    course.autograde(chapter, None, course_dir, fast=True, quiet=True, exclude=("alice",), warm_kernels=True)
    # the feedback pages and the grades export are made here too, in parallel with the other jobs; the
    # pipeline tests check them
    return {"scores": course.scores(chapter, course_dir), "feedback": course.feedback(chapter, course_dir, quiet=True),
            "grades_csv": course.export(root / "grades" / f"{chapter}.csv", course_dir, quiet=True)}


def _grade_with_judge(chapter: str, root: Path, prepared: tuple) -> dict:
    """The confined grader (``grade``, tests in the judge), alice with her own values."""
    _, subs, _ = prepared
    batch = grade(chapter, subs, CHAPTERS_DIR, root / "graded" / chapter, workers=1,
                  # one torch thread per kernel: two jobs are graded at once, on 2 cores
                  settings=Settings(cell_timeout=300, notebook_budget=1200, threads=1), progress=False,
                  variants=variants.GradingVariants(VARIANT_SECRET, frozenset({"alice"})))
    return {"reports": batch.by_student, "scores": _judge_scores(batch.reports)}


class _ChapterGrading:
    """Grades every chapter twice, by nbgrader and by the judge, as separate jobs taken from a queue.

    Each chapter is released and its submissions written once (:func:`_prepare_chapter`, by whichever of
    its two jobs comes first); the two graders then work independently (nbgrader in the chapter's course
    directory, the judge into its own folder). The longest jobs go first (estimated from the number of
    notebooks; nbgrader's take about 1.5 times the judge's), and jobs this small leave no long chapter
    grading alone at the end. One thread starts with the session, so the chapters are graded while the
    tests that do not need them run; the ``graded`` fixture adds threads up to one per core and waits.
    Stopping lets the running jobs finish (their kernels and servers are shut down by the code that
    started them) and starts no new one.
    """

    GRADERS = {"nbgrader": (_grade_with_nbgrader, 1.5), "judge": (_grade_with_judge, 1.0)}

    def __init__(self, root: Path, chapters: list[str]) -> None:
        self.root = root
        self.todo: queue.Queue[tuple[str, str]] = queue.Queue()
        size = {c: len(list((CHAPTERS_DIR / c).glob("*.ipynb"))) for c in chapters}
        jobs = [(chapter, grader) for chapter in chapters for grader in self.GRADERS]
        for job in sorted(jobs, key=lambda j: -size[j[0]] * self.GRADERS[j[1]][1]):
            self.todo.put(job)
        self.prepared: dict[str, tuple] = {}
        self.locks = {chapter: threading.Lock() for chapter in chapters}
        self.results: dict[tuple[str, str], object] = {}
        self.errors: dict[str, BaseException] = {}
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []

    def add_threads(self, total: int) -> None:
        while len(self.threads) < total:
            thread = threading.Thread(target=self._work, name=f"grading-{len(self.threads)}")
            thread.start()
            self.threads.append(thread)

    def _prepare(self, chapter: str) -> tuple:
        with self.locks[chapter]:
            if chapter not in self.prepared:
                self.prepared[chapter] = _prepare_chapter(chapter, self.root)
            return self.prepared[chapter]

    def _work(self) -> None:
        while not self.stopping.is_set():
            try:
                chapter, grader = self.todo.get_nowait()
            except queue.Empty:
                return
            try:
                self.results[chapter, grader] = self.GRADERS[grader][0](chapter, self.root, self._prepare(chapter))
            except BaseException as err:  # noqa: BLE001 - reported by the graded fixture
                self.errors[f"{chapter} ({grader})"] = err

    def wait(self) -> None:
        for thread in self.threads:
            thread.join()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the modules that use ``graded`` last, so the chapters are graded while everything else runs."""
    uses = {item.module.__name__ for item in items if "graded" in getattr(item, "fixturenames", ())
            and getattr(item, "module", None) is not None}
    items.sort(key=lambda item: getattr(getattr(item, "module", None), "__name__", "") in uses)


@pytest.fixture(scope="session", autouse=True)
def _chapter_grading(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """Start grading the chapters with the session's first test, if any test of the session needs them."""
    if not any("graded" in getattr(item, "fixturenames", ()) for item in request.session.items):
        yield None
        return
    grading = _ChapterGrading(tmp_path_factory.mktemp("course"), CHAPTERS)
    grading.add_threads(1)
    try:
        yield grading
    finally:
        grading.stopping.set()
        grading.wait()


@pytest.fixture(scope="session")
def graded(_chapter_grading: _ChapterGrading) -> dict:
    """Release every chapter, autograde three learners per chapter, return the courses and scores.

    alice submits the instructor's solutions, bob the untouched student release, carol the
    solutions with the chapter's deliberate bugs. Each chapter is its own nbgrader course directory
    (its own gradebook); nbgrader and the judge grade it in separate jobs, two at a time on 2 cores.
    """
    grading = _chapter_grading
    grading.add_threads(max(1, min(len(CHAPTERS), os.cpu_count() or 1)))
    grading.wait()
    if grading.errors:
        chapter, err = next(iter(grading.errors.items()))
        raise RuntimeError(f"grading {sorted(grading.errors)} failed; {chapter}: {type(err).__name__}: {err}") from err
    result: dict = {"course_dirs": {}, "hashes": {}, "scores": {}, "judge": {}, "feedback": {}, "grades_csv": {}}
    for chapter in CHAPTERS:
        course_dir, _, hashes = grading.prepared[chapter]
        result["course_dirs"][chapter] = course_dir
        result["hashes"].update(hashes)
        for key in ("scores", "feedback", "grades_csv"):
            result[key][chapter] = grading.results[chapter, "nbgrader"][key]
        result["judge"][chapter] = grading.results[chapter, "judge"]
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
