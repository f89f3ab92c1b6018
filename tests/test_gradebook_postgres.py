"""The gradebook on a real PostgreSQL server: set up on first use, one transaction per submission,
re-runs in place, concurrent writers, and the LMS exports. No notebook is run here (fake reports)."""

from __future__ import annotations

import csv
import multiprocessing

import nbformat
import pytest

from autograder.grading.export import export_grades
from autograder.grading.gradebook import GradebookStore, normalize_url

from .servers import PG_BIN, Postgres

pytestmark = pytest.mark.skipif(not (PG_BIN / "initdb").exists(),
                                reason=f"PostgreSQL 15 is not installed ({PG_BIN}; Debian package postgresql)")

STUDENTS = [f"s{i:03d}" for i in range(25)]


def _reference(chapter: str) -> bytes:
    """A source notebook with two graded cells (2 and 3 points) and one solution cell."""
    nb = nbformat.v4.new_notebook()
    meta = lambda gid, **kw: {"nbgrader": {"grade_id": gid, "schema_version": 3, **kw}}  # noqa: E731
    nb.cells = [nbformat.v4.new_code_cell("x = 1", metadata=meta(f"{chapter}_sol", solution=True, grade=False)),
                nbformat.v4.new_code_cell("assert x", metadata=meta(f"{chapter}_a", grade=True, points=2)),
                nbformat.v4.new_code_cell("assert x", metadata=meta(f"{chapter}_b", grade=True, points=3))]
    return nbformat.writes(nb).encode()


def _report(chapter: str, student: str, a: float, b: float, status: str = "graded") -> dict:
    exercises = [{"grade_id": f"{chapter}_a", "points": a, "max_points": 2},
                 {"grade_id": f"{chapter}_b", "points": b, "max_points": 3}]
    return {"student": student, "assignment": chapter, "status": status, "points": a + b, "max_points": 5,
            "flags": [], "worker": "test", "notebooks": [{"notebook": "nb.ipynb", "flags": [], "exercises": exercises}]}


def _grade_all(url: str, chapter: str, barrier) -> None:
    barrier.wait()  # both processes set up the schema and write at the same moment
    with GradebookStore(url, chapter, {"nb.ipynb": _reference(chapter)}) as store:
        for i, student in enumerate(STUDENTS):
            store.record(_report(chapter, student, 2, i % 4), f"sha-{student}", "refs")


@pytest.fixture(scope="module")
def two_chapters(pg) -> str:
    """Two processes, one chapter each, the same students, a fresh database: schema and rows at once."""
    url = pg.create_database("two")
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_grade_all, args=(url, chapter, barrier)) for chapter in ("ch_a", "ch_b")]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(120)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    assert [p.exitcode for p in procs] == [0, 0], "a concurrent writer failed (see its traceback above)"
    return url


def _count(pg: Postgres, sql: str) -> int:
    return pg.query("two", sql)[0][0]


def test_concurrent_writers_create_each_row_once(pg, two_chapters) -> None:
    assert _count(pg, "SELECT count(*) FROM student") == len(STUDENTS)
    assert _count(pg, "SELECT count(*) FROM course") == 1
    assert _count(pg, "SELECT count(*) FROM submitted_assignment") == 2 * len(STUDENTS)
    assert _count(pg, "SELECT count(*) FROM grade") == 2 * 2 * len(STUDENTS)
    assert _count(pg, "SELECT count(*) FROM dlbook_graded") == 2 * len(STUDENTS)
    assert pg.query("two", "SELECT sum(auto_score) FROM grade")[0][0] == 2 * sum(2 + i % 4 for i in range(25))


def test_recording_again_updates_in_place(pg, two_chapters) -> None:
    tables = ("student", "submitted_assignment", "submitted_notebook", "grade", "dlbook_graded")
    before = {t: _count(pg, f"SELECT count(*) FROM {t}") for t in tables}
    with GradebookStore(two_chapters, "ch_a", {"nb.ipynb": _reference("ch_a")}) as store:
        store.record(_report("ch_a", "s001", 0, 0), "sha-new", "refs")
        store.record(_report("ch_a", "s002", 0, 0, status="crashed") | {"notebooks": []}, "sha-x", "refs")
        graded = store.graded()
    assert {t: _count(pg, f"SELECT count(*) FROM {t}") for t in tables} == before
    assert graded["s001"]["submission_sha256"] == "sha-new" and graded["s001"]["report"]["points"] == 0
    assert graded["s002"]["status"] == "crashed"
    scores = dict(pg.query("two", "SELECT sa.student_id, sum(g.auto_score) FROM grade g JOIN submitted_notebook sn "
                                  "ON sn.id = g.notebook_id JOIN submitted_assignment sa ON sa.id = sn.assignment_id "
                                  "JOIN assignment a ON a.id = sa.assignment_id WHERE a.name = 'ch_a' "
                                  "GROUP BY sa.student_id"))
    assert scores["s001"] == 0 and scores["s002"] is None, "a crashed grading keeps no old score"


def test_a_failed_transaction_leaves_nothing_half_written(pg, two_chapters) -> None:
    with GradebookStore(two_chapters, "ch_b", {"nb.ipynb": _reference("ch_b")}) as store:
        bad = _report("ch_b", "s_new", 1, 1)
        bad["status"] = None  # NOT NULL in dlbook_graded: the whole transaction must roll back
        with pytest.raises(Exception, match="status"):
            store.record(bad, "sha", "refs")
    assert _count(pg, "SELECT count(*) FROM student WHERE id = 's_new'") == 0
    assert _count(pg, "SELECT count(*) FROM submitted_assignment WHERE student_id = 's_new'") == 0


def _read(path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_exports_for_canvas_moodle_and_csv(pg, two_chapters, tmp_path) -> None:
    url = pg.create_database("export")
    with GradebookStore(url, "ch_a", {"nb.ipynb": _reference("ch_a")}) as store:
        store.record(_report("ch_a", "ann", 2, 3), "x", "r")
        store.record(_report("ch_a", "ben", 2, 0), "y", "r")
    with GradebookStore(url, "ch_b", {"nb.ipynb": _reference("ch_b")}) as store:
        store.record(_report("ch_b", "ann", 0, 1), "z", "r")
    canvas = _read(export_grades(url, "canvas", tmp_path / "canvas.csv"))
    assert canvas[0] == ["Student", "ID", "SIS User ID", "SIS Login ID", "Section", "ch_a", "ch_b"]
    assert canvas[1] == ["Points Possible", "", "", "", "", "5", "5"]
    assert canvas[2:] == [["ann", "", "ann", "ann", "", "5", "1"], ["ben", "", "ben", "ben", "", "2", ""]]
    moodle = _read(export_grades(url, "moodle", tmp_path / "moodle.csv", ["ch_a"]))
    assert moodle == [["Username", "First name", "Last name", "Email address", "ch_a"], ["ann", "", "", "", "5"],
                      ["ben", "", "", "", "2"]]
    long = _read(export_grades(url, "csv", tmp_path / "long.csv"))
    assert long[0] == ["student_id", "first_name", "last_name", "email", "assignment", "score", "max_score", "status"]
    assert ["ben", "", "", "", "ch_b", "", "5", "missing"] in long and ["ann", "", "", "", "ch_a", "5", "5",
                                                                           "graded"] in long
    with pytest.raises(FileNotFoundError, match="missing: \\['ch_z'\\]"):
        export_grades(url, "canvas", tmp_path / "x.csv", ["ch_z"])
    with pytest.raises(ValueError, match="expected a format among csv, canvas, moodle, got 'xls'"):
        export_grades(url, "xls", tmp_path / "x.csv")


def test_postgresql_url_uses_psycopg3() -> None:
    assert normalize_url("postgresql://u:p@h:5/db") == "postgresql+psycopg://u:p@h:5/db"
    assert normalize_url("sqlite:///x.db") == "sqlite:///x.db"

