"""Setup files agree with each other; Binder's postBuild builds the workspace; CI calls make test."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from autograder.config import REPO_ROOT


def _pyproject_deps() -> dict[str, str]:
    data = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    deps = data["project"]["dependencies"] + data["project"]["optional-dependencies"]["dev"]
    return {re.split(r"[<>=!~]", d, maxsplit=1)[0].strip(): d.replace(" ", "") for d in deps}


def test_torch_is_pinned_exactly() -> None:
    assert _pyproject_deps()["torch"] == "torch==2.13.0"


def test_environment_yml_lists_the_same_versions() -> None:
    text = (REPO_ROOT / "environment.yml").read_text()
    listed = {}
    for line in text.splitlines():
        m = re.match(r"\s*-\s+([A-Za-z0-9_.-]+)([<>=!~].*)?$", line)
        if m and m.group(2) and m.group(1) != "python":
            listed[m.group(1)] = (m.group(1) + m.group(2)).replace(" ", "")
    assert listed == _pyproject_deps()


def test_ci_calls_make_test() -> None:
    script = (REPO_ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", script, re.M)
    assert "make test" in (REPO_ROOT / "README.md").read_text()


def test_binder_files() -> None:
    binder = REPO_ROOT / "binder"
    assert "dataset-fashion-mnist" in (binder / "apt.txt").read_text().split()
    reqs = (binder / "requirements.txt").read_text()
    assert "torch==2.13.0" in reqs and re.search(r"^-e \.$", reqs, re.M)


@pytest.mark.slow
def test_binder_postbuild_builds_workspace(tmp_path) -> None:
    """Run binder/postBuild in a temporary copy of the repository, as repo2docker would."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO_ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    copy = tmp_path / "repo"
    for rel in files:
        src = REPO_ROOT / rel
        if src.is_file():
            (copy / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, copy / rel)
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run(["bash", "binder/postBuild"], cwd=copy, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    notebooks = sorted((copy / "workspace").glob("*/*.ipynb"))
    expected = sorted(p.relative_to(REPO_ROOT / "chapters") for p in (REPO_ROOT / "chapters").glob("*/*.ipynb"))
    assert [p.relative_to(copy / "workspace") for p in notebooks] == expected
    assert all("BEGIN SOLUTION" not in p.read_text() for p in notebooks)
    page_config = json.loads((tmp_path / ".jupyter" / "labconfig" / "page_config.json").read_text())
    assert page_config["disabledExtensions"]["@jupyter/nbgrader:formgrader"] is True, page_config


def test_importing_nbformat_stays_cheap() -> None:
    """jsonschema 4.25+ imports rfc3987-syntax, which builds a lark parser at import (1.9 s of a 2.1 s
    `import nbformat`, paid by every nbgrader and Jupyter process): pyproject.toml keeps jsonschema below it."""
    code = "import sys, nbformat; print(sorted(m for m in ('lark', 'rfc3987_syntax') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", f"importing nbformat loaded {out}"
