"""The benchmark's targets: read from each chapter's targets.json, and the README's table generated from them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest

from autograder import bench
from autograder.config import CHAPTERS_DIR


def test_readme_targets_table_is_the_generated_one() -> None:
    readme = bench.README.read_text()
    assert bench.readme_with_table(readme, bench.targets_table()) == readme, (
        "README.md's targets table differs from chapters/*/targets.json: "
        "run `python -m autograder.bench --update-readme`"
    )


def test_every_chapter_keeps_its_targets_in_its_folder() -> None:
    targets = bench.load_targets()
    for notebook in sorted(CHAPTERS_DIR.glob("*/*.ipynb")):
        rel = f"chapters/{notebook.parent.name}/{notebook.name}"
        assert rel in targets, f"{rel} has no entry in chapters/{notebook.parent.name}/targets.json"


def test_table_rows_become_markdown_lines(tmp_path) -> None:
    (tmp_path / "09_new").mkdir()
    (tmp_path / "09_new" / "targets.json").write_text(json.dumps({"2_b.ipynb": {
        "targets": {"acc": [">=", 0.5], "seconds": ["<=", 180]},
        "table": [{"metrics": ["acc", "loss"], "what": "a model", "target": ">= 0.5"},
                  {"metrics": ["time"], "what": "its time", "target": ""}]}}))
    assert bench.load_targets(tmp_path) == {"chapters/09_new/2_b.ipynb": {"acc": (">=", 0.5), "seconds": ("<=", 180)}}
    lines = bench.targets_table(tmp_path).splitlines()
    assert lines[2:4] == ["| 09 / 2 | `acc`, `loss` | a model | >= 0.5 |", "| 09 / 2 | `time` | its time | |"]
    assert lines[-1].startswith("| grading |")


@pytest.mark.parametrize("entry, message", [
    ({"acc": [">=", 0.5]}, r"should map to \{\"targets\": ..., \"table\": ...\}, got \['acc'\]"),
    ({"targets": {"acc": ["=>", 0.5]}, "table": []}, r"target 'acc' of 1_a.ipynb should be \[op, bound\]"),
    ({"targets": {}, "table": [{"metrics": [], "what": "x", "target": ""}]}, r"a table row of 1_a.ipynb should be"),
])
def test_malformed_targets_say_what_was_expected(tmp_path, entry, message) -> None:
    (tmp_path / "01_x").mkdir()
    (tmp_path / "01_x" / "targets.json").write_text(json.dumps({"1_a.ipynb": entry}))
    with pytest.raises(ValueError, match=message):
        bench.load_targets(tmp_path)


def test_readme_without_markers_says_which_lines_it_needs() -> None:
    with pytest.raises(ValueError, match="expected the README to hold the lines"):
        bench.readme_with_table("# no table here\n", "| a |\n")


def test_kernel_env_holds_the_settings_and_leaves_its_base_alone() -> None:
    base = {"PATH": "/bin", "DLBOOK_FAST": "1", "MPLBACKEND": "Agg"}
    env = bench.kernel_env(Path("/tmp/m.json"), fast=False, base=base)
    assert env == {"PATH": "/bin", "DLBOOK_METRICS_FILE": "/tmp/m.json"}
    assert bench.kernel_env(Path("/tmp/m.json"), fast=True, base=base)["DLBOOK_FAST"] == "1"
    assert base == {"PATH": "/bin", "DLBOOK_FAST": "1", "MPLBACKEND": "Agg"}


@pytest.mark.slow
def test_execute_notebook_gives_the_kernel_its_settings_without_touching_ours(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.delenv("DLBOOK_FAST", raising=False)
    before = dict(os.environ)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import os\nfrom dlbook import record_metric\n"
        "record_metric('fast', float(os.environ.get('DLBOOK_FAST') == '1'))\n"
        "record_metric('agg_backend', float(os.environ.get('MPLBACKEND') == 'Agg'))\n"
    )])
    path = tmp_path / "settings.ipynb"
    nbformat.write(nb, path)
    run = bench.execute_notebook(path, fast=True, timeout=120)
    assert run.metrics == {"fast": 1.0, "agg_backend": 0.0}, "the kernel should get DLBOOK_FAST and its inline backend"
    assert dict(os.environ) == before, "execute_notebook changed this process's environment"


@pytest.mark.slow
def test_execute_notebook_measures_the_kernels_peak_memory_and_its_childrens(tmp_path) -> None:
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("import numpy as np\nblock = np.ones(300 * 2**20 // 8)  # 300 MiB\ndel block"),
        nbformat.v4.new_code_cell(
            "import subprocess, sys\n"
            "subprocess.run([sys.executable, '-c', 'import numpy as np; b = np.ones(200 * 2**20 // 8)'], check=True)"),
    ])
    path = tmp_path / "memory.ipynb"
    nbformat.write(nb, path)
    run = bench.execute_notebook(path, fast=True, timeout=120)
    assert 300 <= run.peak_rss_mb < 1000, f"the kernel held 300 MiB at its peak, measured {run.peak_rss_mb}"
    assert 200 <= run.children_peak_rss_mb < 500, f"the child held 200 MiB, measured {run.children_peak_rss_mb}"
    assert len(run.notebook.cells) == 2, "the memory cell should be taken out of the executed notebook"
    assert 0 < run.seconds < 120


@pytest.mark.slow
def test_execute_notebook_counts_the_memory_of_launched_ranks(tmp_path) -> None:
    """Ranks of dlbook.distributed.launch are forked by its warm launcher, not the kernel's children: still counted."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "from dlbook import distributed\n"
        "def hold(rank, world_size):\n"
        "    import numpy as np\n"
        "    return float(np.ones(900 * 2**20 // 8).sum())  # 900 MiB\n"
        "print(distributed.launch(hold, 2))")])
    path = tmp_path / "ranks.ipynb"
    nbformat.write(nb, path)
    run = bench.execute_notebook(path, fast=True, timeout=120)
    assert 900 <= run.children_peak_rss_mb < 1500, f"a rank held 900 MiB, measured {run.children_peak_rss_mb}"
    # the kernel's own peak is 250-400 MiB here (torch and dlbook imported): the ranks' memory is not counted as its
    assert run.peak_rss_mb < 900, f"the kernel itself held no 900 MiB, measured {run.peak_rss_mb}"
