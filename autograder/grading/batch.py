"""Grading a submission and a batch: reports, grades.csv, the nbgrader gradebook."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from .feedback import _feedback_html
from .intake import INTAKE_FLAGS, discover, match_notebooks
from .notebook import assemble, dlbook_modules, dynamic_code_flags, reference_calls, reference_cells
from .run import Settings, run_notebook
from .sandbox import bwrap_available


def grade_notebook(name: str, ref: list[dict], found: tuple, workdir: Path | None, settings: Settings,
                   feedback: Path | None = None) -> dict:
    """Grade one notebook of a submission; return its report (never raises for a bad submission)."""
    path, sub, error = found
    tests = [c for c in ref if c["kind"] == "test"]
    report = {"notebook": name, "submitted_as": path.name if path else None, "status": "graded", "flags": [],
              "exercises": [], "cells": [], "restarts": 0, "seconds": 0.0, "sandbox": None}
    if path is not None and path.name != name:
        report["flags"].append(f"renamed: {path.name} graded as {name}")
    results: list = []
    cells: list[dict] = []
    if sub is None:
        report["status"] = "invalid" if path else "missing"
        kind = "invalid_notebook" if path else "missing_notebook"
        report["flags"].append(error if str(error).startswith(INTAKE_FLAGS) else f"{kind}: {error}")
    else:
        try:
            cells, flags = assemble(ref, sub)
            # dynamic code the reference solution itself uses (chapter 7's getattr(model, head)) is expected
            expected = set(dynamic_code_flags([c for c in ref if c["kind"] == "solution"]))
            report["flags"] += flags + reference_calls(ref, cells) + [f for f in dynamic_code_flags(cells)
                                                                      if f not in expected]
            run = run_notebook(cells, workdir, settings, dlbook_modules(ref), ref=ref)
            results = run["results"]
            report["flags"] += run["flags"]
            report.update(restarts=run["restarts"], seconds=round(run["seconds"], 2), sandbox=run["sandbox"],
                          judge_seed=run["judge_seed"])
        except Exception as err:  # noqa: BLE001 - a bad submission never aborts the batch
            report["status"] = "error"
            report["flags"].append(f"grading_failed: {type(err).__name__}: {str(err)[:500]}")
    by_id = {c["grade_id"]: r for c, r in zip(cells, results, strict=False) if c["kind"] == "test" and r is not None}
    for test in tests:
        res = by_id.get(test["grade_id"])
        status = {"ok": "passed", "error": "failed", None: "not-run"}.get(res and res["status"], res and res["status"])
        error = res.get("error") if res else None
        ex_flags = sorted(set(res.get("flags", []))) if res else []
        if res and res["status"] == "error" and "ForbiddenCall" in (error or ""):
            ex_flags.append(f"calls_reference: {test['grade_id']} called a forbidden reference")
        report["exercises"].append({"grade_id": test["grade_id"], "max_points": test["points"],
                                    "points": test["points"] if status == "passed" else 0.0,
                                    "status": status, "error": error, "flags": ex_flags})
        report["flags"] += ex_flags
    for i, (cell, res) in enumerate(zip(cells, results, strict=False)):
        if res and cell["kind"] != "test" and res["status"] != "ok":
            report["cells"].append({"index": i, "kind": cell["kind"], "grade_id": cell.get("grade_id"),
                                    "status": res["status"], "error": res.get("error")})
    report["flags"] = sorted(set(report["flags"]))
    report["points"] = sum(e["points"] for e in report["exercises"])
    report["max_points"] = sum(e["max_points"] for e in report["exercises"])
    if feedback is not None and settings.feedback and cells:
        try:
            _feedback_html(cells, results, report, feedback)
        except Exception as err:  # noqa: BLE001 - no feedback page is no reason to lose the grade
            report["flags"].append(f"feedback_failed: {type(err).__name__}: {err}")
    return report


def grade_submission(student: str, folder: str, assignment: str, references: dict[str, str], settings: Settings,
                     out_dir: str, withheld: dict[str, str] | None = None) -> dict:
    """Grade every notebook of one student's submission; write and return its JSON report.

    ``withheld``: the notebooks intake would not hand over (see :func:`discover`), reported by their flag.
    """
    start = time.monotonic()
    folder_path, out = Path(folder), Path(out_dir)
    refs = {name: reference_cells(Path(p)) for name, p in references.items()}
    ref_ids = {name: {c["grade_id"] for c in cells if c["grade_id"]} for name, cells in refs.items()}
    found = match_notebooks(list(refs), ref_ids, folder_path, withheld)
    notebooks = [grade_notebook(name, refs[name], found[name], folder_path, settings,
                                out / "feedback" / student / f"{Path(name).stem}.html") for name in refs]
    report = {"student": student, "assignment": assignment, "status": "graded",
              "points": sum(n["points"] for n in notebooks), "max_points": sum(n["max_points"] for n in notebooks),
              "flags": sorted({f for n in notebooks for f in n["flags"]}), "notebooks": notebooks,
              "seconds": round(time.monotonic() - start, 2)}
    if any(n["status"] == "error" for n in notebooks):
        report["status"] = "error"
    (out / "reports").mkdir(parents=True, exist_ok=True)
    (out / "reports" / f"{student}.json").write_text(json.dumps(report, indent=2))
    return report


def write_grades_csv(reports: list[dict], path: Path) -> Path:
    """One row per student: total, status, flag count, then the points of every exercise."""
    ids = [e["grade_id"] for r in reports[:1] for n in r.get("notebooks", []) for e in n["exercises"]]
    for r in reports:
        for n in r.get("notebooks", []):
            ids += [e["grade_id"] for e in n["exercises"] if e["grade_id"] not in ids]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["student_id", "assignment", "points", "max_points", "status", "flags", *ids])
        for r in sorted(reports, key=lambda r: r["student"]):
            per = {e["grade_id"]: e["points"] for n in r.get("notebooks", []) for e in n["exercises"]}
            w.writerow([r["student"], r["assignment"], r.get("points", 0), r.get("max_points", 0), r["status"],
                        len(r.get("flags", [])), *(per.get(i, "") for i in ids)])
    return path


def write_gradebook(reports: list[dict], assignment: str, references: dict[str, str], db_url: str) -> None:
    """Record every grade in an nbgrader gradebook (any SQLAlchemy URL); flag tampered notebooks."""
    from nbgrader.api import Gradebook, MissingEntry

    # nbgrader runs `alembic` from PATH: use this interpreter's environment.
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    with Gradebook(db_url) as gb, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not in session.*")  # nbgrader's own add_submission
        gb.update_or_create_assignment(assignment)
        for name, path in references.items():
            stem = Path(name).stem
            gb.update_or_create_notebook(stem, assignment)
            for cell in reference_cells(Path(path)):
                if cell["kind"] == "test":
                    gb.update_or_create_grade_cell(cell["grade_id"], stem, assignment, max_score=cell["points"],
                                                   cell_type="code")
                elif cell["kind"] == "solution":
                    gb.update_or_create_solution_cell(cell["grade_id"], stem, assignment)
        for r in reports:
            gb.update_or_create_student(r["student"])
            gb.update_or_create_submission(assignment, r["student"])
            for n in r.get("notebooks", []):
                stem = Path(n["notebook"]).stem
                try:
                    nb = gb.find_submission_notebook(stem, assignment, r["student"])
                except MissingEntry:
                    continue
                nb.flagged = any(not f.startswith(("extra_cells", "renamed")) for f in n["flags"])
                for e in n["exercises"]:
                    grade = gb.find_grade(e["grade_id"], stem, assignment, r["student"])
                    grade.auto_score = e["points"]
                    grade.needs_manual_grade = False
            gb.db.commit()


@dataclass
class BatchResult:
    reports: list[dict]
    out_dir: Path
    seconds: float
    problems: list[str]

    @property
    def by_student(self) -> dict[str, dict]:
        return {r["student"]: r for r in self.reports}

    def summary(self) -> str:
        lines = [f"{'student':<24} {'points':>14} {'flags':>6}  status"]
        for r in sorted(self.reports, key=lambda r: r["student"]):
            lines.append(f"{r['student']:<24} {r.get('points', 0):>6g} / {r.get('max_points', 0):<5g} "
                         f"{len(r.get('flags', [])):>6}  {r['status']}")
        flagged = sum(1 for r in self.reports if r.get("flags"))
        failed = sum(1 for r in self.reports if r["status"] != "graded")
        lines.append(f"graded {len(self.reports) - failed}, flagged {flagged}, failed to grade {failed}, "
                     f"time {self.seconds:.1f} s; reports in {self.out_dir}")
        lines += [f"note: {p}" for p in self.problems]
        return "\n".join(lines)


def _limit_worker(memory_bytes: int) -> None:
    """Cap a grading worker's memory: what a learner's kernel sends it is bounded, and so is the worker."""
    import resource

    if memory_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))


def grade(assignment: str, submissions: Path, source_dir: Path, out_dir: Path, workers: int | None = None,
          db_url: str | None = None, settings: Settings | None = None, progress: bool = True) -> BatchResult:
    """Grade every submission of ``assignment`` in ``submissions`` with ``workers`` processes."""
    start = time.monotonic()
    settings = dataclasses.replace(settings or Settings())  # a copy: the caller's settings are not changed
    workers = workers or os.cpu_count() or 1
    if settings.use_bwrap is None:
        settings.use_bwrap = bwrap_available()
    settings.threads = max(1, (os.cpu_count() or 1) // workers)
    references = {p.name: str(p) for p in sorted((Path(source_dir) / assignment).glob("*.ipynb"))}
    if not references:
        raise FileNotFoundError(f"no source notebooks in {Path(source_dir) / assignment}")
    out_dir = Path(out_dir)
    reports: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="ag-batch-") as scratch:
        students, problems = discover(Path(submissions), assignment, Path(scratch))
        ctx = get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_limit_worker,
                                 initargs=(settings.worker_memory_bytes,)) as pool:
            withheld = getattr(students, "withheld", {})
            futures = {pool.submit(grade_submission, s, str(f), assignment, references, settings, str(out_dir),
                                   withheld.get(s)): s for s, f in students.items()}
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=len(futures), desc=f"grading {assignment}", unit="submission", file=sys.stderr)
            for fut in as_completed(futures):
                student = futures[fut]
                try:
                    reports.append(fut.result())
                except Exception as err:  # noqa: BLE001 - one failure never aborts the batch
                    reports.append({"student": student, "assignment": assignment, "status": "error", "points": 0,
                                    "max_points": 0, "flags": [f"grading_failed: {type(err).__name__}: {err}"],
                                    "notebooks": []})
                if bar:
                    bar.update()
            if bar:
                bar.close()
    write_grades_csv(reports, out_dir / "grades.csv")
    if db_url:
        write_gradebook(reports, assignment, references, db_url)
    return BatchResult(reports, out_dir, time.monotonic() - start, problems)
