"""An exercise is not solved by calling the op it rebuilds, in any spelling (the grader's static check).

``check.forbidden`` in a hidden test swaps module attributes while the learner's function runs, so
another spelling of the same op (an import under another name, a method on a tensor, SciPy's copy,
another exercise's answer) passed the tests. The grader now reads the submitted solution cells: an
answer that reaches an op its exercise rebuilds (each test cell names them with ``check.rebuilds``)
scores 0 for that exercise, whatever the tests said. Every loophole listed in the learner-side issue
has an answer here that is numerically right (so the tests alone would pass it) and is caught; the
instructor's solutions of every notebook are never caught.
"""

from __future__ import annotations

import pytest

from autograder.config import CHAPTERS_DIR
from autograder.grading.notebook import assemble, rebuilt_ops, rebuilt_ops_used, reference_cells, visible_source
from dlbook import check

from .conftest import NOTEBOOKS

CH01_2 = CHAPTERS_DIR / "01_backprop" / "2_vectorised_autograd_mlp.ipynb"
CH03_1 = CHAPTERS_DIR / "03_cnn" / "1_convolution_and_pooling.ipynb"
CH03_3 = CHAPTERS_DIR / "03_cnn" / "3_modern_cnn_fashion_mnist.ipynb"
CH08_1 = CHAPTERS_DIR / "08_scale" / "1_where_time_goes.ipynb"

# Right answers that call the op their exercise rebuilds (each passed the hidden tests before).
MATMUL_BY_AUTOGRAD = """
import torch
def matmul_backward(dout, a, b):
    A = torch.tensor(a, requires_grad=True)
    B = torch.tensor(b, requires_grad=True)
    (A @ B).backward(torch.as_tensor(dout))
    return A.grad.numpy(), B.grad.numpy()
"""
LOG_SOFTMAX_BY_SCIPY = """
import scipy.special
def log_softmax(z):
    return scipy.special.log_softmax(np.asarray(z, dtype=np.float64), axis=-1)
"""
LOG_SOFTMAX_RENAMED = """
from torch.nn.functional import log_softmax as _ls
def log_softmax(z):
    return _ls(torch.as_tensor(np.asarray(z, dtype=np.float64)), dim=-1).numpy()
"""
CROSS_ENTROPY_BY_TENSOR_METHOD = """
def softmax_cross_entropy(logits, targets):
    log_probs = torch.as_tensor(np.asarray(logits, dtype=np.float64)).log_softmax(1).numpy()
    rows = np.arange(log_probs.shape[0])
    dlogits = np.exp(log_probs)
    dlogits[rows, targets] -= 1.0
    return float(-log_probs[rows, targets].mean()), dlogits / len(rows)
"""
CONFUSION_BY_SKLEARN = """
import sklearn.metrics
def confusion_matrix(y_true, y_pred, num_classes):
    return sklearn.metrics.confusion_matrix(y_true, y_pred, labels=list(range(num_classes)))
"""
IM2COL_CONV_BY_OWN_NAIVE = """
def conv2d_im2col(x, w, b, stride=1, padding=0, dilation=1):
    return conv2d_naive(x, w, b, stride, padding, dilation)
"""
BFLOAT16_BY_CAST = """
def round_to_bfloat16(x):
    return torch.asarray(x, dtype=torch.bfloat16).float().numpy()
"""
BFLOAT16_BY_GETATTR = """
def round_to_bfloat16(x):
    return torch.from_numpy(np.asarray(x)).to(getattr(torch, "bfloat16")).float().numpy()
"""
MATMUL_RIGHT = """
def matmul_backward(dout, a, b):
    grad = dout @ b.T  # a variable named like an op is the learner's own
    return grad, a.T @ dout
"""

LOOPHOLES = [
    (CH01_2, "ch01_matmul_backward", MATMUL_BY_AUTOGRAD, "(...).backward"),
    (CH01_2, "ch01_log_softmax", LOG_SOFTMAX_BY_SCIPY, "scipy.special.log_softmax"),
    (CH01_2, "ch01_log_softmax", LOG_SOFTMAX_RENAMED, "from torch.nn.functional import log_softmax as _ls"),
    (CH01_2, "ch01_softmax_cross_entropy", CROSS_ENTROPY_BY_TENSOR_METHOD, ".log_softmax"),
    (CH03_3, "ch03_confusion_matrix", CONFUSION_BY_SKLEARN, "sklearn.metrics.confusion_matrix"),
    (CH03_1, "ch03_conv2d_im2col", IM2COL_CONV_BY_OWN_NAIVE, "conv2d_naive"),
    (CH08_1, "ch08_round_to_bfloat16", BFLOAT16_BY_CAST, "torch.bfloat16"),
    (CH08_1, "ch08_round_to_bfloat16", BFLOAT16_BY_GETATTR, "'bfloat16'"),
]


def _submission(ref: list[dict], answers: dict[str, str]) -> list[dict]:
    """The reference as a learner submits it, with ``answers`` ({solution grade_id: code}) in its solution cells."""
    return [{"cell_type": "markdown" if c["kind"] == "markdown" else "code",
             "source": answers.get(c["grade_id"], visible_source(c["source"]) if c["kind"] == "test" else c["source"]),
             "meta": dict(c["meta"])} for c in ref]


@pytest.mark.parametrize(("notebook", "exercise", "answer", "spelling"), LOOPHOLES,
                         ids=[f"{ex}-{i}" for i, (_, ex, _, _) in enumerate(LOOPHOLES)])
def test_a_loophole_costs_the_exercise_and_only_it(notebook, exercise, answer, spelling) -> None:
    ref = reference_cells(notebook)
    cells, _ = assemble(ref, _submission(ref, {f"{exercise}_solution": answer}))
    verdicts = rebuilt_ops_used(ref, cells)
    assert set(verdicts) == {exercise}, f"expected only {exercise} caught, got {verdicts}"
    assert spelling in verdicts[exercise] and "0 points" in verdicts[exercise], verdicts[exercise]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_instructors_solutions_are_never_caught(notebook) -> None:
    ref = reference_cells(notebook)
    cells, _ = assemble(ref, _submission(ref, {}))
    assert rebuilt_ops_used(ref, cells) == {}


def test_each_listed_loophole_has_its_ops_declared() -> None:
    declared = {ex: ops for path in (CH01_2, CH03_1, CH03_3, CH08_1)
                for ex, (ops, _) in rebuilt_ops(reference_cells(path)).items()}
    assert {ex for _, ex, _, _ in LOOPHOLES} <= set(declared)
    assert declared["ch01_softmax_cross_entropy"] and ".log_softmax" in declared["ch01_softmax_cross_entropy"], (
        "softmax_cross_entropy may call the learner's own log_softmax, so only library spellings count")


def test_a_right_answer_with_a_variable_named_like_an_op_is_not_caught() -> None:
    ref = reference_cells(CH01_2)
    cells, _ = assemble(ref, _submission(ref, {"ch01_matmul_backward_solution": MATMUL_RIGHT}))
    assert rebuilt_ops_used(ref, cells) == {}


@pytest.mark.parametrize(("code", "ops", "expected"), [
    ("def f(z):\n    return z.log_softmax(-1)", ["log_softmax"], ["z.log_softmax (line 2)"]),
    ("from scipy.special import log_softmax\n", ["log_softmax"], ["from scipy.special import log_softmax (line 1)"]),
    ("import torch.nn.functional as F\nx = getattr(F, 'log_softmax')", ["log_softmax"], ["'log_softmax' (line 2)"]),
    ("def log_softmax(z):\n    return log_softmax(z - 1)", ["log_softmax"], []),  # its own function, even recursive
    ("y = conv2d_naive(x)", ["conv2d_naive"], ["conv2d_naive (line 1)"]),  # another cell's function
    ("y = log_softmax(x)", [".log_softmax"], []),  # leading dot: the learner's own function is fine
    ("y = x.log_softmax()", [".log_softmax"], ["x.log_softmax (line 1)"]),
    ("from scipy.special import *\ny = log_softmax(x)", [".log_softmax"], ["from scipy.special import * (line 1)"]),
    ("%time y = x.softmax()\nz = 1", ["softmax"], []),  # magics are not Python; the grader flags what they hide
    ("this is not python (", ["softmax"], []),
])
def test_rebuilt_ops_used_sees_every_spelling(code, ops, expected) -> None:
    assert check.rebuilt_ops_used(code, ops) == expected


def test_the_visible_check_says_which_op_and_why() -> None:
    namespace: dict = {}
    exec(compile("import math\ndef area(r):\n    return math.pi * math.pow(r, 2)\n", "<cell>", "exec"), namespace)
    # exec'd code has no source to read: the visible check stays quiet, the grader reads the cell
    check.rebuilds("ex_area", namespace["area"], "pow")

    def area(r):
        return 3.14159 * r.__pow__(2)

    with pytest.raises(check.CheckFailure, match=r"ex_area: your answer uses r.__pow__ .*rebuilds __pow__"):
        check.rebuilds("ex_area", area, "__pow__")
    check.rebuilds("ex_area", area, "pow")  # not used
    check.rebuilds("ex_area", object(), "pow")  # the judge's stand-in for a learner's function: the grader decides


@pytest.mark.slow
def test_the_grader_gives_a_loophole_0_though_its_tests_pass(tmp_path) -> None:
    """Chapter 1's three loopholes in one notebook, graded for real: the tests pass them, the static check does not."""
    import nbformat

    from autograder.grade import Settings, grade

    from .conftest import nbgrader_meta

    answers = {"ch01_matmul_backward_solution": MATMUL_BY_AUTOGRAD, "ch01_log_softmax_solution": LOG_SOFTMAX_BY_SCIPY,
               "ch01_softmax_cross_entropy_solution": CROSS_ENTROPY_BY_TENSOR_METHOD}
    nb = nbformat.read(CH01_2, as_version=4)
    for cell in nb.cells:
        meta = nbgrader_meta(cell)
        if meta.get("grade_id") in answers:
            cell.source = answers[meta["grade_id"]]
        elif meta.get("grade") and not meta.get("solution"):
            cell.source = visible_source(cell.source)
    dest = tmp_path / "subs" / "mallory" / "01_backprop" / CH01_2.name
    dest.parent.mkdir(parents=True)
    nbformat.write(nb, dest)
    batch = grade("01_backprop", tmp_path / "subs", CHAPTERS_DIR, tmp_path / "out", workers=1,
                  settings=Settings(cell_timeout=300, notebook_budget=1200), progress=False)
    report = batch.by_student["mallory"]
    exercises = {e["grade_id"]: e for n in report["notebooks"] if n["notebook"] == CH01_2.name for e in n["exercises"]}
    caught = {"ch01_matmul_backward", "ch01_log_softmax", "ch01_softmax_cross_entropy"}
    for grade_id, e in exercises.items():
        if grade_id in caught:
            assert e["points"] == 0 and e["status"] == "failed", e
            assert "this exercise rebuilds" in e["error"], e
            assert e["tests_status"] == "passed", f"the loophole should pass the tests themselves: {e}"
            assert any(f.startswith("uses_rebuilt_op") for f in e["flags"]), e
        else:
            assert e["points"] == e["max_points"], f"{grade_id} should keep its points: {e}"
    assert caught <= set(exercises)
