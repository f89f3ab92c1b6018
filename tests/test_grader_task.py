"""Packing a submission for a worker on any host: what is sent, what comes back, and its digest."""

from __future__ import annotations

import os
from pathlib import Path

from autograder.config import CHAPTERS_DIR
from autograder.grade import Settings, grade_submission
from autograder.grading.intake import match_notebooks
from autograder.grading.task import pack_submission, references_sha256, unpack_tree

NB = "1_derivatives_and_scalar_autograd.ipynb"


def _folder(root: Path) -> Path:
    (root / "data" / "deep").mkdir(parents=True)
    (root / "a.ipynb").write_text('{"cells": []}')
    (root / "data" / "deep" / "x.bin").write_bytes(bytes(range(256)))
    (root / "run.sh").write_text("echo hi\n")
    (root / "run.sh").chmod(0o755)
    return root


def test_same_files_same_digest_whatever_their_times(tmp_path) -> None:
    first = pack_submission("ann", _folder(tmp_path / "one"))
    second = pack_submission("ann", _folder(tmp_path / "two"))
    os.utime(tmp_path / "two" / "a.ipynb", (1, 1))
    assert pack_submission("ann", tmp_path / "two").sha256 == first.sha256 == second.sha256
    (tmp_path / "two" / "data" / "deep" / "x.bin").write_bytes(bytes(range(255)) + b"!")
    assert pack_submission("ann", tmp_path / "two").sha256 != first.sha256, "expected a changed byte to show"


def test_unpacked_tree_is_the_folder(tmp_path) -> None:
    packed = pack_submission("ann", _folder(tmp_path / "src"))
    (tmp_path / "dst").mkdir()
    unpack_tree(packed.tree, tmp_path / "dst")
    files = lambda root: {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}  # noqa: E731
    assert files(tmp_path / "dst") == files(tmp_path / "src")
    assert os.stat(tmp_path / "dst" / "run.sh").st_mode & 0o111, "expected the executable bit kept"
    assert not packed.left_out and not packed.rejected


def test_a_linked_notebook_is_rejected_as_before(tmp_path) -> None:
    folder = tmp_path / "sub"
    folder.mkdir()
    (folder / NB).symlink_to(CHAPTERS_DIR / "01_backprop" / NB)
    direct = match_notebooks([NB], {NB: set()}, folder)[NB]
    packed = pack_submission("eve", folder)
    assert packed.rejected == {NB: direct[2]} and direct[2].startswith("symlink_rejected:")
    assert packed.left_out == (f"{NB} (symbolic link)",)
    (tmp_path / "dst").mkdir()
    unpack_tree(packed.tree, tmp_path / "dst")
    path, cells, why = match_notebooks([NB], {NB: set()}, tmp_path / "dst", None, packed.rejected)[NB]
    assert (path.name, cells, why) == (NB, None, direct[2])
    source = {NB: str(CHAPTERS_DIR / "01_backprop" / NB)}
    report = grade_submission("eve", str(folder), "01_backprop", source, Settings(), str(tmp_path / "out"))
    nb = report["notebooks"][0]
    assert nb["status"] == "invalid" and nb["submitted_as"] == NB and any(
        f.startswith("symlink_rejected:") for f in nb["flags"]), nb
    assert (tmp_path / "out" / "reports" / "eve.json").exists()


def test_references_digest_sees_names_and_bytes() -> None:
    assert references_sha256({"a": b"1", "b": b"2"}) == references_sha256({"b": b"2", "a": b"1"})
    assert references_sha256({"a": b"1"}) != references_sha256({"a": b"2"})
    assert references_sha256({"a": b"1"}) != references_sha256({"c": b"1"})
