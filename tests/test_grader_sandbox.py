"""Both sandbox modes grade a tiny notebook: bubblewrap where it runs, rlimits-only (the macOS path) always."""

from __future__ import annotations

import nbformat
import pytest

from autograder.grade import Settings, grade_notebook, match_notebooks, reference_cells
from autograder.grading.sandbox import Limits, bwrap_available

pytestmark = pytest.mark.slow


def _notebook(answer: str, test: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    sol = nbformat.v4.new_code_cell(answer)
    sol.metadata["nbgrader"] = {"grade": False, "grade_id": "t_double_solution", "locked": False,
                                "schema_version": 3, "solution": True, "task": False}
    check = nbformat.v4.new_code_cell(test)
    check.metadata["nbgrader"] = {"grade": True, "grade_id": "t_double", "locked": True, "points": 1,
                                  "schema_version": 3, "solution": False, "task": False}
    nb.cells = [nbformat.v4.new_code_cell("import os"), sol, check]
    return nb


TEST = ("assert type(double(2)) is int and double(2) == 4\n### BEGIN HIDDEN TESTS\nassert double(-3) == -6\n"
        "### END HIDDEN TESTS\nprint('ok')")


@pytest.mark.parametrize("use_bwrap", [
    pytest.param(True, marks=pytest.mark.skipif(not bwrap_available(), reason="bubblewrap cannot run here")),
    False,
])
def test_tiny_notebook_in_both_modes(tmp_path, use_bwrap) -> None:
    ref_path = tmp_path / "ref" / "t.ipynb"
    ref_path.parent.mkdir()
    nbformat.write(_notebook("def double(x):\n    return 2 * x", TEST), ref_path)
    ref = reference_cells(ref_path)
    settings = Settings(cell_timeout=60, use_bwrap=use_bwrap, limits=Limits(memory_bytes=2 << 30), feedback=False)
    results = {}
    for student, answer in [("good", "def double(x):\n    return x + x\nopen('s.txt', 'w').write('scratch')"),
                            ("wrong", "def double(x):\n    return 4 if x == 2 else 0")]:
        folder = tmp_path / student
        folder.mkdir()
        nbformat.write(_notebook(answer, "print('tests deleted')"), folder / "t.ipynb")
        found = match_notebooks(["t.ipynb"], {"t.ipynb": {"t_double", "t_double_solution"}}, folder)
        results[student] = grade_notebook("t.ipynb", ref, found["t.ipynb"], folder, settings)
        assert not (folder / "s.txt").exists(), "the kernel wrote into the submission folder"
    assert [results[s]["points"] for s in ("good", "wrong")] == [1, 0]
    assert results["good"]["sandbox"] == ("bubblewrap" if use_bwrap else "rlimits-only")
    assert results["wrong"]["exercises"][0]["status"] == "failed"
    assert any(f.startswith("test_cell_edited") for f in results["good"]["flags"])
