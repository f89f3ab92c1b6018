"""The learner workspace is built from the release and never loses a learner's file."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from autograder.workspace import MANIFEST, sync_workspace


@pytest.fixture()
def release(tmp_path):
    rel = tmp_path / "release"
    (rel / "01_backprop").mkdir(parents=True)
    (rel / "01_backprop" / "a.ipynb").write_text("release v1")
    return rel


def test_first_sync_copies_everything(release, tmp_path) -> None:
    ws = tmp_path / "ws"
    report = sync_workspace(release, ws)
    assert report.added == ["01_backprop/a.ipynb"]
    assert (ws / "01_backprop" / "a.ipynb").read_text() == "release v1"
    assert json.loads((ws / MANIFEST).read_text())["01_backprop/a.ipynb"]


def test_learner_edits_survive_resync(release, tmp_path) -> None:
    ws = tmp_path / "ws"
    sync_workspace(release, ws)
    (ws / "01_backprop" / "a.ipynb").write_text("my answers")
    report = sync_workspace(release, ws)
    assert (ws / "01_backprop" / "a.ipynb").read_text() == "my answers"
    assert report.unchanged == ["01_backprop/a.ipynb"] and not report.updated_beside


def test_changed_chapter_is_written_beside(release, tmp_path) -> None:
    ws = tmp_path / "ws"
    sync_workspace(release, ws)
    (ws / "01_backprop" / "a.ipynb").write_text("my answers")
    (release / "01_backprop" / "a.ipynb").write_text("release v2")
    report = sync_workspace(release, ws)
    assert (ws / "01_backprop" / "a.ipynb").read_text() == "my answers"
    [(mine, beside)] = report.updated_beside
    assert mine == "01_backprop/a.ipynb" and beside.startswith("01_backprop/a.updated-")
    assert (ws / beside).read_text() == "release v2"
    assert "untouched" in report.summary() and beside in report.summary()
    # Running again neither duplicates the copy nor nags.
    again = sync_workspace(release, ws)
    assert not again.updated_beside and len(list((ws / "01_backprop").iterdir())) == 2


def test_new_chapters_are_added_and_foreign_files_kept(release, tmp_path) -> None:
    ws = tmp_path / "ws"
    sync_workspace(release, ws)
    (ws / "notes.txt").write_text("mine")
    (release / "02_training").mkdir()
    (release / "02_training" / "b.ipynb").write_text("chapter 2")
    report = sync_workspace(release, ws)
    assert report.added == ["02_training/b.ipynb"]
    assert (ws / "notes.txt").read_text() == "mine"


def test_existing_file_without_manifest_is_not_overwritten(release, tmp_path) -> None:
    ws = tmp_path / "ws"
    (ws / "01_backprop").mkdir(parents=True)
    (ws / "01_backprop" / "a.ipynb").write_text("older work")
    report = sync_workspace(release, ws)
    assert (ws / "01_backprop" / "a.ipynb").read_text() == "older work"
    assert len(report.updated_beside) == 1


def test_corrupt_manifest_loses_nothing(release, tmp_path) -> None:
    ws = tmp_path / "ws"
    sync_workspace(release, ws)
    (ws / "01_backprop" / "a.ipynb").write_text("my answers")
    (ws / MANIFEST).write_text("{not json")
    sync_workspace(release, ws)
    assert (ws / "01_backprop" / "a.ipynb").read_text() == "my answers"
    json.loads((ws / MANIFEST).read_text())  # rewritten whole


def test_glossary_joins_the_workspace_under_the_same_rules(release, tmp_path) -> None:
    """The course-wide GLOSSARY.md is copied once, a learner's notes in it survive, updates go beside."""
    glossary = tmp_path / "GLOSSARY.md"
    glossary.write_text("| backpropagation | 反向传播 | 1 | |\n", encoding="utf-8")
    ws = tmp_path / "ws"
    report = sync_workspace(release, ws, {"GLOSSARY.md": glossary})
    assert report.added == ["01_backprop/a.ipynb", "GLOSSARY.md"]
    assert (ws / "GLOSSARY.md").read_text(encoding="utf-8") == glossary.read_text(encoding="utf-8")
    (ws / "GLOSSARY.md").write_text("my notes", encoding="utf-8")
    assert sync_workspace(release, ws, {"GLOSSARY.md": glossary}).unchanged == ["01_backprop/a.ipynb", "GLOSSARY.md"]
    glossary.write_text("| attention | 注意力机制 | 4 | |\n", encoding="utf-8")
    [(mine, beside)] = sync_workspace(release, ws, {"GLOSSARY.md": glossary}).updated_beside
    assert mine == "GLOSSARY.md" and beside.startswith("GLOSSARY.updated-") and beside.endswith(".md")
    assert (ws / "GLOSSARY.md").read_text(encoding="utf-8") == "my notes"


def test_missing_release_says_what_to_do(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="make release"):
        sync_workspace(tmp_path / "nope", tmp_path / "ws")


@pytest.mark.slow
def test_workspace_command_builds_from_real_release(tmp_path) -> None:
    """`python -m autograder workspace` (what `make lab` runs) twice: edits survive."""
    cmd = [sys.executable, "-m", "autograder", "--course-dir", str(tmp_path / "course"),
           "workspace", "--dest", str(tmp_path / "ws")]
    first = subprocess.run(cmd, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-2000:]
    notebooks = sorted((tmp_path / "ws").glob("*/*.ipynb"))
    assert notebooks, first.stdout
    released = sorted((tmp_path / "course" / "release").glob("*/*.ipynb"))
    made = {p: p.stat().st_mtime_ns for p in released}
    notebooks[0].write_text(notebooks[0].read_text().replace("raise NotImplementedError()", "return 42", 1))
    edited = notebooks[0].read_text()
    second = subprocess.run(cmd, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-2000:]
    assert notebooks[0].read_text() == edited
    assert "nothing overwritten" in second.stdout, "an unchanged release must not produce copies"
    assert {p: p.stat().st_mtime_ns for p in released} == made, "unchanged chapters must not be released again"
