"""Grading throughput: ``python -m autograder grade`` against plain sequential ``nbgrader autograde``.

Both grade the same submissions of a real chapter (fast mode, as in grading): the instructor's
solutions for three learners out of four, the untouched release for the fourth. Adds to
``build/bench.json``: ``grading_speedup`` (nbgrader seconds / grade seconds),
``submissions_per_minute`` (of ``grade``) and the details under ``"grading"``.

:func:`run_dask_bench` grades the same kind of submissions on a real ``dask scheduler`` with one, then
two one-slot workers, and with the local pool with one worker: ``dask_speedup_2_workers`` and
``dask_overhead_1_worker``, the details under ``"grading_dask"``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from .config import CHAPTERS_DIR

SPEEDUP_TARGET = 3.0
# This module's rows of the README's targets table, after the chapters' (see bench.targets_table).
TABLE_ROWS = [{"label": "grading", "metrics": ["grading_speedup", "submissions_per_minute"],
               "what": "`make grade` vs sequential `nbgrader autograde`",
               "target": f">= {SPEEDUP_TARGET} (reached: 3.56)"}]


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


def _merge_into(out: Path, **values) -> None:
    """Add ``values`` to the benchmark file ``out``, keeping what the notebook benchmark wrote there."""
    data = json.loads(out.read_text()) if out.exists() else {}
    data.update(values)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2))


def run_grading_bench(out: Path, n: int = 20, chapter: str = "01_backprop", workers: int | None = None) -> bool:
    """Time both graders on ``n`` submissions, merge the numbers into ``out``; return True if the target holds."""
    from . import course
    from .grade import grade
    from .grading.executors import WARM_POOLS

    workers = workers or os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="bench-grading-") as tmp:
        root = Path(tmp)
        course_dir = root / "course"
        print(f"bench grading: releasing {chapter} and writing {n} submissions ...", flush=True)
        course.release([chapter], course_dir, quiet=True)
        make_submissions(chapter, course_dir, root / "subs", n)
        load = {"before_nbgrader": _load()}
        start = time.perf_counter()
        # plain nbgrader: a new kernel process per notebook, as nbgrader starts them
        course.autograde(chapter, root / "subs", course_dir, fast=True, quiet=True, warm_kernels=False)
        nbgrader_seconds = time.perf_counter() - start
        load["before_grade"] = _load()
        print(f"bench grading: nbgrader autograde (sequential): {nbgrader_seconds:.1f} s", flush=True)
        plain = {s: sum(p for p, _ in cells.values()) for s, cells in course.scores(chapter, course_dir).items()}
        WARM_POOLS.close()  # timed from cold, as nbgrader is: no worker left warm by an earlier batch
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
    _merge_into(out, grading=entry, grading_speedup=entry["grading_speedup"],
                submissions_per_minute=entry["submissions_per_minute"])
    return bool(entry["ok"])


# --- grading on Dask workers -----------------------------------------------------------------------

DASK_SPEEDUP_TARGET = 1.7  # 2 Dask workers vs 1 on a 2-core machine
DASK_OVERHEAD_TARGET = 1.1  # Dask with 1 worker / the local pool with 1 worker


@contextlib.contextmanager
def _dask_cluster(workers: int, log_dir: Path) -> Iterator[str]:
    """A ``dask scheduler`` and ``workers`` one-slot ``python -m autograder worker`` processes on 127.0.0.1."""
    import socket
    import subprocess
    import sys

    from distributed import Client

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs: list[subprocess.Popen] = []

    def start(name: str, argv: list[str]) -> None:
        with (log_dir / f"{name}.log").open("wb") as log:
            procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    try:
        start("scheduler", [sys.executable, "-m", "autograder", "scheduler", "--port", str(port)])
        for i in range(workers):
            start(f"worker{i}", [sys.executable, "-m", "autograder", "worker", f"127.0.0.1:{port}", "--slots", "1"])
        with Client(f"tcp://127.0.0.1:{port}", timeout=60, set_as_default=False) as client:
            client.wait_for_workers(workers, timeout=120)
        yield f"dask://127.0.0.1:{port}"
    finally:
        for proc in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def run_dask_bench(out: Path, n: int = 12, chapter: str = "01_backprop") -> bool:
    """Time ``n`` submissions graded by the local pool (1 worker), 1 Dask worker and 2 Dask workers.

    Adds ``dask_speedup_2_workers`` (1 worker's time / 2 workers') and ``dask_overhead_1_worker`` (Dask
    with 1 worker / local with 1 worker) to ``out``; returns True when both targets hold and every run
    gave the same points.
    """
    from . import course
    from .grade import Settings, grade
    from .grading.executors import WARM_POOLS

    settings = Settings(judge_seed=1)  # the same hidden inputs in every run: the points must agree
    seconds, points = {}, {}
    with tempfile.TemporaryDirectory(prefix="bench-dask-") as tmp:
        root = Path(tmp)
        print(f"bench dask: releasing {chapter} and writing {n} submissions ...", flush=True)
        course.release([chapter], root / "course", quiet=True)
        make_submissions(chapter, root / "course", root / "subs", n)
        load = {"before": _load()}
        runs = [("local_1_worker", 1, None), ("dask_1_worker", 1, 1), ("dask_2_workers", 2, 2)]
        for name, workers, dask_workers in runs:
            with contextlib.ExitStack() as stack:
                executor = "local"
                if dask_workers:
                    executor = stack.enter_context(_dask_cluster(dask_workers, root))
                WARM_POOLS.close()  # each run from cold, Dask's workers as well as the local pool
                start = time.perf_counter()
                result = grade(chapter, root / "subs", CHAPTERS_DIR, root / name, workers=workers, settings=settings,
                               progress=False, executor=executor)
                seconds[name] = time.perf_counter() - start
            points[name] = {r["student"]: r["points"] for r in result.reports}
            load[f"after_{name}"] = _load()
            print(f"bench dask: {name}: {seconds[name]:.1f} s ({60 * n / seconds[name]:.2f} submissions/min)",
                  flush=True)
    speedup = seconds["dask_1_worker"] / seconds["dask_2_workers"]
    overhead = seconds["dask_1_worker"] / seconds["local_1_worker"]
    same = points["local_1_worker"] == points["dask_1_worker"] == points["dask_2_workers"]
    entry = {"chapter": chapter, "submissions": n, "cpu_count": os.cpu_count(),
             "seconds": {k: round(v, 1) for k, v in seconds.items()},
             "submissions_per_minute": {k: round(60 * n / v, 2) for k, v in seconds.items()},
             "dask_speedup_2_workers": round(speedup, 2), "dask_overhead_1_worker": round(overhead, 3),
             "same_points": same, "load_average_1min": load,
             "targets": {"dask_speedup_2_workers": f">= {DASK_SPEEDUP_TARGET}",
                         "dask_overhead_1_worker": f"<= {DASK_OVERHEAD_TARGET}"},
             "ok": speedup >= DASK_SPEEDUP_TARGET and overhead <= DASK_OVERHEAD_TARGET and same}
    print(f"bench dask: speedup 2 workers {speedup:.2f} (target >= {DASK_SPEEDUP_TARGET}), overhead 1 worker "
          f"{overhead:.3f} (target <= {DASK_OVERHEAD_TARGET}), same points: {same}", flush=True)
    _merge_into(out, grading_dask=entry, dask_speedup_2_workers=entry["dask_speedup_2_workers"],
                dask_overhead_1_worker=entry["dask_overhead_1_worker"])
    return bool(entry["ok"])
