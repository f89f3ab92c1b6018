"""Committed source notebooks: stripped outputs, valid nbgrader metadata, the chapter anatomy."""

from __future__ import annotations

import os
import re
from collections import Counter

import nbformat
import pytest
from nbgrader.nbgraderformat import MetadataValidator

from .conftest import CHAPTERS, CHAPTERS_DIR, NOTEBOOKS, nbgrader_meta

# The issues' minimum number of graded exercises per chapter (5 where an issue does not say).
MIN_EXERCISES = {"01_backprop": 8, "02_training": 8, "03_cnn": 8, "04_rnn": 8, "05_generative": 6,
                 "06_rl": 6, "07_deploy": 6, "08_scale": 5,
                 "09_less_data": 7}


def test_there_are_chapters() -> None:
    assert CHAPTERS, "expected chapter folders chapters/NN_slug/ with notebooks"
    if not os.environ.get("DLBOOK_CHAPTERS"):  # the full suite always covers the backbone chapter
        assert "01_backprop" in CHAPTERS, f"expected chapters/01_backprop, found {CHAPTERS}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_outputs_stripped(path) -> None:
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i} has outputs: strip them before committing"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_nbgrader_metadata_valid(path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    MetadataValidator().validate_nb(nb)  # raises ValidationError on bad metadata
    assert nb.metadata.kernelspec.name == "python3"
    number = path.parent.name[:2]
    for cell in nb.cells:
        meta = nbgrader_meta(cell)
        if not meta:
            continue
        assert meta["schema_version"] == 3
        assert re.fullmatch(rf"ch{number}_[a-z0-9_]+", meta["grade_id"]), meta["grade_id"]
        if meta.get("solution"):
            assert "### BEGIN SOLUTION" in cell.source and "### END SOLUTION" in cell.source, meta["grade_id"]
            assert meta["grade_id"].endswith("_solution"), meta["grade_id"]
        if meta.get("grade") and cell.cell_type == "code":
            assert meta.get("locked"), f"{meta['grade_id']}: test cells must be locked"
            assert meta.get("points", 0) > 0, f"{meta['grade_id']}: test cells carry points"
            assert "### BEGIN HIDDEN TESTS" in cell.source, f"{meta['grade_id']}: no hidden tests"
    assert len(nb.cells) <= 60, f"{path.name} has {len(nb.cells)} cells; split the chapter"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_anatomy(chapter) -> None:
    ids: Counter[str] = Counter()
    graded = 0
    sources = []
    for path in sorted((CHAPTERS_DIR / chapter).glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            sources.append(cell.source)
            meta = nbgrader_meta(cell)
            if meta.get("grade_id"):
                ids[meta["grade_id"]] += 1
            if meta.get("grade") and cell.cell_type == "code":
                graded += 1
    duplicates = [g for g, n in ids.items() if n > 1]
    assert not duplicates, f"grade_ids must be unique across {chapter}: {duplicates}"
    assert graded >= MIN_EXERCISES.get(chapter, 5), f"{chapter} has {graded} graded exercises"
    text = "\n".join(sources)
    assert "ipywidgets" in text, f"{chapter}: at least one ipywidgets control"
    assert "record_metric" in text, f"{chapter}: record headline numbers for the benchmark"
    assert "tqdm" in text or "train.fit" in text, f"{chapter}: training runs show a progress bar"
