"""Intake of hostile submissions: zips, folders, LMS files, links and unreadable notebooks.

The unit tests call :func:`discover`, :func:`match_notebooks` and :func:`load_submission` on folders and
zips crafted in ``tmp_path``; the one slow test grades such a zip end to end. Every problem must become a
note or a flag of the one student it concerns: the batch never stops, nothing is merged or followed.
"""

from __future__ import annotations

import json
import os
import stat
import warnings
import zipfile
from pathlib import Path

import nbformat
import pytest

from autograder import course
from autograder.config import CHAPTERS_DIR
from autograder.grade import Settings, grade
from autograder.grading.intake import EVERYTHING, discover, match_notebooks, safe_extract
from autograder.grading.notebook import dynamic_code_flags, load_submission, reference_cells

from .conftest import fill_solutions

CHAPTER = "01_backprop"
NB = "1_derivatives_and_scalar_autograd.ipynb"
SOURCE = CHAPTERS_DIR / CHAPTER / NB
FULL = 14.0
LONG = "y" * 300 + ".ipynb"  # a 306-character name: more than a file system allows (255)
NESTED = '{"cells": ' + "[" * 100_000 + "]" * 100_000 + "}"  # json.loads raises RecursionError


@pytest.fixture(scope="module")
def ref_ids() -> dict[str, set[str]]:
    return {NB: {c["grade_id"] for c in reference_cells(SOURCE) if c["grade_id"]}}


def _zip(path: Path, members: list) -> Path:
    """Write a zip of ``(name, text)`` members, or ``(name, text, mode)`` with the Unix mode a member claims."""
    with warnings.catch_warnings(), zipfile.ZipFile(path, "w") as zf:
        warnings.simplefilter("ignore")  # "Duplicate name": wanted here
        for name, text, *mode in members:
            info = zipfile.ZipInfo(name)
            if mode:
                info.create_system, info.external_attr = 3, mode[0] << 16
            zf.writestr(info, text)
    return path


def _link(name: str, target: str) -> tuple:
    return name, target, stat.S_IFLNK | 0o777


def _notes(problems: list[str], *words: str) -> list[str]:
    return [p for p in problems if all(w in p for w in words)]


# --- zips: every member on its own -----------------------------------------------------------------

def test_a_zip_member_the_file_system_refuses_is_a_note(tmp_path) -> None:
    archive = _zip(tmp_path / "lms.zip", [(f"alice/{CHAPTER}/{NB}", "{}"), (f"eve/{CHAPTER}/{LONG}", "{}"),
                                         (f"zoe/{CHAPTER}/{NB}", "{}")])
    students, problems = discover(archive, CHAPTER, tmp_path / "scratch")
    assert sorted(students) == ["alice", "zoe"]
    assert len(_notes(problems, "eve/", "File name too long")) == 1, problems


def test_a_file_folder_clash_in_a_zip_is_ambiguous_whatever_the_order(tmp_path) -> None:
    archive = _zip(tmp_path / "lms.zip", [(f"ann/{CHAPTER}/{NB}", "{}"), (f"ann/{CHAPTER}/{NB}/y", "x"),
                                         (f"ben/{NB}/y", "x"), (f"ben/{NB}", "{}"), (f"cid/{NB}", "{}")])
    students, problems = discover(archive, CHAPTER, tmp_path / "scratch")
    assert sorted(students) == ["ann", "ben", "cid"]
    for student in ("ann", "ben"):
        assert students.withheld[student][NB].startswith("ambiguous_submission:"), student
        assert _notes(problems, f"{student}/", "both a file and a folder"), problems
        found = match_notebooks([NB], {NB: set()}, students[student], students.withheld[student])
        assert found[NB][:2] == (None, None) and found[NB][2].startswith("ambiguous_submission:")
    assert "cid" not in students.withheld


def test_a_member_given_twice_is_ambiguous_not_overwritten(tmp_path) -> None:
    archive = _zip(tmp_path / "lms.zip", [(f"dup_{NB}", '{"cells": []}'), (f"dup_{NB}", "{}"),
                                         (f"alice_{NB}", "{}")])
    students, problems = discover(archive, CHAPTER, tmp_path / "scratch")
    assert not (students["dup"] / NB).exists(), "one of the two was kept"
    assert students.withheld["dup"] == {NB: f"ambiguous_submission: dup_{NB} is given 2 times in the zip; "
                                            "none is graded"}
    assert len(_notes(problems, f"dup_{NB}", "given 2 times")) == 1
    assert (students["alice"] / NB).exists()


def test_a_symlink_member_is_extracted_as_nothing(tmp_path) -> None:
    archive = _zip(tmp_path / "lms.zip", [(f"alice/{CHAPTER}/{NB}", "{}"),
                                         _link(f"mallory/{CHAPTER}/{NB}", f"../../alice/{CHAPTER}/{NB}"),
                                         _link("loot", "/etc")])
    students, problems = discover(archive, CHAPTER, tmp_path / "scratch")
    unzipped = tmp_path / "scratch" / "unzipped"
    assert not any(p.is_symlink() for p in unzipped.rglob("*"))
    assert not os.path.lexists(unzipped / "mallory" / CHAPTER / NB) and not os.path.lexists(unzipped / "loot")
    assert students.withheld["mallory"][NB].startswith("symlink_rejected:")
    assert _notes(problems, "mallory/", "symbolic link") and _notes(problems, "'loot'", "symbolic link")


def test_a_zip_over_the_size_cap_keeps_the_members_that_fit(tmp_path) -> None:
    archive = _zip(tmp_path / "big.zip", [("a_x.ipynb", "{}"), ("b_x.ipynb", "x" * 1000), ("c_x.ipynb", "{}")])
    notes, rejected = safe_extract(archive, tmp_path / "out", max_bytes=100)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_x.ipynb", "c_x.ipynb"]
    assert len(notes) == 1 and "b_x.ipynb" in notes[0] and rejected == {}


# --- folders and LMS files: no merging, no links ---------------------------------------------------------

def test_a_folder_and_loose_files_of_one_id_are_not_merged(tmp_path, ref_ids) -> None:
    tree = tmp_path / "tree"
    (tree / "bob" / CHAPTER).mkdir(parents=True)
    (tree / "bob" / CHAPTER / NB).write_text(SOURCE.read_text())
    (tree / f"bob_1_{NB}").write_text(SOURCE.read_text())
    (tree / f"amy_{NB}").write_text("{}")
    students, problems = discover(tree, CHAPTER, tmp_path / "scratch")
    flag = students.withheld["bob"][EVERYTHING]
    assert flag.startswith("ambiguous_submission:") and "'bob/'" in flag and f"bob_1_{NB}" in flag
    assert _notes(problems, "bob", f"bob_1_{NB}", "not merged")
    found = match_notebooks([NB], ref_ids, students["bob"], students.withheld["bob"])
    assert found[NB] == (None, None, flag)
    assert "amy" not in students.withheld and (students["amy"] / NB).exists()


def test_renamed_files_that_match_one_notebook_equally_are_ambiguous(tmp_path, ref_ids) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    for upload in ("1", "2"):
        (tree / f"twice_{upload}_{NB}").write_text(SOURCE.read_text())
    (tree / f"once_3_{NB}").write_text(SOURCE.read_text())
    students, _ = discover(tree, CHAPTER, tmp_path / "scratch")
    path, cells, error = match_notebooks([NB], ref_ids, students["twice"])[NB]
    assert path is None and cells is None and error.startswith("ambiguous_submission:")
    assert f"1_{NB}" in error and f"2_{NB}" in error
    assert match_notebooks([NB], ref_ids, students["once"])[NB][1], "one renamed file is still found"
    exact = tmp_path / "exact"
    exact.mkdir()
    for name in (NB, "copy.ipynb", "copy 2.ipynb"):
        (exact / name).write_text(SOURCE.read_text())
    assert match_notebooks([NB], ref_ids, exact)[NB][0] == exact / NB, "the exact name wins over copies"


def test_symlinks_in_a_folder_tree_are_never_followed(tmp_path, ref_ids) -> None:
    tree = tmp_path / "tree"
    honest = tree / "alice" / CHAPTER / NB
    honest.parent.mkdir(parents=True)
    honest.write_text(SOURCE.read_text())
    (tree / "mallory").symlink_to(tree / "alice")  # a linked student folder
    (tree / "eve" / CHAPTER).mkdir(parents=True)
    (tree / "eve" / CHAPTER / NB).symlink_to(honest)  # a linked notebook
    (tree / "ivy").mkdir()
    (tree / "ivy" / CHAPTER).symlink_to(tree / "alice" / CHAPTER)  # a linked assignment folder
    (tree / f"zed_{NB}").symlink_to(honest)  # a linked LMS file
    students, problems = discover(tree, CHAPTER, tmp_path / "scratch")
    assert "mallory" not in students and "ivy" not in students
    assert _notes(problems, "'mallory'", "symbolic link") and _notes(problems, f"ivy/{CHAPTER}", "symbolic link")
    assert _notes(problems, "eve", NB, "symbolic link")
    path, cells, error = match_notebooks([NB], ref_ids, students["eve"])[NB]
    assert path == tree / "eve" / CHAPTER / NB and cells is None and error.startswith(f"symlink_rejected: {NB}")
    assert students.withheld["zed"][NB].startswith("symlink_rejected:")
    assert not os.path.lexists(students["zed"] / NB)
    assert match_notebooks([NB], ref_ids, students["zed"], students.withheld["zed"])[NB][2].startswith(
        "symlink_rejected:")
    assert match_notebooks([NB], ref_ids, students["alice"])[NB][1], "the honest notebook is still read"


# --- unreadable notebooks: a reason for each -----------------------------------------------------------------

def _cell(escape: bool = True, **fields) -> str:
    """A one-cell notebook whose cell has ``fields``."""
    cell = {"cell_type": "code", "source": "x = 1", "metadata": {}, "outputs": [], "execution_count": None}
    return json.dumps({"cells": [cell | fields], "metadata": {}, "nbformat": 4, "nbformat_minor": 5},
                      ensure_ascii=escape)


BAD_NOTEBOOKS = {
    "nested": (NESTED.encode(), "nested too deeply"),
    "source_number": (_cell(source=5).encode(), "source is not a string or a list of strings"),
    "source_list": (_cell(source=["a", 1]).encode(), "source is not a string or a list of strings"),
    "metadata_list": (_cell(metadata=["grade"]).encode(), "metadata is not an object"),
    "nbgrader_string": (_cell(metadata={"nbgrader": "x"}).encode(), "metadata.nbgrader is not an object"),
    "latin1": (_cell(False, source="caf\u00e9").encode("latin-1"), "not UTF-8"),
    "surrogate": (_cell(source="\ud800").encode(), "not valid Unicode"),  # '"\\ud800"' in the JSON
}


@pytest.mark.parametrize("case", sorted(BAD_NOTEBOOKS))
def test_an_unreadable_notebook_says_why(tmp_path, case) -> None:
    data, reason = BAD_NOTEBOOKS[case]
    (tmp_path / NB).write_bytes(data)
    with pytest.raises(ValueError, match=reason):
        load_submission(tmp_path / NB)


def test_a_notebook_over_the_size_cap_is_not_read(tmp_path) -> None:
    text = SOURCE.read_text()
    (tmp_path / NB).write_text(text[:-1] + " " * (32 << 20) + text[-1])  # valid JSON, one space too many MiB
    with pytest.raises(ValueError, match="too large"):
        load_submission(tmp_path / NB)


def test_each_bad_notebook_is_reported_on_its_own(tmp_path, ref_ids) -> None:
    tree = tmp_path / "tree"
    for student, data in [("deep", NESTED.encode()), ("latin", BAD_NOTEBOOKS["latin1"][0]),
                          ("alice", SOURCE.read_bytes())]:
        (tree / student / CHAPTER).mkdir(parents=True)
        (tree / student / CHAPTER / NB).write_bytes(data)
    students, problems = discover(tree, CHAPTER, tmp_path / "scratch")
    assert sorted(students) == ["alice", "deep", "latin"] and problems == []
    found = {s: match_notebooks([NB], ref_ids, f)[NB] for s, f in students.items()}
    assert found["alice"][1] and found["alice"][2] is None
    assert found["deep"][0].name == NB and found["deep"][1] is None and "nested too deeply" in found["deep"][2]
    assert found["latin"][1] is None and "not UTF-8" in found["latin"][2]


# --- static flags ------------------------------------------------------------------------------------------

def test_dynamic_code_in_solution_cells_is_flagged() -> None:
    source = ("import importlib\nm = importlib.import_module('os')\nos2 = __import__('os')\nexec('x = 1')\n"
              "eval('1')\ncompile('1', 'f', 'eval')\ngetattr(m, name)\nsetattr(m, f'a{1}', 2)\n"
              "getattr(m, 'path')\ndelattr(m, 'x')\nmodel.eval()\ntorch.compile(model)\nre.compile('x')\n")
    run = [{"kind": "solution", "grade_id": "g", "source": source},
           {"kind": "code", "grade_id": None, "source": "exec('1')\n__import__('os')"},
           {"kind": "solution", "grade_id": "h", "source": "getattr(model, 'head').eval()\n%time x = 1"}]
    assert dynamic_code_flags(run) == [f"dynamic_code: g uses {u}" for u in (
        "__import__", "compile", "eval", "exec", "getattr with a computed attribute name", "importlib.import_module",
        "setattr with a computed attribute name")]


# --- one batch, end to end -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_hostile_zip_is_graded_and_every_problem_reported(tmp_path) -> None:
    course.release([CHAPTER], tmp_path / "course", quiet=True)
    src = tmp_path / "source"
    (src / CHAPTER).mkdir(parents=True)
    (src / CHAPTER / NB).write_bytes(SOURCE.read_bytes())
    student_nb = nbformat.read(tmp_path / "course" / "release" / CHAPTER / NB, as_version=4)
    honest = nbformat.writes(fill_solutions(student_nb, nbformat.read(SOURCE, as_version=4)))
    archive = _zip(tmp_path / "lms.zip", [
        (f"alice/{CHAPTER}/{NB}", honest),
        _link(f"mallory/{CHAPTER}/{NB}", f"../../alice/{CHAPTER}/{NB}"),  # steal alice's notebook
        (f"eve/{CHAPTER}/{LONG}", honest),  # the file system refuses the name
        (f"clash/{CHAPTER}/{NB}", honest), (f"clash/{CHAPTER}/{NB}/y", "x"),  # a file and a folder
        (f"deep/{CHAPTER}/{NB}", NESTED),  # RecursionError in json.loads
        (f"dup_{NB}", honest), (f"dup_{NB}", nbformat.writes(student_nb)),  # two LMS files for one notebook
    ])
    result = grade(CHAPTER, archive, src, tmp_path / "out", workers=2, progress=False,
                   settings=Settings(cell_timeout=60, notebook_budget=300))
    reports, summary = result.by_student, result.summary()
    print(summary)
    assert sorted(reports) == ["alice", "clash", "deep", "dup", "mallory"], summary
    assert reports["alice"]["points"] == FULL and reports["alice"]["status"] == "graded", summary
    for student, status, flag in [("mallory", "missing", "symlink_rejected"),
                                  ("clash", "missing", "ambiguous_submission"),
                                  ("deep", "invalid", "invalid_notebook: not a notebook (invalid JSON: nested too"),
                                  ("dup", "missing", "ambiguous_submission")]:
        report = reports[student]
        assert report["points"] == 0 and report["status"] == "graded", (student, report)
        assert report["notebooks"][0]["status"] == status, (student, report)
        assert any(f.startswith(flag) for f in report["flags"]), (student, report["flags"])
        assert {e["status"] for e in report["notebooks"][0]["exercises"]} == {"not-run"}
    for words in [("mallory/", "symbolic link"), ("eve/", "File name too long"),
                  (f"clash/{CHAPTER}/{NB}", "both a file and a folder"), (f"dup_{NB}", "given 2 times")]:
        assert any(all(w in line for w in words) for line in summary.splitlines() if line.startswith("note: ")), \
            (words, summary)

