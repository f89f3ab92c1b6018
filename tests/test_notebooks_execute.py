"""Every source notebook executes top to bottom in fast mode with no error."""

from __future__ import annotations

import pytest

from autograder.bench import execute_notebook, load_targets
from autograder.config import REPO_ROOT

from .conftest import NOTEBOOKS


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_notebook_executes_in_fast_mode(path) -> None:
    seconds, metrics, nb = execute_notebook(path, fast=True, timeout=300)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{path.name}: {errors[0]['ename']}: {errors[0]['evalue']}"
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if "image/png" in o.get("data", {})]
    assert images, f"{path.name} shows no plot"
    rel = path.relative_to(REPO_ROOT).as_posix()
    wanted = {k for k in load_targets().get(rel, {}) if k != "seconds"}
    assert wanted <= set(metrics), f"{path.name} recorded {sorted(metrics)}, expected {sorted(wanted)}"
    assert seconds < 120, f"{path.name} took {seconds:.0f} s in fast mode; keep the test suite fast"
