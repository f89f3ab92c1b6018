"""Grading a submission and a batch: reports, grades.csv, the nbgrader gradebook."""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .deadlines import Policy, apply_policy
from .executors import WARM_POOLS, dask_address, run_dask, run_local
from .feedback import write_feedback_html
from .gradebook import GradebookStore
from .intake import INTAKE_FLAGS, discover, match_notebooks
from .notebook import assemble, dlbook_modules, dynamic_code_flags, rebuilt_ops_used, reference_calls, reference_cells
from .run import Settings, run_notebook
from .sandbox import bwrap_available
from .task import GradedSubmission, GradeTask, pack_submission, references_sha256, unpack_tree


def grade_notebook(name: str, ref: list[dict], found: tuple, workdir: Path | None, settings: Settings,
                   feedback: Path | None = None, left_out: list[str] = ()) -> dict:
    """Grade one notebook of a submission; return its report (never raises for a bad submission).

    ``left_out``: what packing the submission folder left out (reported as ``not_copied``).
    """
    path, sub, error = found
    tests = [c for c in ref if c["kind"] == "test"]
    report = {"notebook": name, "submitted_as": path.name if path else None, "status": "graded", "flags": [],
              "exercises": [], "cells": [], "restarts": 0, "seconds": 0.0, "sandbox": None}
    if path is not None and path.name != name:
        report["flags"].append(f"renamed: {path.name} graded as {name}")
    results: list = []
    cells: list[dict] = []
    rebuilt: dict[str, str] = {}
    if sub is None:
        report["status"] = "invalid" if path else "missing"
        kind = "invalid_notebook" if path else "missing_notebook"
        report["flags"].append(error if str(error).startswith(INTAKE_FLAGS) else f"{kind}: {error}")
    else:
        cells, results, rebuilt = _run_submission(ref, sub, workdir, settings, left_out, report)
    by_id = {c["grade_id"]: r for c, r in zip(cells, results, strict=False) if c["kind"] == "test" and r is not None}
    for test in tests:
        entry = _exercise(test, by_id.get(test["grade_id"]), rebuilt)
        report["exercises"].append(entry)
        report["flags"] += entry["flags"]
    for i, (cell, res) in enumerate(zip(cells, results, strict=False)):
        if res and cell["kind"] != "test" and res["status"] != "ok":
            report["cells"].append({"index": i, "kind": cell["kind"], "grade_id": cell.get("grade_id"),
                                    "status": res["status"], "error": res.get("error")})
    report["flags"] = sorted(set(report["flags"]))
    report["points"] = sum(e["points"] for e in report["exercises"])
    report["max_points"] = sum(e["max_points"] for e in report["exercises"])
    if feedback is not None and settings.feedback and cells:
        t0 = time.monotonic()
        try:
            write_feedback_html(cells, results, report, feedback)
        except Exception as err:  # noqa: BLE001 - no feedback page is no reason to lose the grade
            report["flags"].append(f"feedback_failed: {type(err).__name__}: {err}")
        if "timings" in report:
            report["timings"]["feedback"] = round(time.monotonic() - t0, 3)
    return report


def _run_submission(ref: list[dict], sub: list[dict], workdir: Path | None, settings: Settings, left_out: list[str],
                    report: dict) -> tuple[list[dict], list, dict[str, str]]:
    """Assemble and run a readable submission; return (cells, results, exercises zeroed by the static check).

    Flags and the run's figures go into ``report``; an error of the grader is reported, never raised.
    """
    cells, results, rebuilt = [], [], {}
    try:
        cells, flags = assemble(ref, sub)
        rebuilt = rebuilt_ops_used(ref, cells)
        # dynamic code the reference solution itself uses (chapter 7's getattr(model, head)) is expected
        expected = set(dynamic_code_flags([c for c in ref if c["kind"] == "solution"]))
        report["flags"] += flags + reference_calls(ref, cells) + [f for f in dynamic_code_flags(cells)
                                                                  if f not in expected]
        run = run_notebook(cells, workdir, settings, dlbook_modules(ref), ref=ref, left_out=left_out)
        results = run["results"]
        report["flags"] += run["flags"]
        report.update(restarts=run["restarts"], seconds=round(run["seconds"], 2), sandbox=run["sandbox"],
                      kernel_start="zygote" if run["zygote"] else "python", timings=run["timings"],
                      judge_seed=run["judge_seed"])
    except Exception as err:  # noqa: BLE001 - a bad submission never aborts the batch
        report["status"] = "error"
        report["flags"].append(f"grading_failed: {type(err).__name__}: {str(err)[:500]}")
    return cells, results, rebuilt


def _exercise(test: dict, res: dict | None, rebuilt: dict[str, str]) -> dict:
    """The report of one exercise from its test cell's result (``res``, None if it did not run)."""
    status = {"ok": "passed", "error": "failed", None: "not-run"}.get(res and res["status"], res and res["status"])
    error = res.get("error") if res else None
    ex_flags = sorted(set(res.get("flags", []))) if res else []
    if res and res["status"] == "error" and "ForbiddenCall" in (error or ""):
        ex_flags.append(f"calls_reference: {test['grade_id']} called a forbidden reference")
    overruled = {}
    if test["grade_id"] in rebuilt:  # the static check decides, whatever the tests said
        overruled = {"tests_status": status}
        status, error = "failed", rebuilt[test["grade_id"]]
        ex_flags.append(f"uses_rebuilt_op: {error}")
    return {"grade_id": test["grade_id"], "max_points": test["points"],
            "points": test["points"] if status == "passed" else 0.0,
            "status": status, "error": error, "flags": ex_flags, **overruled}


def grade_packed(task: GradeTask) -> GradedSubmission:
    """Grade one packed submission in this host's sandbox; return its report and feedback pages as bytes.

    What every executor runs (a local process, a Dask worker on another host): it reads nothing of the
    instructor's host and writes only its own temporary folder.
    """
    start = time.monotonic()
    sub = task.submission
    with tempfile.TemporaryDirectory(prefix="ag-task-") as tmp:
        folder, feedback_dir = Path(tmp) / "submission", Path(tmp) / "feedback"
        folder.mkdir()
        unpack_tree(sub.tree, folder)
        refs = {name: reference_cells(data) for name, data in task.references.items()}
        ref_ids = {name: {c["grade_id"] for c in cells if c["grade_id"]} for name, cells in refs.items()}
        found = match_notebooks(list(refs), ref_ids, folder, sub.withheld, sub.rejected)
        notebooks = [grade_notebook(name, refs[name], found[name], folder, task.settings,
                                    feedback_dir / f"{Path(name).stem}.html", list(sub.left_out)) for name in refs]
        _variant_flags(task, found, notebooks)
        feedback = {p.stem: p.read_bytes() for p in sorted(feedback_dir.glob("*.html"))}
    report = {"student": sub.student, "assignment": task.assignment, "status": "graded",
              "points": sum(n["points"] for n in notebooks), "max_points": sum(n["max_points"] for n in notebooks),
              "flags": sorted({f for n in notebooks for f in n["flags"]}), "notebooks": notebooks,
              "seconds": round(time.monotonic() - start, 2), "submission_sha256": sub.sha256}
    if any(n["status"] == "error" for n in notebooks):
        report["status"] = "error"
    return GradedSubmission(report, feedback)


def _variant_flags(task: GradeTask, found: dict, notebooks: list[dict]) -> None:
    """Per-learner variants (:mod:`autograder.variants`): record the values graded, flag another learner's notebook.

    The values come from the reference the instructor's process personalised for this student; the
    submitted notebook is only read (JSON, ``ast.literal_eval``) to compare.
    """
    from ..variants import mismatch_flags, notebook_values

    for report in notebooks:
        ref = json.loads(task.references[report["notebook"]])
        stamp = ref.get("metadata", {}).get("dlbook", {}).get("variant_of")
        if not stamp:
            continue
        report["variant"] = {"digest": stamp.get("digest"), "values": notebook_values(ref)}
        path = found[report["notebook"]][0]
        try:
            sub_nb = json.loads(path.read_bytes()) if path is not None and found[report["notebook"]][1] else None
        except (OSError, ValueError, RecursionError):
            sub_nb = None
        flags = mismatch_flags(report["notebook"], ref, sub_nb, task.submission.student)
        report["flags"] = sorted(set(report["flags"]) | set(flags))


def write_graded(graded: GradedSubmission, out_dir: Path) -> None:
    """Write a graded submission's report (``reports/<student>.json``) and feedback pages under ``out_dir``."""
    out, student = Path(out_dir), graded.report["student"]
    (out / "reports").mkdir(parents=True, exist_ok=True)
    (out / "reports" / f"{student}.json").write_text(json.dumps(graded.report, indent=2))
    if graded.feedback:
        (out / "feedback" / student).mkdir(parents=True, exist_ok=True)
        for stem, page in graded.feedback.items():
            (out / "feedback" / student / f"{stem}.html").write_bytes(page)


def _read_references(references: dict[str, str]) -> dict[str, bytes]:
    return {name: Path(path).read_bytes() for name, path in references.items()}


def grade_submission(student: str, folder: str, assignment: str, references: dict[str, str], settings: Settings,
                     out_dir: str, withheld: dict[str, str] | None = None) -> dict:
    """Grade every notebook of one student's submission; write and return its JSON report.

    ``withheld``: the notebooks intake would not hand over (see :func:`discover`), reported by their flag.
    """
    packed = pack_submission(student, Path(folder), withheld, settings.limits.disk_bytes)
    graded = grade_packed(GradeTask(assignment, _read_references(references), settings, packed))
    write_graded(graded, Path(out_dir))
    return graded.report


LATE_COLUMNS = ["raw_score", "late_days", "penalty", "score", "time_source", "submitted_at", "due"]


def _late_columns(report: dict) -> list:
    """The deadline columns of a grades.csv row (see :mod:`.deadlines`); without a policy, score = points."""
    late = report.get("late")
    if not late:
        points = report.get("points", 0)
        return [points, "", "", points, "", "", ""]
    return [late["raw_score"], late["late_days"], late["penalty"], late["score"], late["time_source"],
            late["submitted_at"] or "", late["due"] or ""]


def write_grades_csv(reports: list[dict], path: Path) -> Path:
    """One row per student: total, status, flag count, the points of every exercise, then the deadline columns
    (``raw_score`` = ``points``, ``late_days``, ``penalty`` as a fraction, ``score`` after it, ``time_source``,
    ``submitted_at``, ``due``)."""
    ids = [e["grade_id"] for r in reports[:1] for n in r.get("notebooks", []) for e in n["exercises"]]
    for r in reports:
        for n in r.get("notebooks", []):
            ids += [e["grade_id"] for e in n["exercises"] if e["grade_id"] not in ids]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["student_id", "assignment", "points", "max_points", "status", "flags", *ids, *LATE_COLUMNS])
        for r in sorted(reports, key=lambda r: r["student"]):
            per = {e["grade_id"]: e["points"] for n in r.get("notebooks", []) for e in n["exercises"]}
            w.writerow([r["student"], r["assignment"], r.get("points", 0), r.get("max_points", 0), r["status"],
                        len(r.get("flags", [])), *(per.get(i, "") for i in ids), *_late_columns(r)])
    return path


def write_gradebook(reports: list[dict], assignment: str, references: dict[str, str], db_url: str) -> None:
    """Record every grade in an nbgrader gradebook (any SQLAlchemy URL); flag tampered notebooks.

    One transaction per report (see :mod:`.gradebook`); ``grade`` records each submission as it finishes.
    """
    refs = _read_references(references)
    with GradebookStore(db_url, assignment, refs) as store:
        for r in reports:
            store.record(r, r.get("submission_sha256", ""), references_sha256(refs))


@dataclass
class BatchResult:
    reports: list[dict]
    out_dir: Path
    seconds: float
    problems: list[str]
    unchanged: list[str] = field(default_factory=list)  # students not regraded: same bytes as when graded

    @property
    def by_student(self) -> dict[str, dict]:
        return {r["student"]: r for r in self.reports}

    @property
    def per_worker(self) -> dict[str, int]:
        """``{worker: submissions it graded in this run}`` (Dask worker address, or the local process)."""
        fresh = [r for r in self.reports if r["student"] not in set(self.unchanged)]
        return dict(sorted(collections.Counter(r.get("worker") or "(none)" for r in fresh).items()))

    def summary(self) -> str:
        lines = [f"{'student':<24} {'points':>14} {'flags':>6}  status"]
        for r in sorted(self.reports, key=lambda r: r["student"]):
            lines.append(f"{r['student']:<24} {r.get('points', 0):>6g} / {r.get('max_points', 0):<5g} "
                         f"{len(r.get('flags', [])):>6}  {r['status']}")
        flagged = sum(1 for r in self.reports if r.get("flags"))
        failed = sum(1 for r in self.reports if r["status"] != "graded")
        lines.append(f"graded {len(self.reports) - failed}, flagged {flagged}, failed to grade {failed}, "
                     f"time {self.seconds:.1f} s; reports in {self.out_dir}")
        if self.unchanged:
            lines.append(f"not regraded (unchanged since graded; --regrade forces): {len(self.unchanged)}")
        lines += [f"graded by {worker}: {n}" for worker, n in self.per_worker.items()]
        lines += [f"note: {p}" for p in self.problems]
        return "\n".join(lines)


    def profile(self) -> str:
        """Where a graded notebook's time went, on average over this run (``grade --profile``)."""
        notebooks = [n for r in self.reports if r["student"] not in set(self.unchanged)
                     for n in r.get("notebooks", []) if n.get("timings")]
        if not notebooks:
            return "profile: no notebook was run in this batch"
        phases = [("kernel_start", "kernel start (sandbox, Python or zygote fork, ipykernel, guard)"),
                  ("first_cell", "first code cell (the notebook's imports)"),
                  ("code_cells", "other code cells (setup and the learner's solutions)"),
                  ("test_cells", "test cells (the judge, and the learner's code it calls)"),
                  ("feedback", "feedback page")]
        total = sum(n["seconds"] for n in notebooks) / len(notebooks)
        starts = collections.Counter(n.get("kernel_start", "python") for n in notebooks)
        lines = [f"profile: {len(notebooks)} notebooks, mean seconds per notebook (kernels: "
                 + ", ".join(f"{k} {v}" for k, v in sorted(starts.items())) + ")"]
        for key, label in phases:
            mean = sum(n["timings"].get(key, 0.0) for n in notebooks) / len(notebooks)
            lines.append(f"  {label:<62} {mean:7.2f} s")
        lines.append(f"  {'run (all but feedback), as measured':<62} {total:7.2f} s")
        return "\n".join(lines)


def _failed_report(student: str, assignment: str, err: BaseException) -> dict:
    """The report of a submission whose grading raised, or whose Dask workers all died (``crashed``)."""
    if type(err).__name__ == "KilledWorker":  # distributed.KilledWorker, without importing Dask here
        status, flag = "crashed", f"worker_crashed: every worker grading it died ({err}); not graded"
    else:
        status, flag = "error", f"grading_failed: {type(err).__name__}: {err}"
    return {"student": student, "assignment": assignment, "status": status, "points": 0, "max_points": 0,
            "flags": [flag], "notebooks": []}


def _batch_settings(settings: Settings | None, workers: int, address: str | None) -> Settings:
    """A copy of ``settings`` (the caller's are not changed) with the sandbox and threads per kernel decided."""
    settings = dataclasses.replace(settings or Settings())
    if address is None:
        if settings.use_bwrap is None:
            settings.use_bwrap = bwrap_available()
        if settings.threads is None:  # a caller that runs other work beside the batch says how many
            settings.threads = max(1, (os.cpu_count() or 1) // workers)
    else:
        settings.threads = 1  # one grading slot per core on each worker host (python -m autograder worker)
    return settings


def _tasks(assignment: str, students, references: dict, settings: Settings, previous: dict, variants,
           out_dir: Path, reports: list[dict], unchanged: list[str]) -> dict[str, GradeTask]:
    """Pack each learner's submission; one unchanged since the gradebook got it keeps its stored report."""
    refs_sha = references_sha256(references)
    withheld = getattr(students, "withheld", {})
    tasks: dict[str, GradeTask] = {}
    for student, folder in students.items():
        packed = pack_submission(student, folder, withheld.get(student), settings.limits.disk_bytes)
        mine = variants.references(student, references) if variants is not None else references
        before = previous.get(student)
        if (before and before["status"] == "graded" and before["submission_sha256"] == packed.sha256
                and before["references_sha256"] == (refs_sha if mine is references else references_sha256(mine))):
            unchanged.append(student)
            reports.append(before["report"])
            if not (out_dir / "reports" / f"{student}.json").exists():
                write_graded(GradedSubmission(before["report"]), out_dir)
        else:
            tasks[student] = GradeTask(assignment, mine, settings, packed)
    return tasks


def _record(assignment: str, outcomes, tasks: dict[str, GradeTask], store: GradebookStore | None, out_dir: Path,
            reports: list[dict], progress: bool) -> None:
    """Write each graded submission (report, feedback, gradebook) as its outcome arrives."""
    bar = None
    if progress and tasks:
        from tqdm import tqdm

        bar = tqdm(total=len(tasks), desc=f"grading {assignment}", unit="submission", file=sys.stderr)
    try:
        for student, outcome in outcomes:
            graded = (GradedSubmission(_failed_report(student, assignment, outcome))
                      if isinstance(outcome, BaseException) else outcome)
            write_graded(graded, out_dir)
            if store:
                store.record(graded.report, tasks[student].submission.sha256,
                             references_sha256(tasks[student].references))
            reports.append(graded.report)
            if bar:
                bar.update()
    finally:
        outcomes.close()
        if bar:
            bar.close()


def grade(assignment: str, submissions: Path, source_dir: Path, out_dir: Path, workers: int | None = None,
          db_url: str | None = None, settings: Settings | None = None, progress: bool = True,
          executor: str = "local", regrade: bool = False, variants=None, policy: Policy | None = None) -> BatchResult:
    """Grade every submission of ``assignment`` in ``submissions``; return the reports and the summary.

    ``executor``: ``local`` (``workers`` processes here) or ``dask://HOST:PORT`` (the workers of that
    Dask scheduler, on any host). With ``db_url``, each submission is recorded in the gradebook as it
    finishes, and one whose bytes (and the reference notebooks) are unchanged since it was graded is not
    graded again unless ``regrade`` (its stored report is used). ``variants``
    (:func:`autograder.variants.for_grading`): grade each learner with the values of their own release.
    ``policy``: due dates and late penalties (:mod:`.deadlines`), applied to every report after grading.
    """
    start = time.monotonic()
    address = dask_address(executor)
    workers = workers or os.cpu_count() or 1
    settings = _batch_settings(settings, workers, address)
    paths = {p.name: str(p) for p in sorted((Path(source_dir) / assignment).glob("*.ipynb"))}
    if not paths:
        raise FileNotFoundError(f"no source notebooks in {Path(source_dir) / assignment}")
    references = _read_references(paths)
    out_dir = Path(out_dir)
    reports: list[dict] = []
    unchanged: list[str] = []
    store = GradebookStore(db_url, assignment, references) if db_url else None
    try:
        previous = store.graded() if store and not regrade else {}
        with tempfile.TemporaryDirectory(prefix="ag-batch-") as scratch:
            students, problems = discover(Path(submissions), assignment, Path(scratch))
            tasks = _tasks(assignment, students, references, settings, previous, variants, out_dir, reports,
                           unchanged)
        if settings.zygote is None:  # a warm kernel template costs about two kernel starts: worth it from three,
            notebooks = len(tasks) * len(references)  # or when the workers are warm and may have one running
            settings.zygote = (notebooks >= 3 * (workers if address is None else 2)
                               or (address is None and WARM_POOLS.warm(workers, settings.worker_memory_bytes)))
        outcomes = (run_local(grade_packed, tasks, workers, settings.worker_memory_bytes) if address is None
                    else run_dask(grade_packed, tasks, address))
        _record(assignment, outcomes, tasks, store, out_dir, reports, progress)
    finally:
        if store:
            store.close()
    if policy is not None:  # deadlines: late days, penalty and score beside the raw points (see .deadlines)
        problems += apply_policy(reports, policy, Path(submissions), assignment, out_dir, db_url)
    write_grades_csv(reports, out_dir / "grades.csv")
    return BatchResult(reports, out_dir, time.monotonic() - start, problems, unchanged)
