"""The nbgrader gradebook, written one submission at a time, on SQLite or PostgreSQL, by concurrent runs.

- Tables: nbgrader's own (its ``Gradebook`` creates them on first use), and ``dlbook_graded``, one row
  per (assignment, student): the sha256 of the packed submission that was graded (see :mod:`.task`), the
  sha256 of the reference notebooks it was graded against, the report (JSON), the worker and the time.
  It lives in the same database and is written in the same transaction as the submission's grades, so a
  grade and the record of what was graded never disagree, whatever stops a run.
- One transaction per submission: the student, the submission (nbgrader's mirror of the assignment:
  one ``grade`` row per graded cell), its scores, its flags and its ``dlbook_graded`` row are committed
  together or not at all. A re-run updates those rows in place: never a second row for a student, a
  submission or a grade (nbgrader's unique constraints would refuse one anyway).
- Concurrency: on PostgreSQL, the schema and the assignment's cells are set up under a session-level
  advisory lock, and every submission's transaction starts by taking a transaction-level one, so two
  ``grade`` runs (two chapters, or two hosts) never create the same student or course row twice. On
  SQLite the database file's lock serializes writers; a transaction that loses a race (an
  IntegrityError, or "database is locked") is rolled back and retried.

A URL ``postgresql://user@host/db`` is read as ``postgresql+psycopg://`` (psycopg 3, a dependency).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
import warnings
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import Column, DateTime, MetaData, String, Table, Text, create_engine, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError

from .notebook import reference_cells

LOCK_KEY = int.from_bytes(hashlib.sha256(b"dlbook gradebook").digest()[:8], "big", signed=True)
RETRIES = 5

GRADED = Table(
    "dlbook_graded", MetaData(),
    Column("assignment", String(128), primary_key=True),
    Column("student", String(128), primary_key=True),
    Column("submission_sha256", String(64), nullable=False),
    Column("references_sha256", String(64), nullable=False),
    Column("status", String(32), nullable=False),
    Column("worker", String(256)),
    Column("graded_at", DateTime(timezone=True), nullable=False),
    Column("report", Text, nullable=False),
)


def normalize_url(db_url: str) -> str:
    """``db_url`` with PostgreSQL's driver made explicit (psycopg 3); other URLs unchanged."""
    url = make_url(db_url)
    if url.drivername == "postgresql":
        return url.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    return db_url


class GradebookStore:
    """An nbgrader gradebook set up for ``assignment``, recording one submission per transaction.

    ``references``: ``{notebook name: source notebook (path or bytes)}`` of the assignment.
    """

    def __init__(self, db_url: str, assignment: str, references: dict[str, str | Path | bytes]):
        from nbgrader.api import Gradebook

        from ..config import use_inprocess_alembic_head

        use_inprocess_alembic_head()  # a new gradebook's schema version, without an `alembic` subprocess
        self.url = normalize_url(db_url)
        self.assignment = assignment
        self.postgres = make_url(self.url).get_backend_name() == "postgresql"
        # nbgrader runs `alembic` from PATH when it creates a database: this interpreter's, not another one.
        bindir = str(Path(sys.executable).parent)
        if bindir not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = os.pathsep.join([bindir, os.environ.get("PATH", "")])
        with self._setup_lock():
            self.gb = Gradebook(self.url)
            try:
                GRADED.create(self.gb.engine, checkfirst=True)
                self._setup_assignment(references)
            except BaseException:
                self.gb.close()
                raise

    @contextlib.contextmanager
    def _setup_lock(self) -> Iterator[None]:
        """On PostgreSQL, hold the gradebook's advisory lock (on a connection of its own) while setting up."""
        if not self.postgres:
            yield
            return
        engine = create_engine(self.url)
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": LOCK_KEY})
                try:
                    yield
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": LOCK_KEY})
        finally:
            engine.dispose()

    def _setup_assignment(self, references: dict[str, str | Path | bytes]) -> None:
        gb = self.gb
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*not in session.*")
            gb.update_or_create_assignment(self.assignment)
            for name, ref in references.items():
                stem = Path(name).stem
                gb.update_or_create_notebook(stem, self.assignment)
                for cell in reference_cells(ref if isinstance(ref, bytes) else Path(ref)):
                    if cell["kind"] == "test":
                        gb.update_or_create_grade_cell(cell["grade_id"], stem, self.assignment,
                                                       max_score=cell["points"], cell_type="code")
                    elif cell["kind"] == "solution":
                        gb.update_or_create_solution_cell(cell["grade_id"], stem, self.assignment)

    def close(self) -> None:
        self.gb.close()
        self.gb.engine.dispose()

    def __enter__(self) -> GradebookStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def graded(self) -> dict[str, dict]:
        """``{student: row of dlbook_graded}`` for this assignment (the report decoded)."""
        rows = self.gb.db.execute(select(GRADED).where(GRADED.c.assignment == self.assignment)).mappings().all()
        self.gb.db.commit()
        return {r["student"]: {**r, "report": json.loads(r["report"])} for r in rows}

    def record(self, report: dict, submission_sha256: str, references_sha256: str) -> None:
        """Write one submission's scores, flags and ``dlbook_graded`` row in one transaction (retried on a race)."""
        for attempt in range(RETRIES):
            try:
                self._record_once(report, submission_sha256, references_sha256)
                return
            except (IntegrityError, OperationalError):
                self.gb.db.rollback()
                if attempt == RETRIES - 1:
                    raise
                time.sleep(0.2 * (attempt + 1))

    def _record_once(self, report: dict, submission_sha256: str, references_sha256: str) -> None:
        from nbgrader.api import Comment, Grade, SubmittedAssignment, SubmittedNotebook

        db, student_id = self.gb.db, report["student"]
        if self.postgres:  # released at commit or rollback
            db.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": LOCK_KEY})
        assignment = self.gb.find_assignment(self.assignment)
        cell_names = {c.id: c.name for nb in assignment.notebooks for c in [*nb.grade_cells, *nb.task_cells]}
        submission = self._submission(student_id)
        if submission is None:
            from nbgrader.api import Student

            with db.no_autoflush:  # nbgrader's add_submission, without its commit
                student = db.get(Student, student_id) or Student(id=student_id)
                submission = SubmittedAssignment(assignment=assignment, student=student)
                for notebook in assignment.notebooks:
                    nb = SubmittedNotebook(notebook=notebook, assignment=submission)
                    for cell in notebook.grade_cells:
                        Grade(cell_id=cell.id, notebook=nb)
                    for cell in [*notebook.solution_cells, *notebook.task_cells]:
                        Comment(cell_id=cell.id, notebook=nb)
                    for cell in notebook.task_cells:
                        Grade(cell_id=cell.id, notebook=nb)
                db.add(student)
                db.add(submission)
            db.flush()
        graded = {Path(n["notebook"]).stem: n for n in report.get("notebooks", [])}
        for nb in submission.notebooks:
            n = graded.get(nb.notebook.name)
            nb.flagged = bool(n) and any(not f.startswith(("extra_cells", "renamed")) for f in n["flags"])
            points = {e["grade_id"]: e["points"] for e in (n or {}).get("exercises", [])}
            for grade in nb.grades:
                # an exercise the report does not score (a crashed or failed grading) has no score, not an old one
                grade.auto_score = points.get(cell_names[grade.cell_id])
                grade.needs_manual_grade = False
        row = {"submission_sha256": submission_sha256, "references_sha256": references_sha256,
               "status": report["status"], "worker": report.get("worker"),
               "graded_at": datetime.now(timezone.utc), "report": json.dumps(report)}
        key = (GRADED.c.assignment == self.assignment) & (GRADED.c.student == student_id)
        if db.execute(select(GRADED.c.student).where(key)).first() is None:
            db.execute(GRADED.insert().values(assignment=self.assignment, student=student_id, **row))
        else:
            db.execute(GRADED.update().where(key).values(**row))
        db.commit()

    def _submission(self, student_id: str):
        from nbgrader.api import Assignment, SubmittedAssignment

        return (self.gb.db.query(SubmittedAssignment)
                .join(Assignment, Assignment.id == SubmittedAssignment.assignment_id)
                .filter(Assignment.name == self.assignment, SubmittedAssignment.student_id == student_id)
                .one_or_none())
