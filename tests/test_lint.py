"""The code style the project keeps (`make lint`): ruff, with functions of at most complexity 10 outside tests."""

from __future__ import annotations

import subprocess
import sys

from autograder.config import REPO_ROOT


def test_ruff_is_clean() -> None:
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "dlbook", "autograder", "tests"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"ruff check found problems (run `make lint`):\n{proc.stdout[-4000:]}{proc.stderr}"
