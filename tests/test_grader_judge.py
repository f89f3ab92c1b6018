"""Attacks written against the grader's own design: the verdict must be decided outside the learner's process.

Each submission is chapter 1's first notebook: the instructor's solutions (alice), the untouched
release (bob), or one of them with code written by a learner who has read the grader's source.
All of it is graded in one batch through the real ``grade`` (bubblewrap where it runs). Before the
judge, the tests ran in the learner's kernel, guarded by code in that same kernel; these attacks
gave a blank notebook full marks, passed wrong answers, or read the hidden tests.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import nbformat
import pytest

from autograder import course
from autograder.config import CHAPTERS_DIR
from autograder.grade import Settings, grade
from autograder.grading.sandbox import Limits

from .conftest import fill_solutions
from .test_grader_hostile import _find, _set_solution
from .test_grading_pipeline import _hidden_only_lines

pytestmark = pytest.mark.slow

CHAPTER = "01_backprop"
NB = "1_derivatives_and_scalar_autograd.ipynb"
FULL = 14.0
CENTRAL = "ch01_central_difference"
WRONG = "def central_difference(f, x, h=1e-5):\n    return 0.0\n"

# A blank notebook made to "pass" the in-kernel design: the guard replaced by one that hands back the
# proof token, and every test cell cut down to its proof line by an input transformer (the old grader
# gave this full marks, unflagged).
BLANK_BYPASS = r"""
import sys, types, json
def _fake_check(proof_wanted=False):
    proof = get_ipython().user_ns.pop('__dlbook_proof__', None) if proof_wanted else None
    return json.dumps({"flags": [], "proof": proof})
sys.modules['_dlbook_guard'] = types.SimpleNamespace(check=_fake_check)
def _only_proof(lines):
    keep = [l for l in lines if l.startswith('__dlbook_proof__')]
    return keep or lines
get_ipython().input_transformers_cleanup.append(_only_proof)
"""

# A wrong answer with the kernel's checking tools made to say yes in ways an identity check misses: the
# same function objects with new code, and the test's names rebound in the learner's namespace.
PATCH_EVERYTHING = r"""
import numpy
from dlbook import check as _check
_yes = lambda *a, **k: None
_check.assert_close.__code__ = _yes.__code__
_check.check_shape.__code__ = _yes.__code__
numpy.allclose.__code__ = (lambda *a, **k: True).__code__
import contextlib
class _Yes:  # the test's names, rebound in the learner's namespace: everything passes
    def __getattr__(self, name):
        if name == 'forbidden':
            return lambda *a, **k: contextlib.nullcontext()
        if name == 'to_numpy':
            return lambda ex, what, value, *a, **k: numpy.asarray(value, dtype=float)
        if name in ('random_inputs', 'CheckFailure', 'ForbiddenCall', 'check_tuple'):
            return getattr(_check, name)
        return _yes
check = _Yes()
"""

LIARS = r"""
import numpy as _np
class Liar(float):
    def __eq__(self, other): return True
    def __ne__(self, other): return False
    def __sub__(self, other): return Liar(0.0)
    def __rsub__(self, other): return Liar(0.0)
    def __abs__(self): return Liar(0.0)
    def __lt__(self, other): return True
    def __le__(self, other): return True
    __hash__ = float.__hash__
class LyingArray(_np.ndarray):
    def __eq__(self, other): return _np.ones(_np.shape(other), bool)
    def __array_finalize__(self, obj): pass
def central_difference(f, x, h=1e-5):
    return Liar(0.0)
def mse_gradients(X, y, w, b):
    z = _np.zeros(_np.shape(w)).view(LyingArray)
    return Liar(0.0), z, Liar(0.0)
"""

# The learner's functions look for the hidden tests wherever they could sit in the kernel, and print what they find.
SNOOP = r"""
import gc, sys, linecache, os
_found = set()
_needles = ['BEGIN ' + 'HIDDEN', '_random' + '_dag', 'def _refer' + 'ence', '<test ' + 'ch01']  # not in this code
def _hit(text):
    return any(n in text for n in _needles)
def _snoop():
    for obj in gc.get_objects():
        if isinstance(obj, str) and _hit(obj):
            _found.add(obj[:300])
    for frame in sys._current_frames().values():
        while frame is not None:
            _found.add(frame.f_code.co_filename)
            frame = frame.f_back
    for lines in list(linecache.cache.values()):
        if len(lines) > 2:
            _found.update(l[:200] for l in lines[2] if _hit(l))
    for d in ('/judge', '/grader'):
        try:
            _found.update(os.listdir(d))
        except OSError:
            pass
    print('SNOOPED:', sorted(_found)[:200])
_correct = central_difference
def central_difference(f, x, h=1e-5):
    _snoop()
    return _correct(f, x, h)
"""

# The agent replaced: the "kernel" answers the judge with whatever it likes.
FAKE_AGENT = r"""
import sys, socket, json, struct, types
def _send(s, m):
    b = json.dumps(m).encode()
    s.sendall(struct.pack('>I', len(b)) + b)
def _recv(s):
    n = struct.unpack('>I', s.recv(4, socket.MSG_WAITALL))[0]
    return json.loads(s.recv(n, socket.MSG_WAITALL))
def _serve(path, key):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    _send(s, {"op": "hello", "key": key})
    while True:
        m = _recv(s)
        if m.get("op") == "done":
            return
        _send(s, MODE(m))
sys.modules['_dlbook_agent'] = types.SimpleNamespace(serve=_serve)
"""
FAKE_MODES = {
    "fake_true": "MODE = lambda m: {'op': 'result', 'value': True}",
    "fake_liar": ("MODE = lambda m: {'op': 'result', 'value': {'$t': 'ref', 'h': 1, 'type': 'float'}} "
                  "if m.get('op') == 'call' else {'op': 'result', 'value': True}"),
    "fake_huge": ("def MODE(m):\n    raise SystemExit\n"
                  "def _serve(path, key):\n    s = socket.socket(socket.AF_UNIX)\n    s.connect(path)\n"
                  "    _send(s, {'op': 'hello', 'key': key})\n    _recv(s)\n"
                  "    s.sendall(struct.pack('>I', 2**31) + b'[' * (1 << 20))\n"
                  "sys.modules['_dlbook_agent'] = types.SimpleNamespace(serve=_serve)"),
    "fake_deep": ("MODE = lambda m: {'op': 'result', 'value': json.loads('[' * 5000 + ']' * 5000)} "
                  "if m.get('op') == 'call' else {'op': 'callback', 'k': 999, 'args': [], 'kwargs': {}}"),
    "fake_tags": ("MODE = lambda m: {'op': 'result', 'value': {'$t': 'ndarray', 'npy': 'gANjYnVpbHRpbnMKZXZhbApx'}, "
                  "'sync': {'1': {'$t': 'ndarray', 'npy': 'AAAA'}}}"),
}


def _startup_files() -> dict[str, str]:
    hack = "import dlbook.check as c\nc.assert_close = lambda *a, **k: None\nprint('STARTUP RAN')\n"
    return {".ipython/profile_default/startup/00-hack.py": hack, ".config/matplotlib/matplotlibrc": "backend: Agg\n",
            "sitecustomize.py": hack, "usercustomize.py": hack}


@pytest.fixture(scope="module")
def judged(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("judge")
    course_dir, src = root / "course", root / "source"
    course.release([CHAPTER], course_dir, quiet=True)
    (src / CHAPTER).mkdir(parents=True)
    (src / CHAPTER / NB).write_bytes((CHAPTERS_DIR / CHAPTER / NB).read_bytes())
    bob = nbformat.read(course_dir / "release" / CHAPTER / NB, as_version=4)
    alice = fill_solutions(bob, nbformat.read(CHAPTERS_DIR / CHAPTER / NB, as_version=4))
    A = lambda: nbformat.from_dict(json.loads(json.dumps(alice)))  # noqa: E731
    B = lambda: nbformat.from_dict(json.loads(json.dumps(bob)))  # noqa: E731
    subs = {"alice": A(), "bob": B(),
            "blank_bypass": _set_solution(B(), "ch01_central_difference_solution", BLANK_BYPASS, append=True),
            "patched_wrong": _set_solution(A(), "ch01_central_difference_solution", WRONG + PATCH_EVERYTHING),
            "liars": _set_solution(A(), "ch01_central_difference_solution", LIARS),
            "snoop": _set_solution(A(), "ch01_central_difference_solution", SNOOP, append=True),
            "startup": _set_solution(A(), "ch01_central_difference_solution", WRONG)}
    liars = subs["liars"]
    liars.cells[_find(liars, "ch01_mse_gradients_solution")].source = "pass"
    for name, mode in FAKE_MODES.items():
        subs[name] = _set_solution(B(), "ch01_central_difference_solution", FAKE_AGENT.replace(
            "MODE(m)", "MODE(m)") + "\n" + mode + "\n", append=True)
    subs_dir = root / "submissions"
    for student, nb in subs.items():
        folder = subs_dir / student / CHAPTER
        folder.mkdir(parents=True)
        (folder / NB).write_text(nbformat.writes(nb))
    for rel, text in _startup_files().items():
        (subs_dir / "startup" / CHAPTER / rel).parent.mkdir(parents=True, exist_ok=True)
        (subs_dir / "startup" / CHAPTER / rel).write_text(text)
    settings = Settings(cell_timeout=60, notebook_budget=400, limits=Limits(memory_bytes=3 << 30))
    result = grade(CHAPTER, subs_dir, src, root / "out", workers=2, settings=settings, progress=False)
    print(result.summary())
    return {"reports": result.by_student, "root": root}


def _ex(judged, student: str) -> dict[str, dict]:
    return {e["grade_id"]: e for n in judged["reports"][student]["notebooks"] for e in n["exercises"]}


def _feedback(judged, student: str) -> str:
    page = (judged["root"] / "out" / "feedback" / student / f"{Path(NB).stem}.html").read_text()
    return html.unescape(re.sub(r"<[^>]+>", "", page))


def test_honest_and_blank(judged) -> None:
    assert judged["reports"]["alice"]["points"] == FULL
    assert judged["reports"]["bob"]["points"] == 0


def test_blank_notebook_with_the_guard_and_kernel_replaced_scores_zero(judged) -> None:
    report = judged["reports"]["blank_bypass"]
    assert report["points"] == 0, _ex(judged, "blank_bypass")


def test_wrong_answer_with_code_swapped_checks_and_rebound_names_fails(judged) -> None:
    ex = _ex(judged, "patched_wrong")
    assert ex[CENTRAL]["points"] == 0 and ex[CENTRAL]["status"] == "failed", ex[CENTRAL]
    assert judged["reports"]["patched_wrong"]["points"] == FULL - 2  # the other answers are right and still count


def test_lying_objects_and_array_subclasses_score_zero(judged) -> None:
    ex = _ex(judged, "liars")
    assert ex[CENTRAL]["points"] == 0, ex[CENTRAL]
    assert ex["ch01_mse_gradients"]["points"] == 0, ex["ch01_mse_gradients"]


def test_startup_files_in_the_submission_change_nothing(judged) -> None:
    ex = _ex(judged, "startup")
    assert ex[CENTRAL]["points"] == 0
    assert judged["reports"]["startup"]["points"] == FULL - 2
    assert "STARTUP RAN" not in _feedback(judged, "startup")


def test_hidden_tests_never_reach_the_learners_process(judged) -> None:
    assert judged["reports"]["snoop"]["points"] == FULL
    page = _feedback(judged, "snoop")
    assert "SNOOPED:" in page  # the snooping code ran, and printed what it found
    found = page[page.index("SNOOPED:"):][:20000]
    hidden = _hidden_only_lines(nbformat.read(CHAPTERS_DIR / CHAPTER / NB, as_version=4))
    assert hidden
    leaked = [line for line in hidden if line in found]
    assert not leaked, leaked[:3]
    for word in ("BEGIN HIDDEN", "_random_dag", "def _reference", "<test ch01"):
        assert word not in found, f"{word!r} was found in the learner's process: {found[:500]}"


@pytest.mark.parametrize("student", sorted(FAKE_MODES))
def test_a_fake_agent_gets_nothing_and_breaks_nothing(judged, student) -> None:
    report = judged["reports"][student]
    assert report["points"] == 0, _ex(judged, student)
    assert report["status"] == "graded"
    assert all(e["status"] in ("failed", "timeout", "crashed") for e in _ex(judged, student).values())
