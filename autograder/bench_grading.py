"""Grading throughput: ``python -m autograder grade`` against plain sequential ``nbgrader autograde``.

Both grade the same submissions of a real chapter (fast mode, as in grading): the instructor's
solutions for three learners out of four, the untouched release for the fourth. Adds to
``build/bench.json``: ``grading_speedup`` (nbgrader seconds / grade seconds),
``submissions_per_minute`` (of ``grade``) and the details under ``"grading"``.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from .config import CHAPTERS_DIR

SPEEDUP_TARGET = 1.8


def _load() -> float | None:
    return round(os.getloadavg()[0], 1) if hasattr(os, "getloadavg") else None


def _fill(student_nb: dict, source_nb: dict) -> dict:
    """Return a copy of the student notebook with the instructor's answers in its solution cells."""
    meta = lambda c: c.get("metadata", {}).get("nbgrader", {})  # noqa: E731
    answers = {meta(c)["grade_id"]: c["source"] for c in source_nb["cells"] if meta(c).get("solution")}
    nb = json.loads(json.dumps(student_nb))
    for cell in nb["cells"]:
        if meta(cell).get("solution"):
            cell["source"] = answers[meta(cell)["grade_id"]]
    return nb


def make_submissions(chapter: str, course_dir: Path, dest: Path, n: int) -> list[str]:
    """Write ``n`` submissions ``dest/<student>/<chapter>/*.ipynb`` from the release; return the ids."""
    students = [f"learner{i:02d}" for i in range(n)]
    for i, student in enumerate(students):
        for src in sorted((CHAPTERS_DIR / chapter).glob("*.ipynb")):
            release = json.loads((course_dir / "release" / chapter / src.name).read_text())
            nb = release if i % 4 == 3 else _fill(release, json.loads(src.read_text()))
            out = dest / student / chapter / src.name
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(nb))
    return students


def run_grading_bench(out: Path, n: int = 20, chapter: str = "01_backprop", workers: int | None = None) -> bool:
    """Time both graders on ``n`` submissions, merge the numbers into ``out``; return True if the target holds."""
    from . import course
    from .grade import grade

    workers = workers or os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="bench-grading-") as tmp:
        root = Path(tmp)
        course_dir = root / "course"
        print(f"bench grading: releasing {chapter} and writing {n} submissions ...", flush=True)
        course.release([chapter], course_dir, quiet=True)
        make_submissions(chapter, course_dir, root / "subs", n)
        load = {"before_nbgrader": _load()}
        start = time.perf_counter()
        course.autograde(chapter, root / "subs", course_dir, fast=True, quiet=True)
        nbgrader_seconds = time.perf_counter() - start
        load["before_grade"] = _load()
        print(f"bench grading: nbgrader autograde (sequential): {nbgrader_seconds:.1f} s", flush=True)
        plain = {s: sum(p for p, _ in cells.values()) for s, cells in course.scores(chapter, course_dir).items()}
        start = time.perf_counter()
        result = grade(chapter, root / "subs", CHAPTERS_DIR, root / "graded", workers=workers,
                       db_url=f"sqlite:///{root / 'bench.db'}", progress=False)
        grade_seconds = time.perf_counter() - start
        load["after_grade"] = _load()
        ours = {r["student"]: r["points"] for r in result.reports}
    speedup = nbgrader_seconds / grade_seconds
    entry = {"chapter": chapter, "submissions": n, "workers": workers, "cpu_count": os.cpu_count(),
             "nbgrader_seconds": round(nbgrader_seconds, 1), "grade_seconds": round(grade_seconds, 1),
             "grading_speedup": round(speedup, 2), "submissions_per_minute": round(60 * n / grade_seconds, 2),
             "nbgrader_submissions_per_minute": round(60 * n / nbgrader_seconds, 2),
             "load_average_1min": load,  # other work on the machine skews the ratio: compare the phases
             "same_points_as_nbgrader": plain == ours, "target": f">= {SPEEDUP_TARGET}",
             "ok": speedup >= SPEEDUP_TARGET and plain == ours}
    print(f"bench grading: grade ({workers} workers): {grade_seconds:.1f} s; speedup {speedup:.2f}x, "
          f"{entry['submissions_per_minute']} submissions/min, same points: {plain == ours}", flush=True)
    data = json.loads(out.read_text()) if out.exists() else {}
    data.update(grading=entry, grading_speedup=entry["grading_speedup"],
                submissions_per_minute=entry["submissions_per_minute"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2))
    return bool(entry["ok"])
