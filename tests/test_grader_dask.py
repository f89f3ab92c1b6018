"""Grading beyond one machine: a real Dask scheduler and workers, a real PostgreSQL gradebook, on loopback.

One batch of 12 chapter-1 submissions (its first notebook: solutions, blank, a deliberate bug and
hostile ones) is graded through Dask into PostgreSQL while one worker is killed with SIGKILL; then
graded again (nothing is regraded), then with the local executor and ``regrade`` (same points, rows
updated in place). A submission whose every worker dies ends ``crashed``. Two chapters are graded at
once into one database by two ``python -m autograder grade`` processes. Fast mode, one fixed judge seed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat
import pytest

from autograder import course
from autograder.config import CHAPTERS_DIR, REPO_ROOT
from autograder.grade import Settings, grade
from autograder.grading.executors import scheduler_env
from autograder.grading.notebook import reference_cells
from autograder.grading.sandbox import Limits

from .conftest import fill_solutions, nbgrader_meta
from .servers import PG_BIN, DaskCluster, Postgres

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (PG_BIN / "initdb").exists(),
                                 reason=f"PostgreSQL 15 is not installed ({PG_BIN}; Debian package postgresql)")]

CHAPTER = "01_backprop"
NB = "1_derivatives_and_scalar_autograd.ipynb"
FULL = 14.0
OTHER = ("04_rnn", "1_bigrams_and_rnns.ipynb")  # the second chapter of the concurrent runs
SETTINGS = Settings(cell_timeout=60, notebook_budget=300, judge_seed=1,
                    limits=Limits(memory_bytes=2 << 30, processes=128, file_bytes=16 << 20))
WRONG_CENTRAL = "def central_difference(f, x, h=1e-5):\n    return 0.0\n"


def _solution(nb, grade_id: str, source: str):
    next(c for c in nb.cells if nbgrader_meta(c).get("grade_id") == grade_id).source = source
    return nb


def _after(nb, grade_id: str, source: str):
    i = next(i for i, c in enumerate(nb.cells) if nbgrader_meta(c).get("grade_id") == grade_id)
    nb.cells.insert(i + 1, nbformat.v4.new_code_cell(source))
    return nb


def _submissions(alice: nbformat.NotebookNode, bob: nbformat.NotebookNode) -> dict[str, tuple[str, bytes]]:
    """The batch: {student: (file name, bytes)}."""
    A = lambda: nbformat.from_dict(json.loads(json.dumps(alice)))  # noqa: E731 - a fresh copy each time
    subs = {"alice": A(), "bob": nbformat.from_dict(json.loads(json.dumps(bob))),
            "carol": _solution(A(), "ch01_central_difference_solution", WRONG_CENTRAL),
            "osexit": _solution(A(), "ch01_central_difference_solution",
                                "import os\ndef central_difference(f, x, h=1e-5):\n    os._exit(3)\n"),
            "segfault": _after(A(), "ch01_central_difference", "import ctypes\nctypes.string_at(0)"),
            "alwayseq": _solution(A(), "ch01_central_difference_solution", (
                "class Anything(float):\n    def __eq__(self, other):\n        return True\n"
                "    __hash__ = float.__hash__\ndef central_difference(f, x, h=1e-5):\n    return Anything(0.0)\n")),
            "patched": _solution(A(), "ch01_central_difference_solution", (
                WRONG_CENTRAL + "np.allclose = lambda *a, **k: True\ncheck.assert_close = lambda *a, **k: None\n")),
            "exitcall": _after(A(), "ch01_mse_gradients", "exit()")}
    edited = _solution(A(), "ch01_central_difference_solution", WRONG_CENTRAL)
    next(c for c in edited.cells if nbgrader_meta(c).get("grade_id") == "ch01_central_difference").source = (
        'print("ch01_central_difference: all checks passed")')
    subs["edited"] = edited
    flipped = A()
    for cell in flipped.cells:
        meta = nbgrader_meta(cell)
        if meta.get("solution"):
            meta.update(grade=True, points=99)
    subs["flipped"] = flipped
    out = {s: (NB, nbformat.writes(nb).encode()) for s, nb in subs.items()}
    out["invalid"] = (NB, nbformat.writes(A()).encode()[:5000])
    out["renamed"] = ("Copy of my notebook.ipynb", nbformat.writes(A()).encode())
    return out


def _write(root: Path, chapter: str, subs: dict[str, tuple[str, bytes]]) -> Path:
    for student, (name, data) in subs.items():
        (root / student / chapter).mkdir(parents=True)
        (root / student / chapter / name).write_bytes(data)
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """The source folder (one notebook per chapter), the 12 submissions, and alice and bob for ``OTHER``."""
    root = tmp_path_factory.mktemp("dask")
    course.release([CHAPTER, OTHER[0]], root / "course", quiet=True)
    learners = {}
    for chapter, nb_name in ((CHAPTER, NB), OTHER):
        (root / "source" / chapter).mkdir(parents=True)
        (root / "source" / chapter / nb_name).write_bytes((CHAPTERS_DIR / chapter / nb_name).read_bytes())
        blank = nbformat.read(root / "course" / "release" / chapter / nb_name, as_version=4)
        learners[chapter] = (fill_solutions(blank, nbformat.read(CHAPTERS_DIR / chapter / nb_name, as_version=4)),
                             blank)
    subs = _write(root / "subs", CHAPTER, _submissions(*learners[CHAPTER]))
    pair = {s: (OTHER[1], nbformat.writes(nb).encode())
            for s, nb in zip(("alice", "bob"), learners[OTHER[0]], strict=True)}
    _write(root / "pair" / OTHER[0], OTHER[0], pair)
    _write(root / "pair" / CHAPTER, CHAPTER, {s: v for s, v in _submissions(*learners[CHAPTER]).items()
                                              if s in ("alice", "bob")})
    return {"root": root, "source": root / "source", "subs": subs, "students": sorted(p.name for p in subs.iterdir())}


@pytest.fixture(scope="module")
def cluster():
    dask = DaskCluster(workers=2, slots=1, allowed_failures=1)
    try:
        yield dask
    finally:
        dask.stop()


def _rows(pg: Postgres, db: str, assignment: str = CHAPTER) -> dict[str, int]:
    """Row counts of the gradebook for ``assignment``: students, submissions, grades, dlbook_graded."""
    q = {"students": "SELECT count(*) FROM student",
         "submissions": f"SELECT count(*) FROM submitted_assignment sa JOIN assignment a ON a.id = sa.assignment_id "
                        f"WHERE a.name = '{assignment}'",
         "grades": f"SELECT count(*) FROM grade g JOIN submitted_notebook sn ON sn.id = g.notebook_id "
                   f"JOIN submitted_assignment sa ON sa.id = sn.assignment_id JOIN assignment a "
                   f"ON a.id = sa.assignment_id WHERE a.name = '{assignment}'",
         "graded": f"SELECT count(*) FROM dlbook_graded WHERE assignment = '{assignment}'"}
    return {k: pg.query(db, sql)[0][0] for k, sql in q.items()}


def _scores(pg: Postgres, db: str, assignment: str = CHAPTER) -> dict[str, float]:
    rows = pg.query(db, "SELECT sa.student_id, sum(coalesce(g.auto_score, 0)) FROM grade g "
                        "JOIN submitted_notebook sn ON sn.id = g.notebook_id JOIN submitted_assignment sa "
                        "ON sa.id = sn.assignment_id JOIN assignment a ON a.id = sa.assignment_id "
                        f"WHERE a.name = '{assignment}' GROUP BY sa.student_id")
    return {s: float(p) for s, p in rows}


def _graded_at(pg: Postgres, db: str) -> dict[str, object]:
    return dict(pg.query(db, f"SELECT student, graded_at FROM dlbook_graded WHERE assignment = '{CHAPTER}'"))


def _kill(cluster: DaskCluster, client, worker: str, pid: int) -> None:
    """SIGKILL the worker process ``pid``; return once the scheduler has dropped ``worker``."""
    cluster.remember()
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while worker in client.scheduler_info()["workers"] and time.monotonic() < deadline:
        time.sleep(0.1)


def _kill_one_worker_while_grading(cluster: DaskCluster, done: threading.Event, killed: dict) -> None:
    """Wait until a worker has a grading task under way, then SIGKILL that worker's process."""
    with cluster.client() as client:
        while not done.is_set():
            if any(client.processing().values()):
                time.sleep(3)  # its kernel is running by now
                pids = client.run(os.getpid, on_error="ignore")
                busy = {w: keys for w, keys in client.processing().items() if keys and w in pids}
                if busy:
                    worker, keys = sorted(busy.items())[0]
                    killed.update(worker=worker, keys=list(keys), pid=pids[worker])
                    _kill(cluster, client, worker, pids[worker])
                    return
            time.sleep(0.2)


@pytest.fixture(scope="module")
def dask_batch(setup, pg, cluster) -> dict:
    db = pg.create_database("batch")
    done, killed = threading.Event(), {}
    killer = threading.Thread(target=_kill_one_worker_while_grading, args=(cluster, done, killed))
    killer.start()
    try:
        result = grade(CHAPTER, setup["subs"], setup["source"], setup["root"] / "out-dask", db_url=db,
                       settings=SETTINGS, progress=False, executor=cluster.executor)
    finally:
        done.set()
        killer.join()
    print(result.summary())
    return {"db": "batch", "url": db, "result": result, "killed": killed, "rows": _rows(pg, "batch"),
            "graded_at": _graded_at(pg, "batch")}


def test_every_submission_graded_exactly_once_though_a_worker_was_killed(setup, pg, dask_batch) -> None:
    result, killed = dask_batch["result"], dask_batch["killed"]
    assert killed, "expected the test to kill a worker while it graded, got no busy worker"
    assert sorted(r["student"] for r in result.reports) == setup["students"]
    assert not result.unchanged
    n = len(setup["students"])
    assert dask_batch["rows"] == {"students": n, "submissions": n, "grades": 6 * n, "graded": n}
    for key in killed["keys"]:
        student = key.split("-")[2]
        report = result.by_student[student]
        assert report["status"] == "graded" and report["worker"] != killed["worker"], (
            f"expected {student} graded again by another worker than the killed {killed['worker']}, got {report}")
    assert sum(result.per_worker.values()) == n
    assert all(w.startswith("tcp://127.0.0.1:") for w in result.per_worker), result.per_worker
    assert "graded by tcp://127.0.0.1:" in result.summary()


def test_points_and_outcomes_through_dask(setup, pg, dask_batch) -> None:
    reports = dask_batch["result"].by_student
    points = {s: r["points"] for s, r in reports.items()}
    assert points["alice"] == FULL and points["bob"] == 0 and points["invalid"] == 0
    for student in ("carol", "osexit", "alwayseq", "patched", "edited"):
        assert points[student] == FULL - 2, f"{student}: expected to lose central_difference only, got {points}"
    assert points["renamed"] == FULL and points["flipped"] == FULL
    assert reports["invalid"]["notebooks"][0]["status"] == "invalid"
    assert all(n["sandbox"] == "bubblewrap" or n["sandbox"] is None or n["sandbox"] == "rlimits-only"
               for r in reports.values() for n in r["notebooks"])
    assert _scores(pg, dask_batch["db"]) == {s: float(p) for s, p in points.items()}
    page = dask_batch["result"].out_dir / "feedback" / "alice" / f"{Path(NB).stem}.html"
    assert "BEGIN HIDDEN TESTS" not in page.read_text() and "Score" in page.read_text()
    assert (dask_batch["result"].out_dir / "grades.csv").read_text().count("\n") == len(setup["students"]) + 1


@pytest.fixture(scope="module")
def rerun(setup, pg, cluster, dask_batch) -> dict:
    cluster.wait_workers(2)
    result = grade(CHAPTER, setup["subs"], setup["source"], setup["root"] / "out-dask", db_url=dask_batch["url"],
                   settings=SETTINGS, progress=False, executor=cluster.executor)
    return {"result": result, "rows": _rows(pg, "batch"), "graded_at": _graded_at(pg, "batch")}


def test_rerun_grades_nothing_and_adds_no_rows(setup, dask_batch, rerun) -> None:
    result = rerun["result"]
    assert sorted(result.unchanged) == setup["students"], "expected every unchanged submission skipped"
    assert result.per_worker == {}
    assert rerun["rows"] == dask_batch["rows"]
    assert rerun["graded_at"] == dask_batch["graded_at"], "expected no row rewritten"
    assert {s: r["points"] for s, r in result.by_student.items()} == {
        s: r["points"] for s, r in dask_batch["result"].by_student.items()}


@pytest.fixture(scope="module")
def local_regrade(setup, pg, dask_batch, rerun) -> dict:
    """The same batch with the local executor, ``regrade`` forced, into the same database."""
    result = grade(CHAPTER, setup["subs"], setup["source"], setup["root"] / "out-local", workers=2,
                   db_url=dask_batch["url"], settings=SETTINGS, progress=False, regrade=True)
    return {"result": result, "rows": _rows(pg, "batch"), "graded_at": _graded_at(pg, "batch"),
            "scores": _scores(pg, "batch")}


def test_local_executor_gives_the_same_points_for_every_learner(dask_batch, local_regrade) -> None:
    by_dask, by_local = dask_batch["result"].by_student, local_regrade["result"].by_student
    assert set(by_dask) == set(by_local)
    for student in by_dask:
        per = lambda r: {e["grade_id"]: e["points"] for n in r["notebooks"] for e in n["exercises"]}  # noqa: E731
        assert per(by_dask[student]) == per(by_local[student]), f"{student}: Dask and local disagree"
        assert by_local[student]["worker"].startswith("local ")


def test_regrade_updates_rows_without_duplicating_them(dask_batch, local_regrade) -> None:
    assert not local_regrade["result"].unchanged
    assert local_regrade["rows"] == dask_batch["rows"]
    before, after = dask_batch["graded_at"], local_regrade["graded_at"]
    assert set(before) == set(after) and all(after[s] > before[s] for s in before), "expected every row rewritten"
    assert local_regrade["scores"] == {s: float(r["points"]) for s, r in local_regrade["result"].by_student.items()}


def _kill_every_worker_grading(cluster: DaskCluster, prefix: str, done: threading.Event, kills: list) -> None:
    with cluster.client() as client:
        while not done.is_set():
            try:  # a worker that is dying or starting can make a call fail: try again, never stop watching
                holders = [w for w, keys in client.processing().items()
                           if any(str(k).startswith(prefix) for k in keys)]
                if holders:
                    pids = client.run(os.getpid, on_error="ignore")
                    for w in holders:
                        if w in pids:
                            kills.append(w)
                            _kill(cluster, client, w, pids[w])
            except Exception:  # noqa: BLE001
                pass
            time.sleep(0.2)


def _scheduler_config() -> tuple:
    import dask

    return (dask.config.get("distributed.scheduler.worker-saturation"),
            dask.config.get("distributed.scheduler.allowed-failures"))


def test_the_grading_scheduler_gives_a_worker_one_submission_at_a_time(cluster) -> None:
    """``autograder scheduler``: worker-saturation 1.0 (Dask's default 1.1 queues a second task on a worker)."""
    with cluster.client() as client:
        assert client.run_on_scheduler(_scheduler_config) == (1.0, 1)
    with pytest.raises(ValueError, match="allowed-failures >= 0"):
        scheduler_env(-1)


def test_a_submission_that_kills_every_worker_ends_crashed(setup, pg, cluster) -> None:
    """allowed-failures is 1: the second worker that dies grading it marks it crashed; the other is graded.

    The scheduler (``autograder scheduler``) gives a worker one task at a time, so ``fine`` is never held
    by a worker that crashy kills, and is graded however the two are placed.
    """
    cluster.wait_workers(2)
    db = pg.create_database("crash")
    subs = setup["root"] / "crash"
    # crashy stands still for 45 s (under the 60 s cell timeout): whichever worker takes it is caught at it
    crashy = _after(nbformat.reads((setup["subs"] / "alice" / CHAPTER / NB).read_text(), as_version=4),
                    "ch01_central_difference", "import time\ntime.sleep(45)")
    _write(subs, CHAPTER, {"crashy": (NB, nbformat.writes(crashy).encode()),
                           "fine": (NB, (setup["subs"] / "bob" / CHAPTER / NB).read_bytes())})
    done, kills = threading.Event(), []
    killer = threading.Thread(target=_kill_every_worker_grading,
                              args=(cluster, f"grade-{CHAPTER}-crashy-", done, kills))
    killer.start()
    try:
        result = grade(CHAPTER, subs, setup["source"], setup["root"] / "out-crash", db_url=db, settings=SETTINGS,
                       progress=False, executor=cluster.executor)
    finally:
        done.set()
        killer.join()
    crashy, fine = result.by_student["crashy"], result.by_student["fine"]
    # Dask decides how many deaths count (allowed-failures 1: usually the second); the product's part is
    # that crashy ends crashed after its workers died, and fine is graded.
    assert 1 <= len(kills) <= 2, f"expected the workers grading crashy killed (1 or 2), got {kills}"
    assert crashy["status"] == "crashed" and crashy["points"] == 0, (kills, crashy["status"], crashy["flags"])
    assert any(f.startswith("worker_crashed:") for f in crashy["flags"]), crashy["flags"]
    assert fine["status"] == "graded", (fine["flags"], [n.get("flags") for n in fine.get("notebooks", [])])
    assert dict(pg.query("crash", "SELECT student, status FROM dlbook_graded")) == {"crashy": "crashed",
                                                                                   "fine": "graded"}
    assert "crashy" in result.summary() and "crashed" in result.summary()


def test_two_chapters_graded_at_once_into_one_database(setup, pg, cluster) -> None:
    """Two ``python -m autograder grade`` processes, one chapter each, the same two students, one database."""
    cluster.wait_workers(2)
    db = pg.create_database("concurrent")
    runs = {}
    for chapter in (CHAPTER, OTHER[0]):
        argv = [sys.executable, "-m", "autograder", "--source-dir", str(setup["source"]), "--course-dir",
                str(setup["root"] / f"course-{chapter}"), "grade", chapter, str(setup["root"] / "pair" / chapter),
                "--db", db, "--executor", cluster.executor, "--cell-timeout", "60", "--judge-seed", "1"]
        runs[chapter] = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    outputs = {}
    for chapter, proc in runs.items():
        try:
            outputs[chapter] = proc.communicate(timeout=300)[0].decode(errors="replace")
        finally:
            proc.kill()
    for chapter, proc in runs.items():
        assert proc.returncode == 0, f"grade {chapter} failed:\n{outputs[chapter][-3000:]}"
    assert pg.query("concurrent", "SELECT count(*) FROM student")[0][0] == 2
    for chapter in (CHAPTER, OTHER[0]):
        rows = _rows(pg, "concurrent", chapter)
        assert rows["submissions"] == 2 and rows["graded"] == 2, f"{chapter}: {rows}"
        scores = _scores(pg, "concurrent", chapter)
        full = sum(c["points"] for p in (setup["source"] / chapter).glob("*.ipynb") for c in reference_cells(p))
        assert scores == {"alice": float(full), "bob": 0.0}, f"{chapter}: {scores}\n{outputs[chapter][-2000:]}"
