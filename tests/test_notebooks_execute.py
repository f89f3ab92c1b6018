"""Every source notebook executes top to bottom in fast mode with no error.

The notebook that nbgrader autograded for alice *is* the source notebook executed in fast mode: the
student release with the instructor's solutions filled in and the hidden tests put back by
nbgrader. Checking its outputs here avoids executing every notebook once more (the test suite's
time is dominated by notebook execution).
"""

from __future__ import annotations

import re

import nbformat
import pytest

from autograder.bench import load_targets
from autograder.config import REPO_ROOT

from .conftest import NOTEBOOKS, nbgrader_meta

METRIC_LINE = re.compile(r"^\[dlbook metric\] (\w+) = (\S+)$", re.MULTILINE)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_notebook_executes_in_fast_mode(graded, path) -> None:
    chapter = path.parent.name
    executed = graded["course_dirs"][chapter] / "autograded" / "alice" / chapter / path.name
    assert executed.exists(), f"nbgrader did not produce {executed}"
    nb = nbformat.read(executed, as_version=4)
    source = nbformat.read(path, as_version=4)
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert len(code_cells) == sum(c.cell_type == "code" for c in source.cells)
    not_run = [i for i, c in enumerate(code_cells) if c.source.strip() and c.get("execution_count") is None]
    assert not not_run, f"{path.name}: code cells {not_run} did not run"
    for cell in code_cells:
        for out in cell.outputs:
            where = nbgrader_meta(cell).get("grade_id") or cell.source.strip().splitlines()[0][:80]
            assert out.output_type != "error", f"{path.name} [{where}]: {out.ename}: {out.evalue}"
            if out.output_type == "stream" and out.name == "stderr":
                # tqdm's text bar is fine; anything else (a warning, a traceback) is not
                text = re.sub(r".*\d+%\|.*", "", out.text).strip()
                assert not text, f"{path.name} [{where}] wrote to stderr: {text[:500]}"
    images = [o for c in code_cells for o in c.outputs if "image/png" in o.get("data", {})]
    assert images, f"{path.name} shows no plot"
    printed = "\n".join(o.get("text", "") for c in code_cells for o in c.outputs if o.output_type == "stream")
    recorded = {name for name, _ in METRIC_LINE.findall(printed)}
    rel = path.relative_to(REPO_ROOT).as_posix()
    wanted = {k for k in load_targets().get(rel, {}) if k != "seconds"}
    assert wanted <= recorded, f"{path.name} recorded {sorted(recorded)}, expected {sorted(wanted)}"
