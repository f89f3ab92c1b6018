"""The nbgrader pipeline end to end: release, autograde, feedback, export."""

from __future__ import annotations

import csv
import hashlib
import html
import json
import re

import nbformat
import pytest

from autograder import variants
from autograder.bench import load_targets
from autograder.config import CHAPTER_PRIVATE_FILES

from .conftest import BUGS, CHAPTERS, CHAPTERS_DIR, VARIANT_SECRET, bug_loses, nbgrader_meta
from .servers import mentioning, wait_gone

pytestmark = pytest.mark.slow


def _split_hidden(source: str) -> tuple[list[str], list[str]]:
    """Return the stripped lines of a cell (hidden-test regions, everything else)."""
    hidden, visible, inside = [], [], False
    for line in source.splitlines():
        if "### BEGIN HIDDEN TESTS" in line:
            inside = True
        elif "### END HIDDEN TESTS" in line:
            inside = False
        else:
            (hidden if inside else visible).append(line.strip())
    return hidden, visible


def _hidden_only_lines(notebook: nbformat.NotebookNode) -> list[str]:
    """Return the distinctive hidden-test lines that appear nowhere else in ``notebook``.

    A line such as ``with check.forbidden(...)`` may also sit (whole or as part of a longer line) in
    a visible check; seeing it in the feedback is then no leak.
    """
    hidden, visible = set(), set()
    for cell in notebook.cells:
        h, v = _split_hidden(cell.source)
        hidden.update(line for line in h if len(line) > 25)
        visible.update(v)
    visible_text = "\n".join(visible)
    return sorted(line for line in hidden if line not in visible_text)


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_student_release_has_no_solutions_or_hidden_tests(graded, chapter) -> None:
    release = graded["course_dirs"][chapter] / "release" / chapter
    leaked = {p.name for p in release.rglob("*")} & set(CHAPTER_PRIVATE_FILES)
    assert not leaked, f"the maintainer's {sorted(leaked)} reached the student release"
    for src in sorted((CHAPTERS_DIR / chapter).glob("*.ipynb")):
        student = release / src.name
        assert student.exists(), f"{student} was not generated"
        text = student.read_text()
        for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS"):
            assert marker not in text, f"{student.name} still contains {marker!r}"
        nb = nbformat.read(student, as_version=4)
        solution_cells = [c for c in nb.cells if nbgrader_meta(c).get("solution")]
        assert solution_cells and all("raise NotImplementedError()" in c.source for c in solution_cells)
        for line in _hidden_only_lines(nbformat.read(src, as_version=4)):
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


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_every_chapter_has_a_deliberate_bug_and_targets(chapter) -> None:
    assert BUGS.get(chapter), f"add chapters/{chapter}/bugs.py with a list BUGS (solution_id, code, loses)"
    for bug in BUGS[chapter]:
        homes = [src.name for src in sorted((CHAPTERS_DIR / chapter).glob("*.ipynb"))
                 if bug.solution_id in {nbgrader_meta(c).get("grade_id")
                                        for c in nbformat.read(src, as_version=4).cells}]
        assert len(homes) == 1, f"{chapter}/bugs.py: {bug.solution_id} is in {homes or 'no notebook'}, expected one"
    targets = load_targets()
    for src in sorted((CHAPTERS_DIR / chapter).glob("*.ipynb")):
        rel = f"chapters/{chapter}/{src.name}"
        assert "seconds" in targets.get(rel, {}), (
            f"add a seconds target for {src.name} to chapters/{chapter}/targets.json"
        )


@pytest.mark.parametrize("chapter", [c for c in CHAPTERS if c in BUGS])
def test_each_bug_loses_exactly_its_points(graded, chapter) -> None:
    broken = bug_loses(chapter)
    solution_ids = {bug.solution_id for bug in BUGS[chapter]}
    graded_ids: set[str] = set()
    for src in sorted((CHAPTERS_DIR / chapter).glob("*.ipynb")):
        cells = [nbgrader_meta(c) for c in nbformat.read(src, as_version=4).cells]
        if solution_ids & {m.get("grade_id") for m in cells}:
            graded_ids |= {m["grade_id"] for m in cells if m.get("grade")}
    alice, carol = graded["scores"][chapter]["alice"], graded["scores"][chapter]["carol"]
    assert broken <= graded_ids, f"LOSES names cells outside the notebooks that hold the bugs: {broken - graded_ids}"
    # carol handed in only the notebooks with a bug; compare the cells of those notebooks
    lost = {g for g in graded_ids if carol[g][0] < alice[g][0]}
    assert lost == broken, f"the bugs should cost exactly {sorted(broken)}, they cost {sorted(lost)}"
    for g in broken:
        assert carol[g][0] == 0, f"{g} should score 0 with the bug, got {carol[g][0]}"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_judge_agrees_with_nbgrader(graded, chapter) -> None:
    """The confined grader (tests in the judge) gives every learner the points nbgrader gives (tests in the kernel)."""
    judged = graded["judge"][chapter]
    for student, cells in graded["scores"][chapter].items():
        report = judged["reports"][student]
        assert report["status"] == "graded", f"{student}: {report['flags']}"
        got = judged["scores"][student]
        for grade_id, (points, max_points) in cells.items():
            if student == "carol" and grade_id not in got:
                continue  # carol handed in only the notebooks with a bug
            assert got.get(grade_id, (None, None))[1] == max_points, f"{student} {grade_id}: max points differ"
            assert got[grade_id][0] == points, (
                f"{student} {grade_id}: the judge gave {got[grade_id][0]}, nbgrader {points}: "
                f"{[e['error'] for n in report['notebooks'] for e in n['exercises'] if e['grade_id'] == grade_id]}")


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_judge_full_marks_zero_and_the_bug(graded, chapter) -> None:
    judged = graded["judge"][chapter]
    alice, bob = judged["reports"]["alice"], judged["reports"]["bob"]
    assert alice["points"] == alice["max_points"] > 0, [e for n in alice["notebooks"] for e in n["exercises"]
                                                        if e["status"] != "passed"]
    assert bob["points"] == 0
    honest_flags = [f for f in alice["flags"] if not f.startswith("renamed")]
    assert not honest_flags, f"the instructor's solutions were flagged: {honest_flags}"
    # every cell ran in the judge's sandbox as in nbgrader's kernel (test_notebooks_execute), not only the tests
    broken = [(nb["notebook"], c["index"], c["status"], (c["error"] or "")[:300]) for nb in alice["notebooks"]
              for c in nb["cells"]]
    assert not broken, f"the instructor's solutions did not run cleanly in the sandbox: {broken}"
    for nb in alice["notebooks"]:  # alice was graded with her own per-learner values (conftest._prepare_chapter)
        source = json.loads((CHAPTERS_DIR / chapter / nb["notebook"]).read_text())
        if variants.declarations(source):
            mine = variants.learner_values(source, VARIANT_SECRET, "alice")
            assert nb["variant"]["values"] == mine != variants.notebook_values(source), nb["notebook"]
    if chapter in BUGS:  # carol handed in only the notebooks with a bug: compare the exercises of those
        carol = judged["reports"]["carol"]
        lost = {e["grade_id"] for n in carol["notebooks"] if n["status"] == "graded" for e in n["exercises"]
                if e["points"] < e["max_points"]}
        expected = bug_loses(chapter)
        assert lost == expected, f"the bugs should cost exactly {sorted(expected)}, they cost {sorted(lost)}"


def test_submissions_are_never_modified(graded) -> None:
    for path, digest in graded["hashes"].items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, f"{path} was modified"


def test_warm_kernels_and_their_server_end_with_nbgrader(graded) -> None:
    """bob and carol were autograded in warm kernels (autograder/warm_kernels.py), which end with nbgrader."""
    for chapter in CHAPTERS:
        bob = graded["course_dirs"][chapter] / "autograded" / "bob" / chapter
        assert any(bob.glob("*.ipynb")), f"nbgrader autograded no notebook of bob's in {chapter}"
    assert not wait_gone(mentioning("warm_kernels.py"), timeout=10.0), "a warm-kernel server outlived nbgrader"
    # chapter 8's kernels started dlbook.distributed's warm launcher, which ends with its kernel (this test
    # process's own, from the distributed tests, is closed first)
    from dlbook import distributed

    if distributed._SERVER is not None:
        distributed._SERVER.close()
    assert not wait_gone(mentioning("dlbook.distributed --server"), timeout=10.0), "a warm launcher outlived its kernel"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_feedback_hides_hidden_tests(graded, chapter) -> None:
    feedback = graded["feedback"][chapter]  # course.feedback, run by the fixture's nbgrader job
    hidden = {src.stem: _hidden_only_lines(nbformat.read(src, as_version=4))
              for src in (CHAPTERS_DIR / chapter).glob("*.ipynb")}
    assert any(hidden.values()), "expected hidden tests in the source notebooks"
    pages = sorted(feedback.glob(f"*/{chapter}/*.html"))
    assert {p.parent.parent.name for p in pages} >= {"alice", "bob"}
    for page in pages:
        text = html.unescape(re.sub(r"<[^>]+>", "", page.read_text()))
        assert "BEGIN HIDDEN TESTS" not in text, f"{page} shows hidden tests"
        leaked = [line for line in hidden[page.stem] if line in text]
        assert not leaked, f"{page} shows hidden test code: {leaked[:2]}"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_grades_export_csv(graded, chapter) -> None:
    out = graded["grades_csv"][chapter]  # course.export, run by the fixture's nbgrader job
    rows = list(csv.DictReader(out.open()))
    by_student = {}
    for row in rows:
        by_student.setdefault(row["student_id"], 0.0)
        by_student[row["student_id"]] += float(row["score"])
    assert set(by_student) >= {"alice", "bob"}
    assert by_student["bob"] == 0
    assert by_student["alice"] == _totals(graded["scores"][chapter]["alice"])[1]
