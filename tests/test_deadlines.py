"""Deadlines (policy.toml): late days, penalty and cap, extensions, where the submission time comes from,
and what a bad policy says. The unit tests use fake reports; one slow test grades a tiny chapter end to end."""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import zipfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import nbformat
import pytest

from autograder.__main__ import main
from autograder.grading.batch import write_grades_csv
from autograder.grading.deadlines import (
    PolicyError,
    SubmissionTime,
    apply_policy,
    late_days,
    lateness,
    load_policy,
    mark_feedback,
    parse_policy,
    submission_times,
)
from autograder.grading.export import export_grades
from autograder.grading.gradebook import GradebookStore

CH = "99_tiny"
DUE = datetime(2025, 3, 3, 23, 59, tzinfo=timezone(timedelta(hours=1)))
POLICY = f"""
[late]
per_day = 0.1
cap = 0.5

[chapters.{CH}]
due = 2025-03-03T23:59:00+01:00

[extensions.erin]
{CH} = 2025-03-06T23:59:00+01:00

[extensions.finn]
{CH} = 2
"""


def _at(delta: timedelta, source: str = "timestamp.txt") -> SubmissionTime:
    return SubmissionTime((DUE + delta).astimezone(timezone.utc), source)


def _nbgrader_stamp(when: datetime) -> str:
    """A timestamp.txt as nbgrader writes it."""
    return when.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f UTC")


@pytest.fixture()
def policy():
    return parse_policy(POLICY, chapters=[CH, "98_other"])


# --- the rule ---------------------------------------------------------------------------------------

def test_on_time_costs_nothing(policy) -> None:
    for delta in (timedelta(days=-3), timedelta(0)):  # at the due date itself is on time
        late = lateness(policy, CH, "ann", _at(delta), 4.0, 5.0)
        assert (late.late_days, late.penalty, late.score, late.raw_score) == (0, 0.0, 4.0, 4.0)
        assert late.note().startswith("On time")


def test_late_by_one_day_any_started_day_counts(policy) -> None:
    for delta, days in [(timedelta(minutes=1), 1), (timedelta(hours=24), 1), (timedelta(hours=24, seconds=1), 2)]:
        assert late_days(DUE + delta, DUE) == days, delta
    late = lateness(policy, CH, "ben", _at(timedelta(hours=5)), 4.0, 5.0)
    assert (late.late_days, late.penalty, late.score, late.raw_score) == (1, 0.1, 3.6, 4.0)
    assert "Late by 1 day" in late.note() and "raw score 4" in late.note() and "score 3.6 / 5" in late.note()


def test_an_extension_moves_the_due_date(policy) -> None:
    two_days_late = _at(timedelta(days=2, hours=1))
    assert lateness(policy, CH, "ben", two_days_late, 5.0, 5.0).late_days == 3
    erin = lateness(policy, CH, "erin", two_days_late, 5.0, 5.0)  # her own due date, three days later
    assert (erin.late_days, erin.score, erin.extended) == (0, 5.0, True)
    assert erin.due == "2025-03-06T23:59:00+01:00" and "(extension)" in erin.note()
    finn = lateness(policy, CH, "finn", two_days_late, 5.0, 5.0)  # 2 days more: 1 hour late is 1 day
    assert (finn.late_days, finn.score, finn.due) == (1, 4.5, "2025-03-05T23:59:00+01:00")


def test_the_penalty_stops_at_the_cap(policy) -> None:
    late = lateness(policy, CH, "ben", _at(timedelta(days=9, hours=1)), 4.0, 5.0)
    assert (late.late_days, late.penalty, late.score) == (10, 0.5, 2.0)
    own = parse_policy(f'[late]\nper_day = 0.1\n[chapters.{CH}]\ndue = "2025-03-03T23:59:00Z"\nper_day = 0.5\n')
    assert lateness(own, CH, "ben", _at(timedelta(days=5)), 4.0, 5.0).penalty == 1.0  # default cap 1: nothing left


def test_a_chapter_without_a_due_date_and_an_unknown_time_are_never_late(policy) -> None:
    assert lateness(policy, "98_other", "ann", _at(timedelta(days=30)), 5.0, 5.0).late_days == 0
    unknown = lateness(policy, CH, "ann", SubmissionTime(None, "none", "no notebook file found"), 5.0, 5.0)
    assert (unknown.late_days, unknown.score) == (0, 5.0) and "not counted late" in unknown.note()


# --- a bad policy says what was expected ---------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("[chapters.99_tiny\ndue = 1", "not valid TOML"),
    ("[chapters.99_tiny]\ndue = 2025-03-03T23:59:00", "expected a timezone in the date and time"),
    ("[chapters.99_tiny]\ndue = 2025-03-03",
     "expected a date and time with a timezone, e.g. 2025-03-03T23:59:00+01:00, got the date 2025-03-03"),
    ('[chapters.99_tiny]\ndue = "next monday"', "expected an ISO 8601 date and time with a timezone"),
    ("[chapters.99_tiny]\nper_day = 0.1", "[chapters.99_tiny]: expected a due date"),
    ("[chapters.99_tiny]\ndue = 2025-03-03T23:59:00Z\ndeadline = 1", "unknown key(s) deadline; expected only cap, due"),
    ("[late]\nper_day = 10", "[late] per_day: expected a fraction between 0 and 1 (0.1 = 10 %), got 10"),
    ("[late]\ncap = -0.5", "[late] cap: expected a fraction between 0 and 1"),
    ("[chapters.ch_x]\ndue = 2025-03-03T23:59:00Z", "unknown chapter 'ch_x'; expected one of 99_tiny"),
    ("[extensions.ann]\n99_tiny = -1", "expected a number of days >= 0, got -1"),
    ("[extensions.ann]\n99_tiny = \"soon\"",
     "[extensions.ann] 99_tiny (a due date with a timezone, or a number of days)"),
    ("deadline = 2025-03-03T23:59:00Z", "unknown key(s) deadline; expected only chapters, extensions, late"),
    ("chapters = 3", "[chapters]: expected a table"),
])
def test_a_bad_policy_says_what_was_expected(text, message) -> None:
    with pytest.raises(PolicyError) as err:
        parse_policy(text, "policy.toml", chapters=[CH])
    assert message in str(err.value) and str(err.value).startswith("policy.toml"), str(err.value)


def test_grade_stops_on_a_bad_policy_before_grading(tmp_path, capsys) -> None:
    bad = tmp_path / "policy.toml"
    bad.write_text("[chapters.01_backprop]\ndue = 2025-03-03\n")
    (tmp_path / "subs").mkdir()
    code = main(["--course-dir", str(tmp_path / "course"), "grade", "01_backprop", str(tmp_path / "subs"),
                 "--policy", str(bad)])
    err = capsys.readouterr().err
    assert code == 2 and f"error: {bad} [chapters.01_backprop] due: expected a date and time" in err, err
    assert not (tmp_path / "course" / "graded").exists()
    code = main(["--course-dir", str(tmp_path / "course"), "grade", "01_backprop", str(tmp_path / "subs"),
                 "--policy", str(tmp_path / "missing.toml")])
    assert code == 2 and "missing.toml" in capsys.readouterr().err


# --- where the time comes from ------------------------------------------------------------------------

def _notebook_file(path: Path, mtime: datetime | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{}")
    if mtime:
        os.utime(path, (mtime.timestamp(), mtime.timestamp()))
    return path


def test_the_time_comes_from_timestamp_txt_else_the_file_mtime(tmp_path) -> None:
    stamp = DUE + timedelta(hours=2)
    _notebook_file(tmp_path / "ann" / CH / "t.ipynb", DUE - timedelta(days=9))  # a copy's mtime: not used
    (tmp_path / "ann" / CH / "timestamp.txt").write_text(_nbgrader_stamp(stamp))
    _notebook_file(tmp_path / "ben" / "t.ipynb", DUE + timedelta(days=1, hours=1))  # no timestamp: mtime
    _notebook_file(tmp_path / "cal" / CH / "t.ipynb", DUE)
    (tmp_path / "cal" / CH / "timestamp.txt").write_text("garbage")  # unreadable: mtime, and it says why
    _notebook_file(tmp_path / "dan_t.ipynb", DUE - timedelta(hours=1))  # a loose LMS file
    times = submission_times(tmp_path, CH, ["ann", "ben", "cal", "dan", "eve"])
    assert times["ann"] == SubmissionTime(stamp.astimezone(timezone.utc), "timestamp.txt")
    assert times["ben"].source == "mtime" and times["ben"].time == (DUE + timedelta(days=1, hours=1))
    assert "no nbgrader timestamp" in times["ben"].detail
    assert times["cal"].source == "mtime" and "timestamp.txt unreadable" in times["cal"].detail
    assert times["dan"].source == "mtime" and times["dan"].time == DUE - timedelta(hours=1)
    assert times["eve"].source == "none" and times["eve"].time is None


def test_the_time_comes_from_an_lms_zip(tmp_path) -> None:
    archive = tmp_path / "download.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(zipfile.ZipInfo("ann_t.ipynb", (2025, 3, 4, 10, 0, 0)), "{}")  # no timezone in a zip
        utc = int(datetime(2025, 3, 3, 12, 0, tzinfo=timezone.utc).timestamp())
        info = zipfile.ZipInfo("ben_t.ipynb", (2030, 1, 1, 0, 0, 0))
        info.extra = (0x5455).to_bytes(2, "little") + (5).to_bytes(2, "little") + b"\x01" + utc.to_bytes(4, "little")
        zf.writestr(info, "{}")  # an extended timestamp: UTC, preferred to the local date and time
        zf.writestr(zipfile.ZipInfo(f"course/cal/{CH}/t.ipynb", (2025, 3, 9, 0, 0, 0)), "{}")
        zf.writestr(f"course/cal/{CH}/timestamp.txt", _nbgrader_stamp(DUE))  # nbgrader's, inside the zip
    times = submission_times(archive, CH, ["ann", "ben", "cal", "dan"], local=DUE.tzinfo)
    assert times["ann"].time == datetime(2025, 3, 4, 9, 0, tzinfo=timezone.utc)  # 10:00 at UTC+01:00
    assert times["ann"].source == "zip" and times["ann"].detail == "local time read as UTC+01:00"
    assert times["ben"] == SubmissionTime(datetime(2025, 3, 3, 12, 0, tzinfo=timezone.utc), "zip")
    assert times["cal"].source == "timestamp.txt" and times["cal"].time == DUE
    assert times["dan"].source == "none"


def test_a_missing_timestamp_falls_back_to_mtime_and_says_so(tmp_path, policy) -> None:
    _notebook_file(tmp_path / "subs" / "ben" / CH / "t.ipynb", DUE + timedelta(hours=3))
    reports = [{"student": "ben", "assignment": CH, "status": "graded", "points": 5.0, "max_points": 5.0}]
    notes = apply_policy(reports, policy, tmp_path / "subs", CH)
    late = reports[0]["late"]
    assert (late["time_source"], late["late_days"], late["score"]) == ("mtime", 1, 4.5)
    assert any("ben: submission time from mtime (no nbgrader timestamp" in n for n in notes), notes
    assert "time from mtime, no nbgrader timestamp" in lateness(policy, CH, "ben", SubmissionTime(
        DUE, "mtime", "no nbgrader timestamp: the file's modification time"), 5, 5).note()


# --- reports, feedback, grades.csv, the gradebook and the export ----------------------------------------

def _reference() -> bytes:
    nb = nbformat.v4.new_notebook()
    meta = lambda gid, **kw: {"nbgrader": {"grade_id": gid, "schema_version": 3, **kw}}  # noqa: E731
    nb.cells = [nbformat.v4.new_code_cell("x = 1", metadata=meta("t_sol", solution=True, grade=False)),
                nbformat.v4.new_code_cell("assert x", metadata=meta("t_a", grade=True, points=2)),
                nbformat.v4.new_code_cell("assert x", metadata=meta("t_b", grade=True, points=3))]
    return nbformat.writes(nb).encode()


def _report(student: str, a: float, b: float) -> dict:
    exercises = [{"grade_id": "t_a", "points": a, "max_points": 2}, {"grade_id": "t_b", "points": b, "max_points": 3}]
    return {"student": student, "assignment": CH, "status": "graded", "points": a + b, "max_points": 5, "flags": [],
            "notebooks": [{"notebook": "t.ipynb", "flags": [], "exercises": exercises}]}


def test_penalties_reach_reports_feedback_grades_csv_gradebook_and_export(tmp_path, policy) -> None:
    subs, out = tmp_path / "subs", tmp_path / "out"
    stamps = {"ann": DUE - timedelta(hours=1), "ben": DUE + timedelta(hours=30), "erin": DUE + timedelta(days=2)}
    for student, when in stamps.items():
        _notebook_file(subs / student / CH / "t.ipynb")
        (subs / student / CH / "timestamp.txt").write_text(_nbgrader_stamp(when))
    reports = [_report("ann", 2, 3), _report("ben", 2, 3), _report("erin", 2, 1)]
    db = f"sqlite:///{tmp_path / 'gradebook.db'}"
    with GradebookStore(db, CH, {"t.ipynb": _reference()}) as store:
        for r in reports:
            store.record(r, f"sha-{r['student']}", "refs")
    for r in reports:
        (out / "reports").mkdir(parents=True, exist_ok=True)
        (out / "reports" / f"{r['student']}.json").write_text(json.dumps(r))
        page = out / "feedback" / r["student"] / "t.html"
        page.parent.mkdir(parents=True)
        page.write_text("<html><head></head><body class='jp-Notebook'><h1>Feedback</h1></body></html>")
    for _ in range(2):  # a second run (a regrade, a new extension) replaces what the first wrote
        apply_policy(reports, policy, subs, CH, out, db)

    ben = json.loads((out / "reports" / "ben.json").read_text())["late"]
    assert (ben["late_days"], ben["penalty"], ben["raw_score"], ben["score"]) == (2, 0.2, 5.0, 4.0)
    page = (out / "feedback" / "ben" / "t.html").read_text()
    assert page.count("dlbook-late -->") == 2 and "Late by 2 days" in page and "score 4 / 5 (raw score 5)" in page
    assert "On time" in (out / "feedback" / "erin" / "t.html").read_text()  # her extension

    rows = {r["student_id"]: r for r in csv.DictReader(write_grades_csv(reports, out / "grades.csv").open())}
    assert list(rows["ben"])[-7:] == ["raw_score", "late_days", "penalty", "score", "time_source", "submitted_at",
                                      "due"]
    assert (rows["ben"]["points"], rows["ben"]["raw_score"], rows["ben"]["score"]) == ("5", "5.0", "4.0")
    assert (rows["ann"]["late_days"], rows["ann"]["score"], rows["ann"]["time_source"]) == ("0", "5.0",
                                                                                           "timestamp.txt")

    with sqlite3.connect(tmp_path / "gradebook.db") as con:
        penalty = dict(con.execute(
            "SELECT sa.student_id, SUM(sn.late_submission_penalty) FROM submitted_notebook sn "
            "JOIN submitted_assignment sa ON sn.assignment_id = sa.id GROUP BY sa.student_id").fetchall())
        raw = dict(con.execute("SELECT sa.student_id, SUM(g.auto_score) FROM grade g JOIN submitted_notebook sn "
                               "ON g.notebook_id = sn.id JOIN submitted_assignment sa ON sn.assignment_id = sa.id "
                               "GROUP BY sa.student_id").fetchall())
        ext = dict(con.execute("SELECT student_id, extension FROM submitted_assignment").fetchall())
    assert penalty == {"ann": 0.0, "ben": 1.0, "erin": 0.0} and raw == {"ann": 5.0, "ben": 5.0, "erin": 3.0}
    assert ext["erin"] is not None and ext["ann"] is None
    long = {r["student_id"]: r["score"] for r in csv.DictReader(export_grades(db, "csv", tmp_path / "e.csv").open())}
    assert long == {"ann": "5", "ben": "4", "erin": "3"}


def test_without_a_policy_grades_csv_has_score_equal_to_points(tmp_path) -> None:
    rows = list(csv.DictReader(write_grades_csv([_report("ann", 2, 1)], tmp_path / "g.csv").open()))
    assert (rows[0]["raw_score"], rows[0]["score"], rows[0]["late_days"], rows[0]["time_source"]) == ("3", "3", "", "")


def test_feedback_without_a_body_is_left_alone(tmp_path, policy) -> None:
    page = tmp_path / "p.html"
    page.write_text("not html")
    mark_feedback(page, lateness(policy, CH, "ann", _at(timedelta(0)), 1, 1))
    assert page.read_text() == "not html"


def test_load_policy_reads_a_file(tmp_path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    assert load_policy(path).path == path and load_policy(path).due[CH] == DUE


# --- end to end: python -m autograder grade with a policy --------------------------------------------------

@pytest.mark.slow
def test_grade_applies_the_course_policy(tmp_path) -> None:
    """A one-exercise chapter graded by ``python -m autograder grade`` with COURSE_DIR/policy.toml."""
    source = tmp_path / "source" / CH
    source.mkdir(parents=True)

    def notebook(answer: str) -> nbformat.NotebookNode:
        nb = nbformat.v4.new_notebook()
        sol = nbformat.v4.new_code_cell(answer)
        sol.metadata["nbgrader"] = {"grade": False, "grade_id": "t_sol", "locked": False, "schema_version": 3,
                                    "solution": True, "task": False}
        check = nbformat.v4.new_code_cell("assert double(2) == 4")
        check.metadata["nbgrader"] = {"grade": True, "grade_id": "t_check", "locked": True, "points": 2,
                                      "schema_version": 3, "solution": False, "task": False}
        nb.cells = [sol, check]
        return nb

    nbformat.write(notebook("def double(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION"),
                   source / "t.ipynb")
    course_dir = tmp_path / "course"
    course_dir.mkdir()
    (course_dir / "policy.toml").write_text(POLICY)
    subs = tmp_path / "submitted"
    for student, when in {"ann": DUE, "ben": DUE + timedelta(hours=1)}.items():
        nbformat.write(notebook("def double(x):\n    return x + x"), _notebook_file(subs / student / CH / "t.ipynb"))
        (subs / student / CH / "timestamp.txt").write_text(_nbgrader_stamp(when))
    assert main(["--course-dir", str(course_dir), "--source-dir", str(tmp_path / "source"), "grade", CH, str(subs),
                 "--workers", "1", "--zygote", "off"]) == 0
    rows = {r["student_id"]: r for r in csv.DictReader((course_dir / "graded" / CH / "grades.csv").open())}
    assert (rows["ann"]["points"], rows["ann"]["score"], rows["ann"]["late_days"]) == ("2.0", "2.0", "0")
    assert (rows["ben"]["raw_score"], rows["ben"]["late_days"], rows["ben"]["penalty"], rows["ben"]["score"]) == (
        "2.0", "1", "0.1", "1.8")
    assert "Late by 1 day" in (course_dir / "graded" / CH / "feedback" / "ben" / "t.html").read_text()
    export = tmp_path / "grades.csv"
    main(["--course-dir", str(course_dir), "export", "--format", "csv", "--to", str(export)])
    assert {r["student_id"]: r["score"] for r in csv.DictReader(export.open())} == {"ann": "2", "ben": "1.8"}
