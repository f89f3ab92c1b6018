"""Hostile submissions, built from chapter 1's first notebook, graded in one batch with honest ones.

Each submission is the instructor's solutions (alice) or the untouched release (bob) with one
hostile change; each test asserts its outcome: points, status, flags, and that the batch, the host
and the other submissions came through untouched. Fast mode, 2 workers, short timeouts.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
import socket
import sqlite3
import uuid
from pathlib import Path

import nbformat
import pytest

from autograder import course
from autograder.config import CHAPTERS_DIR, REPO_ROOT
from autograder.grade import Settings, grade
from autograder.grading.sandbox import Limits, bwrap_available

from .conftest import fill_solutions, nbgrader_meta

pytestmark = pytest.mark.slow

CHAPTER = "01_backprop"
NB = "1_derivatives_and_scalar_autograd.ipynb"
FULL = 14.0
POINTS = {"ch01_central_difference": 2, "ch01_mse_gradients": 3, "ch01_value_add_mul": 2,
          "ch01_value_pow_exp_log": 2, "ch01_value_tanh_relu": 2, "ch01_value_backward": 3}
TOKEN = str(uuid.uuid4().int)[:8]  # digits: marks what hostile code tries to leave behind on the host
NEEDS_BWRAP = pytest.mark.skipif(not bwrap_available(), reason="bubblewrap cannot run here (not installed, or "
                                 "no namespaces): only rlimits and the process group confine the kernel")

WRONG_CENTRAL = "def central_difference(f, x, h=1e-5):\n    return 0.0\n"


def _code(source: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_code_cell(source)


def _find(nb, grade_id: str) -> int:
    return next(i for i, c in enumerate(nb.cells) if nbgrader_meta(c).get("grade_id") == grade_id)


def _set_solution(nb, grade_id: str, source: str, append: bool = False):
    cell = nb.cells[_find(nb, grade_id)]
    cell.source = cell.source + "\n" + source if append else source
    return nb


def _insert_after(nb, grade_id: str, source: str):
    nb.cells.insert(_find(nb, grade_id) + 1, _code(source))
    return nb


def _hostile(alice, bob, paths: dict) -> dict[str, object]:
    """Return {student: notebook, or (file name, bytes)}: the batch."""
    A = lambda: nbformat.from_dict(json.loads(json.dumps(alice)))  # noqa: E731 - a fresh copy each time
    B = lambda: nbformat.from_dict(json.loads(json.dumps(bob)))  # noqa: E731
    subs: dict[str, object] = {"alice": A(), "bob": B()}
    subs["loop"] = _set_solution(A(), "ch01_central_difference_solution",
                                 "def central_difference(f, x, h=1e-5):\n    while True:\n        pass\n")
    subs["membomb"] = _set_solution(A(), "ch01_mse_gradients_solution", (
        "def _bomb():\n    hog = []\n    while True:\n        hog.append(bytearray(64 << 20))\n"
        "try:\n    _bomb()\nexcept MemoryError:\n    print('memory limit hit')\n"), append=True)
    subs["osexit"] = _set_solution(A(), "ch01_central_difference_solution",
                                   "import os\ndef central_difference(f, x, h=1e-5):\n    os._exit(3)\n")
    subs["exitcall"] = _insert_after(A(), "ch01_mse_gradients", "exit()")
    subs["segfault"] = _insert_after(A(), "ch01_central_difference", "import ctypes\nctypes.string_at(0)")
    subs["background"] = _insert_after(A(), "ch01_central_difference", (
        f"import subprocess\nsubprocess.Popen(['sleep', '4242.{TOKEN[:4]}'])\n"
        f"subprocess.Popen(['sleep', '4243.{TOKEN[:4]}'], start_new_session=True)\n"))
    subs["forkbomb"] = _insert_after(A(), "ch01_central_difference", (
        "import os, time\nchildren = 0\ntry:\n    for _ in range(1000):\n        if os.fork() == 0:\n"
        "            time.sleep(2)\n            os._exit(0)\n        children += 1\nexcept OSError as err:\n"
        "    print(f'fork refused after {children} children')\n"
        "for _ in range(children):\n    os.wait()\n"))
    subs["bigline"] = _insert_after(A(), "ch01_central_difference", "print('x' * 20_000_000)")
    subs["manylines"] = _insert_after(A(), "ch01_central_difference", "for i in range(10_000):\n    print(i)")
    targets = [str(p) for p in paths["secret_files"]]
    subs["readsource"] = _insert_after(A(), "ch01_central_difference", (
        f"import glob, os\ntargets = {targets!r} + glob.glob('../../*/*/*.ipynb') + glob.glob('../../../*/*/*.ipynb')\n"
        "targets = [t for t in targets if not os.path.abspath(t).startswith(os.getcwd())]\n"
        "readable = [t for t in targets if os.path.isfile(t) and os.access(t, os.R_OK)]\n"
        "for t in readable:\n    print(open(t).read()[:2000])\nprint('readable:', len(readable))\n"))
    # /tmp inside the sandbox is the kernel's own private tmpfs (writable); the host's /tmp is checked from outside
    outside = [str(p) for p in paths["outside_files"] if p.parent != Path("/tmp")]
    subs["writeout"] = _insert_after(A(), "ch01_central_difference", (
        f"written = 0\nfor t in {outside!r}:\n    try:\n        open(t, 'w').write('pwned')\n        written += 1\n"
        "    except OSError:\n        pass\nprint('written outside:', written)\n"
        "open('scratch.txt', 'w').write('fine')\n"))
    subs["network"] = _insert_after(A(), "ch01_central_difference", (
        "import socket\ntry:\n"
        f"    socket.create_connection(('127.0.0.1', {paths['port']}), timeout=3)\n    print('network open')\n"
        "except OSError:\n    print('network blocked')\n"))
    subs["alwayseq"] = _set_solution(A(), "ch01_central_difference_solution", (
        "class Anything(float):\n    def __eq__(self, other):\n        return True\n    __hash__ = float.__hash__\n"
        "def central_difference(f, x, h=1e-5):\n    return Anything(0.0)\n"))
    transformer = ("get_ipython().input_transformers_cleanup.append(\n    lambda lines: "
                   "['print(\"all checks passed\")\\n'] if any('EX =' in l for l in lines) else lines)\n")
    subs["transformer"] = _set_solution(B(), "ch01_central_difference_solution", WRONG_CENTRAL + transformer)
    subs["customexc"] = _set_solution(B(), "ch01_central_difference_solution", (
        WRONG_CENTRAL + "import sys\nget_ipython().set_custom_exc((Exception,), lambda *a, **k: None)\n"
        "sys.settrace(lambda *a: None)\n"))
    subs["patched"] = _set_solution(A(), "ch01_central_difference_solution", (
        WRONG_CENTRAL + "np.allclose = lambda *a, **k: True\ncheck.assert_close = lambda *a, **k: None\n"))
    subs["reference"] = _set_solution(A(), "ch01_central_difference_solution", (
        "def central_difference(f, x, h=1e-5):\n    return float(autograd.derivative(f, x))\n"))
    deleted = A()
    deleted.cells = [c for c in deleted.cells if not nbgrader_meta(c).get("grade")]
    subs["deleted"] = deleted
    edited = _set_solution(A(), "ch01_central_difference_solution", WRONG_CENTRAL)
    fake = 'print("ch01_central_difference: all checks passed")'
    edited.cells[_find(edited, "ch01_central_difference")].source = fake
    subs["edited"] = edited
    flipped = A()
    for cell in flipped.cells:
        meta = nbgrader_meta(cell)
        if meta.get("solution"):
            meta.update(grade=True, points=99)
        elif meta.get("grade"):
            meta.update(grade=False, locked=False, points=50)
    subs["flipped"] = flipped
    subs["invalid"] = (NB, nbformat.writes(A()).encode()[:5000])
    subs["renamed"] = ("Copy of my notebook.ipynb", nbformat.writes(A()).encode())
    return subs


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("hostile")
    course_dir, src = root / "course", root / "source"
    course.release([CHAPTER], course_dir, quiet=True)
    (src / CHAPTER).mkdir(parents=True)
    (src / CHAPTER / NB).write_bytes((CHAPTERS_DIR / CHAPTER / NB).read_bytes())
    student_nb = nbformat.read(course_dir / "release" / CHAPTER / NB, as_version=4)
    alice = fill_solutions(student_nb, nbformat.read(CHAPTERS_DIR / CHAPTER / NB, as_version=4))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    listener.setblocking(False)
    subs_dir = root / "submissions"
    paths = {
        "port": listener.getsockname()[1],
        "secret_files": [CHAPTERS_DIR / CHAPTER / NB, src / CHAPTER / NB, course_dir / "gradebook.db",
                         subs_dir / "alice" / CHAPTER / NB, REPO_ROOT / "autograder" / "grade.py"],
        "outside_files": [REPO_ROOT / f"pwned-{TOKEN}", Path("/tmp") / f"pwned-{TOKEN}",
                          subs_dir / "alice" / CHAPTER / NB, root / f"pwned-{TOKEN}"],
    }
    for student, nb in _hostile(alice, student_nb, paths).items():
        folder = subs_dir / student / CHAPTER
        folder.mkdir(parents=True)
        name, data = nb if isinstance(nb, tuple) else (NB, nbformat.writes(nb).encode())
        (folder / name).write_bytes(data)
    hashes = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in subs_dir.rglob("*") if p.is_file()}
    settings = Settings(cell_timeout=20, notebook_budget=400,  # 20 s: the infinite loop burns a core that long
                        limits=Limits(memory_bytes=2 << 30, processes=128, file_bytes=16 << 20))
    db = root / "gradebook.db"
    result = grade(CHAPTER, subs_dir, src, root / "out", workers=2, db_url=f"sqlite:///{db}", settings=settings,
                   progress=False)
    try:
        listener.accept()
        connected = True
    except BlockingIOError:
        connected = False
    listener.close()
    print(result.summary())
    return {"result": result, "reports": result.by_student, "hashes": hashes, "paths": paths, "db": db,
            "connected": connected, "root": root}


def _report(batch, student: str) -> dict:
    return batch["reports"][student]


def _notebook(batch, student: str) -> dict:
    return _report(batch, student)["notebooks"][0]


def _ex(batch, student: str) -> dict[str, dict]:
    return {e["grade_id"]: e for e in _notebook(batch, student)["exercises"]}


def _kinds(batch, student: str) -> set[str]:
    return {f.split(":")[0] for f in _report(batch, student)["flags"]}


def _feedback(batch, student: str) -> str:
    """The feedback page's text (tags removed)."""
    page = (batch["root"] / "out" / "feedback" / student / f"{Path(NB).stem}.html").read_text()
    return html.unescape(re.sub(r"<[^>]+>", "", page))


def test_batch_completes_and_every_submission_is_reported(batch) -> None:
    assert set(batch["reports"]) == {p.name for p in (batch["root"] / "submissions").iterdir()}
    assert all(r["status"] == "graded" for r in batch["reports"].values()), batch["result"].summary()


def test_honest_and_blank(batch) -> None:
    assert _report(batch, "alice")["points"] == FULL and _report(batch, "alice")["flags"] == []
    assert _report(batch, "bob")["points"] == 0 and _report(batch, "bob")["max_points"] == FULL
    assert {e["status"] for e in _ex(batch, "bob").values()} == {"failed"}


def test_infinite_loop_times_out_and_grading_goes_on(batch) -> None:
    ex = _ex(batch, "loop")
    assert ex["ch01_central_difference"]["status"] == "timeout"
    assert _report(batch, "loop")["points"] == FULL - 2
    assert _notebook(batch, "loop")["restarts"] >= 1


def test_memory_bomb_hits_the_memory_limit(batch) -> None:
    assert _report(batch, "membomb")["points"] == FULL
    assert "memory limit hit" in _feedback(batch, "membomb")


def test_os_exit_in_a_tested_function_costs_only_that_exercise(batch) -> None:
    assert _ex(batch, "osexit")["ch01_central_difference"]["status"] == "crashed"
    assert _report(batch, "osexit")["points"] == FULL - 2


def test_exit_and_segfault_restart_the_kernel_keeping_credit(batch) -> None:
    for student in ("exitcall", "segfault"):
        nb = _notebook(batch, student)
        assert _report(batch, student)["points"] == FULL, student
        assert [c["status"] for c in nb["cells"]] == ["crashed"], (student, nb["cells"])
        assert nb["restarts"] == 1


def _processes_with(text: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if text.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except OSError:
            continue
    return found


def test_background_processes_do_not_outlive_grading(batch) -> None:
    assert _report(batch, "background")["points"] == FULL
    assert not _processes_with(f"4242.{TOKEN[:4]}"), "a background process survived grading"
    if bwrap_available():  # without namespaces a process that called setsid() escapes the process group
        assert not _processes_with(f"4243.{TOKEN[:4]}"), "a detached process survived grading"


@pytest.mark.skipif(not bwrap_available() and os.geteuid() == 0,
                    reason="RLIMIT_NPROC does not apply to root: only enforced when bubblewrap drops to nobody")
def test_fork_bomb_is_stopped_by_the_process_limit(batch) -> None:
    assert _report(batch, "forkbomb")["points"] == FULL
    text = _feedback(batch, "forkbomb")
    refused = re.search(r"fork refused after (\d+) children", text)
    assert refused, "the fork loop was never refused"
    assert int(refused.group(1)) < 128


def test_outputs_are_capped_in_bytes(batch) -> None:
    for student in ("bigline", "manylines"):
        assert _report(batch, student)["points"] == FULL
        assert "more bytes of output not kept" in _feedback(batch, student)
        page = batch["root"] / "out" / "feedback" / student / f"{Path(NB).stem}.html"
        assert page.stat().st_size < 2_000_000, f"{student}: feedback of {page.stat().st_size} bytes"
    report_bytes = (batch["root"] / "out" / "reports" / "bigline.json").stat().st_size
    assert report_bytes < 100_000


@NEEDS_BWRAP
def test_learner_code_cannot_read_source_tests_gradebook_or_others(batch) -> None:
    page = _feedback(batch, "readsource")
    assert "readable: 0" in page
    assert "BEGIN HIDDEN TESTS" not in page and "_random_dag" not in page
    assert _report(batch, "readsource")["points"] == FULL


@NEEDS_BWRAP
def test_nothing_is_written_outside_scratch(batch) -> None:
    assert "written outside: 0" in _feedback(batch, "writeout")
    for path in batch["paths"]["outside_files"]:
        assert not path.exists() or path.name == NB, f"{path} was written"
    for path, digest in batch["hashes"].items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, f"submitted file {path} was modified"
    assert _report(batch, "writeout")["points"] == FULL


@NEEDS_BWRAP
def test_no_network(batch) -> None:
    assert "network blocked" in _feedback(batch, "network")
    assert not batch["connected"], "the kernel reached a socket on the host"


def test_always_equal_object_scores_zero_and_is_flagged(batch) -> None:
    assert _ex(batch, "alwayseq")["ch01_central_difference"]["points"] == 0
    assert _report(batch, "alwayseq")["points"] == FULL - 2
    assert "lying_eq" in _kinds(batch, "alwayseq")


def test_input_transformer_is_undone_and_flagged(batch) -> None:
    assert _report(batch, "transformer")["points"] == 0
    assert "input_transformer" in _kinds(batch, "transformer")


def test_custom_exception_handler_and_settrace_are_undone_and_flagged(batch) -> None:
    assert _report(batch, "customexc")["points"] == 0
    assert {"custom_exception_handler", "settrace"} <= _kinds(batch, "customexc")


def test_patched_checks_are_restored_and_flagged(batch) -> None:
    assert _ex(batch, "patched")["ch01_central_difference"]["points"] == 0
    assert _report(batch, "patched")["points"] == FULL - 2
    flags = _report(batch, "patched")["flags"]
    assert "patched_function: numpy.allclose" in flags and "patched_function: dlbook.check.assert_close" in flags


def test_calling_the_reference_is_flagged(batch) -> None:
    assert _ex(batch, "reference")["ch01_central_difference"]["points"] == 0
    assert "calls_reference" in _kinds(batch, "reference")


def test_deleted_test_cells_are_put_back(batch) -> None:
    assert _report(batch, "deleted")["points"] == FULL
    assert sum(f.startswith("test_cell_missing") for f in _report(batch, "deleted")["flags"]) == len(POINTS)


def test_edited_test_cell_is_replaced_by_the_reference(batch) -> None:
    assert _report(batch, "edited")["points"] == FULL - 2
    assert "test_cell_edited" in _kinds(batch, "edited")


def test_flipped_metadata_changes_nothing_but_is_reported(batch) -> None:
    assert _report(batch, "flipped")["points"] == FULL and _report(batch, "flipped")["max_points"] == FULL
    assert "metadata_changed" in _kinds(batch, "flipped")


def test_invalid_json_scores_zero_without_stopping_the_batch(batch) -> None:
    nb = _notebook(batch, "invalid")
    assert nb["status"] == "invalid" and _report(batch, "invalid")["points"] == 0
    assert {e["status"] for e in nb["exercises"]} == {"not-run"}
    assert "invalid_notebook" in _kinds(batch, "invalid")


def test_renamed_notebook_is_found_by_its_grade_ids(batch) -> None:
    assert _report(batch, "renamed")["points"] == FULL
    assert "renamed" in _kinds(batch, "renamed")


def test_gradebook_and_grades_csv_agree_with_the_reports(batch) -> None:
    with sqlite3.connect(batch["db"]) as db:
        rows = db.execute("SELECT student.id, SUM(grade.auto_score) FROM grade "
                          "JOIN submitted_notebook ON grade.notebook_id = submitted_notebook.id "
                          "JOIN submitted_assignment ON submitted_notebook.assignment_id = submitted_assignment.id "
                          "JOIN student ON submitted_assignment.student_id = student.id GROUP BY student.id").fetchall()
    assert {s: p for s, p in rows} == {s: r["points"] for s, r in batch["reports"].items()}
    lines = (batch["root"] / "out" / "grades.csv").read_text().splitlines()
    assert lines[0].startswith("student_id,assignment,points,max_points,status,flags,ch01_central_difference")
    assert len(lines) == 1 + len(batch["reports"])


def test_feedback_hides_hidden_tests(batch) -> None:
    page = _feedback(batch, "alice")
    assert "ch01_central_difference: all checks passed" in page
    assert "BEGIN HIDDEN TESTS" not in page and "_random_dag" not in page
