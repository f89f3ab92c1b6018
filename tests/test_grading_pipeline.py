"""The nbgrader pipeline end to end: release, autograde, feedback, export."""

from __future__ import annotations

import csv
import hashlib
import html
import re

import nbformat
import pytest

from autograder import course

from .conftest import BUGS, CHAPTERS, CHAPTERS_DIR, nbgrader_meta

pytestmark = pytest.mark.slow


def _hidden_lines(source: str) -> list[str]:
    """Return the distinctive lines of a cell's hidden-test regions."""
    lines, inside = [], False
    for line in source.splitlines():
        if "### BEGIN HIDDEN TESTS" in line:
            inside = True
        elif "### END HIDDEN TESTS" in line:
            inside = False
        elif inside and len(line.strip()) > 25:
            lines.append(line.strip())
    return lines


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_student_release_has_no_solutions_or_hidden_tests(graded, chapter) -> None:
    release = graded["course_dir"] / "release" / chapter
    for src in sorted((CHAPTERS_DIR / chapter).glob("*.ipynb")):
        student = release / src.name
        assert student.exists(), f"{student} was not generated"
        text = student.read_text()
        for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS"):
            assert marker not in text, f"{student.name} still contains {marker!r}"
        nb = nbformat.read(student, as_version=4)
        solution_cells = [c for c in nb.cells if nbgrader_meta(c).get("solution")]
        assert solution_cells and all("raise NotImplementedError()" in c.source for c in solution_cells)
        for cell in nbformat.read(src, as_version=4).cells:
            for line in _hidden_lines(cell.source):
                assert line not in text, f"hidden test line leaked into the release: {line}"


def _totals(cells: dict[str, tuple[float, float]]) -> tuple[float, float]:
    return sum(s for s, _ in cells.values()), sum(m for _, m in cells.values())


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_solutions_get_full_marks(graded, chapter) -> None:
    cells = graded["scores"][chapter]["alice"]
    assert cells, "no graded cells recorded"
    lost = {g: sm for g, sm in cells.items() if sm[0] != sm[1]}
    assert not lost, f"the instructor's solutions lost points: {lost}"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_untouched_release_gets_zero(graded, chapter) -> None:
    cells = graded["scores"][chapter]["bob"]
    assert set(cells) == set(graded["scores"][chapter]["alice"]), "every graded cell must be recorded"
    got, total = _totals(cells)
    assert total > 0 and got == 0, f"the blank release scored {got} / {total}"


@pytest.mark.parametrize("chapter", sorted(BUGS))
def test_one_bug_loses_exactly_its_points(graded, chapter) -> None:
    _, _, broken = BUGS[chapter]
    alice, carol = graded["scores"][chapter]["alice"], graded["scores"][chapter]["carol"]
    lost = {g for g in alice if carol[g][0] < alice[g][0]}
    assert lost == broken, f"the bug should cost exactly {broken}, it cost {lost}"
    for g in broken:
        assert carol[g][0] == 0, f"{g} should score 0 with the bug, got {carol[g][0]}"


def test_submissions_are_never_modified(graded) -> None:
    for path, digest in graded["hashes"].items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, f"{path} was modified"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_feedback_hides_hidden_tests(graded, chapter) -> None:
    feedback = course.feedback(chapter, graded["course_dir"], quiet=True)
    hidden = [line for src in (CHAPTERS_DIR / chapter).glob("*.ipynb")
              for cell in nbformat.read(src, as_version=4).cells for line in _hidden_lines(cell.source)]
    assert hidden, "expected hidden tests in the source notebooks"
    pages = sorted(feedback.glob(f"*/{chapter}/*.html"))
    assert {p.parent.parent.name for p in pages} >= {"alice", "bob"}
    for page in pages:
        text = html.unescape(re.sub(r"<[^>]+>", "", page.read_text()))
        assert "BEGIN HIDDEN TESTS" not in text, f"{page} shows hidden tests"
        leaked = [line for line in hidden if line in text]
        assert not leaked, f"{page} shows hidden test code: {leaked[:2]}"


def test_grades_export_csv(graded, tmp_path) -> None:
    out = course.export(tmp_path / "grades.csv", graded["course_dir"], quiet=True)
    rows = list(csv.DictReader(out.open()))
    by_student = {}
    for row in rows:
        by_student.setdefault(row["student_id"], 0.0)
        by_student[row["student_id"]] += float(row["score"])
    assert set(by_student) >= {"alice", "bob"}
    assert by_student["bob"] == 0
    assert by_student["alice"] == sum(_totals(graded["scores"][c]["alice"])[1] for c in CHAPTERS)
