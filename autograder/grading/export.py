"""Grades for an LMS: the gradebook's totals as the CSV layouts Canvas and Moodle import, or a plain long CSV.

One total per student and assignment: the sum of the submission's cell scores (nbgrader's score: the
manual score where one was given, else the autograder's) less its late penalty (``policy.toml``, see
:mod:`.deadlines`); empty where the student has no submission.

- ``csv``: ``student_id, first_name, last_name, email, assignment, score, max_score, status``, one row per
  student and assignment (``status``: ``graded``, ``crashed`` or ``error`` as the grader recorded it,
  ``missing`` without a submission).
- ``canvas`` (Gradebook, Import): ``Student, ID, SIS User ID, SIS Login ID, Section``, then one column per
  assignment; the second row is ``Points Possible``. ``ID`` (Canvas's own number) is left empty: Canvas
  then matches each row by ``SIS User ID`` / ``SIS Login ID``, both the student id of the gradebook, so
  those ids must be the LMS's SIS ids (they are when submissions come from an LMS download).
- ``moodle`` (Grades, Import, CSV file): ``Username, First name, Last name, Email address``, then one
  column per assignment. At import, map ``Username`` to "username" and each assignment column to its
  grade item.
"""

from __future__ import annotations

import csv
from pathlib import Path

from sqlalchemy import inspect, select

from .gradebook import GRADED, normalize_url

FORMATS = ("csv", "canvas", "moodle")


def _table(db_url: str, assignments: list[str] | None) -> tuple[list[str], dict[str, float], list, dict, dict]:
    """(assignments, {assignment: max score}, students, {(student, assignment): score}, {(student, a): status})."""
    from nbgrader.api import Gradebook

    with Gradebook(normalize_url(db_url)) as gb:
        names = [a.name for a in gb.assignments if assignments is None or a.name in assignments]
        if assignments is not None and set(assignments) - set(names):
            raise FileNotFoundError(f"expected assignments {sorted(assignments)} in the gradebook, "
                                    f"got {sorted(names)} (missing: {sorted(set(assignments) - set(names))})")
        maxima = {a: float(gb.find_assignment(a).max_score) for a in names}
        students = [(s.id, s.first_name or "", s.last_name or "", s.email or "") for s in gb.students]
        # the score after a late penalty (nbgrader's late_submission_penalty, written by .deadlines), as nbgrader's
        # own export computes it
        scores = {(sub.student.id, a): max(0.0, float(sub.score or 0) - float(sub.late_submission_penalty or 0))
                  for a in names for sub in gb.assignment_submissions(a)}
        status = {}
        if inspect(gb.engine).has_table(GRADED.name):
            rows = gb.db.execute(select(GRADED.c.student, GRADED.c.assignment, GRADED.c.status)).all()
            status = {(s, a): st for s, a, st in rows}
    return names, maxima, sorted(students), scores, status


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:g}"


def export_grades(db_url: str, fmt: str, to: Path, assignments: list[str] | None = None) -> Path:
    """Write the gradebook's totals to ``to`` in layout ``fmt`` (see the module); return the path."""
    if fmt not in FORMATS:
        raise ValueError(f"expected a format among {', '.join(FORMATS)}, got {fmt!r}")
    names, maxima, students, scores, status = _table(db_url, assignments)
    to = Path(to)
    to.parent.mkdir(parents=True, exist_ok=True)
    with to.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        if fmt == "csv":
            w.writerow(["student_id", "first_name", "last_name", "email", "assignment", "score", "max_score", "status"])
            for sid, first, last, email in students:
                for a in names:
                    score = scores.get((sid, a))
                    state = status.get((sid, a), "graded") if score is not None else "missing"
                    w.writerow([sid, first, last, email, a, _num(score), _num(maxima[a]), state])
        elif fmt == "canvas":
            w.writerow(["Student", "ID", "SIS User ID", "SIS Login ID", "Section", *names])
            w.writerow(["Points Possible", "", "", "", "", *(_num(maxima[a]) for a in names)])
            for sid, first, last, _ in students:
                shown = f"{last}, {first}" if first and last else sid
                w.writerow([shown, "", sid, sid, "", *(_num(scores.get((sid, a))) for a in names)])
        else:
            w.writerow(["Username", "First name", "Last name", "Email address", *names])
            for sid, first, last, email in students:
                w.writerow([sid, first, last, email, *(_num(scores.get((sid, a))) for a in names)])
    return to
