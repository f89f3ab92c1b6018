"""The similarity report: learners' own code compared, template never counted, a bad notebook reported.

Learners of chapter 1's first notebook, written here from its release (nbgrader's ClearSolutions):
alice hands in the reference answers; carl copies alice's and renames every variable, rewords the
comments and reformats; dora writes her own correct answers in another way; eve and fay hand in the
release untouched; mallory's notebook is not JSON.
"""

from __future__ import annotations

import csv
import re
import zipfile
from pathlib import Path

import nbformat
import pytest

from autograder.__main__ import main
from autograder.config import CHAPTERS_DIR
from autograder.grading.similarity import THRESHOLD, release_notebook, similarity

CHAPTER = "01_backprop"
NB = "1_derivatives_and_scalar_autograd.ipynb"
SOURCE = CHAPTERS_DIR / CHAPTER / NB
INDEPENDENT_BELOW = 0.35  # two correct answers written independently score below this (the threshold is 0.5)
REGION = re.compile(r"^([ \t]*)### BEGIN SOLUTION\n.*?^[ \t]*### END SOLUTION\n?", re.S | re.M)

# dora's answers, one per BEGIN/END SOLUTION region of each solution cell (grade_id: regions in order)
DORA = {
    "ch01_central_difference_solution": ["""\
forward = f(x + h)
backward = f(x - h)
slope = (forward - backward) / h / 2
return float(slope)
"""],
    "ch01_mse_gradients_solution": ["""\
N = len(y)
residual = np.dot(X, w) + b - y
grad_w = np.zeros_like(w, dtype=float)
for i in range(N):
    grad_w += 2 * residual[i] * X[i] / N
grad_b = 2 * residual.sum() / N
mse = (residual ** 2).sum() / N
return float(mse), grad_w, float(grad_b)
"""],
    "ch01_value_solution": [
        """\
def grad_fn():
    for node in (self, other):
        node.grad += result.grad
result = Value(self.data + other.data, _children=(self, other), _op="+")
result._backward = grad_fn
return result
""", """\
def grad_fn():
    a_grad, b_grad = other.data * result.grad, self.data * result.grad
    self.grad, other.grad = self.grad + a_grad, other.grad + b_grad
result = Value(self.data * other.data, _children=(self, other), _op="*")
result._backward = grad_fn
return result
""", """\
def grad_fn():
    self.grad = self.grad + result.grad * k * (self.data ** (k - 1))
result = Value(self.data ** k, _children=(self,), _op="pow")
result._backward = grad_fn
return result
""", """\
e = math.exp(self.data)
def grad_fn():
    self.grad = self.grad + e * result.grad
result = Value(e, _children=(self,), _op="exp")
result._backward = grad_fn
return result
""", """\
def grad_fn():
    self.grad = self.grad + (1 / self.data) * result.grad
result = Value(math.log(self.data), _children=(self,), _op="log")
result._backward = grad_fn
return result
""", """\
t = (math.exp(2 * self.data) - 1) / (math.exp(2 * self.data) + 1)
def grad_fn():
    self.grad = self.grad + (1 - t * t) * result.grad
result = Value(t, _children=(self,), _op="tanh")
result._backward = grad_fn
return result
""", """\
positive = self.data > 0
def grad_fn():
    if positive:
        self.grad = self.grad + result.grad
result = Value(max(self.data, 0.0), _children=(self,), _op="relu")
result._backward = grad_fn
return result
""", """\
order, seen, stack = [], set(), [(self, False)]
while stack:
    node, done = stack.pop()
    if done:
        order.append(node)
    elif node not in seen:
        seen.add(node)
        stack.append((node, True))
        stack.extend((child, False) for child in node._prev)
self.grad = 1.0
for node in order[::-1]:
    node._backward()
"""]}

# carl: alice's (the reference) answers with every name changed, comments added and spacing changed
RENAMES = {"out": "res", "topo": "ordering", "visited": "done_set", "build": "visit", "node": "nd", "child": "kid",
           "n": "num", "r": "diff", "loss": "cost", "dw": "gw", "db": "gb"}


def _answer(source: str, bodies: list[str]) -> str:
    """``source`` with its BEGIN/END SOLUTION regions replaced, in order, by ``bodies`` (indented to match)."""
    it = iter(bodies)

    def fill(m: re.Match) -> str:
        return "".join(m.group(1) + line if line.strip() else line for line in next(it).splitlines(True))

    return REGION.sub(fill, source)


def _carl(source: str) -> str:
    """alice's answer (``source``) renamed, commented and reformatted inside its solution regions."""
    def rewrite(m: re.Match) -> str:
        body = m.group(0)
        for old, new in RENAMES.items():
            body = re.sub(rf"(?<![\w.]){old}\b", new, body)
        body = body.replace(" = ", "  =  ").replace(", ", " , ")
        return re.sub(r"^([ \t]*)(\w.*)$", r"\1# carl's own work\n\1\2", body, count=2, flags=re.M)

    return REGION.sub(rewrite, source)


def _notebook(student: str, source_nb, release_nb) -> nbformat.NotebookNode:
    answers = {c.metadata["nbgrader"]["grade_id"]: c.source for c in source_nb.cells
               if c.metadata.get("nbgrader", {}).get("solution")}
    nb = nbformat.from_dict(release_nb)
    if student in ("eve", "fay"):
        return nb
    for cell in nb.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if gid in answers and cell.cell_type == "code":
            cell.source = {"alice": answers[gid], "carl": _carl(answers[gid]),
                           "dora": _answer(answers[gid], DORA.get(gid, []))}[student]
    return nb


@pytest.fixture(scope="module")
def submissions(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("similarity") / "submissions"
    source_nb, release_nb = nbformat.read(SOURCE, as_version=4), release_notebook(SOURCE)
    for student in ("alice", "carl", "dora", "eve", "fay"):
        dest = root / student / CHAPTER / NB
        dest.parent.mkdir(parents=True)
        nbformat.write(_notebook(student, source_nb, release_nb), dest)
    (root / "mallory" / CHAPTER).mkdir(parents=True)
    (root / "mallory" / CHAPTER / NB).write_text('{"cells": [')  # not JSON
    return root


@pytest.fixture(scope="module")
def report(submissions, tmp_path_factory):
    return similarity(CHAPTER, submissions, CHAPTERS_DIR, tmp_path_factory.mktemp("out"))


def _score(report, a: str, b: str) -> float:
    return next((p.score for p in report.pairs if {p.student_a, p.student_b} == {a, b} and p.notebook == NB), 0.0)


def test_dora_writes_her_own_answers_correctly() -> None:
    """dora's answers are correct: run the solution cells of her notebook (setup cells first) and check them."""
    import numpy as np

    nb = _notebook("dora", nbformat.read(SOURCE, as_version=4), release_notebook(SOURCE))
    env: dict = {}
    exec("import math\nimport numpy as np", env)  # noqa: S102 - our own test code
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.metadata.get("nbgrader", {}).get("solution"):
            exec(cell.source, env)  # noqa: S102
    assert abs(env["central_difference"](np.sin, 0.3) - np.cos(0.3)) < 1e-6
    X, y, w = np.random.default_rng(0).normal(size=(5, 3)), np.ones(5), np.array([0.1, -0.2, 0.3])
    loss, dw, db = env["mse_gradients"](X, y, w, 0.5)
    r = X @ w + 0.5 - y
    assert np.isclose(loss, np.mean(r**2)) and np.allclose(dw, 2 / 5 * X.T @ r) and np.isclose(db, 2 / 5 * r.sum())
    value = env["Value"]
    a, b = value(0.7), value(-1.3)
    z = ((a * b + a**2).tanh() + (a.exp() + b.relu() + a.log())) * 2
    z.backward()
    import math

    da = 2 * ((1 - math.tanh(0.7 * -1.3 + 0.49) ** 2) * (-1.3 + 1.4) + math.exp(0.7) + 1 / 0.7)
    assert abs(a.grad - da) < 1e-9


def test_a_renamed_copy_ranks_top(report) -> None:
    top = report.pairs[0]
    assert {top.student_a, top.student_b} == {"alice", "carl"}, [(p.student_a, p.student_b, p.score)
                                                                  for p in report.pairs]
    assert top.score >= 0.9 and top.score >= THRESHOLD
    assert "<mark>" in top.html_a and "<mark>" in top.html_b


def test_independent_correct_answers_score_low(report) -> None:
    for other in ("alice", "carl"):
        assert _score(report, "dora", other) < INDEPENDENT_BELOW, _score(report, "dora", other)


def test_template_code_never_counts(report) -> None:
    assert _score(report, "eve", "fay") == 0.0
    assert not [p for p in report.pairs if {"eve", "fay"} & {p.student_a, p.student_b}]
    assert sorted(report.empty[NB]) == ["eve", "fay"]
    assert "NotImplementedError" not in "".join(p.html_a + p.html_b for p in report.pairs)


def test_a_bad_notebook_is_reported_and_the_batch_goes_on(report) -> None:
    assert [p for p in report.problems if p.startswith("mallory:") and "invalid JSON" in p], report.problems
    assert sorted(report.learners[NB]) == ["alice", "carl", "dora"]


def test_the_report_files(report) -> None:
    page = report.html.read_text()
    assert "alice" in page and "carl" in page and "mallory" in page and "<script" not in page
    rows = list(csv.DictReader(report.csv.open()))
    assert rows[0]["rank"] == "1" and {rows[0]["student_a"], rows[0]["student_b"]} == {"alice", "carl"}
    assert rows[0]["reported"] == "1" and all(float(r["score"]) > 0 for r in rows)


def test_the_command_reads_an_lms_zip(submissions, tmp_path, capsys) -> None:
    archive = tmp_path / "download.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(submissions.rglob("*.ipynb")):
            student = path.relative_to(submissions).parts[0]
            zf.write(path, f"{student}_{path.name}")  # the LMS layout: <student>_<anything>.ipynb
    out = tmp_path / "out"
    assert main(["similarity", CHAPTER, str(archive), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "alice / carl" in printed and "mallory" in printed, printed
    assert (out / "report.html").exists() and (out / "pairs.csv").exists()
