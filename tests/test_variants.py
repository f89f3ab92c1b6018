"""Per-learner variants (autograder/variants.py): values from the course secret, per-learner releases, grading.

The grading tests are real runs of ``grade`` (learner code in a confined kernel, tests in the judge):
a small chapter whose answer is a number that depends on the learner's values (so each learner's
correct answer is wrong for the others), and chapter 1 with the instructor's solutions.
"""

from __future__ import annotations

import json
import stat

import nbformat
import pytest

from autograder import course, variants
from autograder.__main__ import main
from autograder.config import CHAPTERS_DIR
from autograder.grade import Settings, grade
from dlbook import check

from .conftest import fill_solutions, nbgrader_meta

SECRET = "a-test-course-secret"
VARIANT_CHAPTERS = course.list_chapters(CHAPTERS_DIR)  # every chapter: at least two exercises each


def _notebooks_with_variants() -> list:
    return [p for p in sorted(CHAPTERS_DIR.glob("*/*.ipynb")) if variants.declarations(json.loads(p.read_text()))]


# --- values ------------------------------------------------------------------------------------------

def test_check_variant_returns_its_values() -> None:
    v = check.variant("ch03_x", size=28, w=[1.0, 2.0])
    assert v.size == 28 and v["w"] == [1.0, 2.0] and dict(v) == {"size": 28, "w": [1.0, 2.0]}
    with pytest.raises(AttributeError, match="no value 'nope'"):
        v.nope  # noqa: B018
    with pytest.raises(TypeError, match="not a plain value"):
        check.variant("ch03_x", f=print)


def test_derive_is_reproducible_from_the_seed_and_follows_the_spec() -> None:
    spec = {"n": [3, 4, 5], "k": {"int": [10, 12]}, "seed": "seed", "w": [[1.0, 2.0], [3.0, 4.0]]}
    seed = variants.exercise_seed(b"s", "alice", "ch01_x")
    values = variants.derive(seed, spec)
    assert values == variants.derive(seed, spec)
    assert values["n"] in spec["n"] and 10 <= values["k"] <= 12 and 0 <= values["seed"] < 2**31
    assert values["w"] in spec["w"] and list(values) == list(spec)
    assert variants.exercise_seed(b"s", "alice", "ch01_x") != variants.exercise_seed(b"t", "alice", "ch01_x")
    assert variants.exercise_seed(b"s", "alice", "ch01_x") != variants.exercise_seed(b"s", "alice", "ch01_y")
    with pytest.raises(variants.VariantError, match="expected a non-empty list of choices"):
        variants.declarations({"metadata": {"dlbook": {"variants": {"ch01_x": {"n": []}}}}})


def test_every_chapter_declares_variants_that_match_their_lines() -> None:
    paths = _notebooks_with_variants()
    for chapter in VARIANT_CHAPTERS:
        names = {n for p in paths if p.parent.name == chapter for n in variants.declarations(json.loads(p.read_text()))}
        assert len(names) >= 2, f"{chapter}: expected at least two exercises with variants, got {sorted(names)}"
    for path in paths:
        nb = json.loads(path.read_text())
        decl = variants.declarations(nb)
        lines = variants.notebook_values(nb)
        assert set(decl) <= set(lines), f"{path.name}: no check.variant line for {sorted(set(decl) - set(lines))}"
        for name, spec in decl.items():
            assert set(lines[name]) == set(spec), f"{path.name}: {name}'s line and declaration have other keys"
        graded = {nbgrader_meta(c).get("grade_id") for c in nb["cells"]}
        assert set(decl) <= graded, f"{path.name}: a variant is named after an exercise (its grade_id)"
        for who in ("alice", "bob"):  # personalising changes only the values of the lines
            mine = variants.personalise(nb, SECRET.encode(), who)
            assert variants.notebook_values(mine) == variants.learner_values(nb, SECRET.encode(), who)
            assert [c["cell_type"] for c in mine["cells"]] == [c["cell_type"] for c in nb["cells"]]


@pytest.mark.parametrize("chapter", VARIANT_CHAPTERS)
def test_two_learners_get_different_values(chapter) -> None:
    for path in [p for p in _notebooks_with_variants() if p.parent.name == chapter]:
        nb = json.loads(path.read_text())
        a, b = (variants.learner_values(nb, SECRET.encode(), s) for s in ("alice", "bob"))
        assert a != b and a == variants.learner_values(nb, SECRET.encode(), "alice")
        assert variants.learner_values(nb, b"another secret", "alice") != a


def test_rewrite_keeps_the_line_and_refuses_shared_lines() -> None:
    src = 'x = 1\nV = check.variant("ch01_x", n=3, w=[1.0, 2.0])  # yours\nprint(V.n)'
    out = variants.rewrite_source(src, {"ch01_x": {"w": [0.5, -1.0], "n": 4}})
    assert out == 'x = 1\nV = check.variant("ch01_x", n=4, w=[0.5, -1.0])  # yours\nprint(V.n)'
    with pytest.raises(variants.VariantError, match="keywords"):
        variants.rewrite_source(src, {"ch01_x": {"n": 4}})
    with pytest.raises(variants.VariantError, match="lines of its own"):
        variants.rewrite_source('V = check.variant("ch01_x", n=3); y = 2', {"ch01_x": {"n": 4}})


def test_secret_from_env_or_file(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(variants.SECRET_ENV, raising=False)
    assert variants.course_secret(tmp_path) is None
    made = variants.course_secret(tmp_path, create=True)
    assert made and variants.course_secret(tmp_path) == made
    assert stat.S_IMODE((tmp_path / variants.SECRET_FILE).stat().st_mode) == 0o600
    monkeypatch.setenv(variants.SECRET_ENV, "from-env")
    assert variants.course_secret(tmp_path) == b"from-env"


# --- releasing ---------------------------------------------------------------------------------------

def _roster(path, students) -> None:
    path.write_text("student_id,first_name,last_name,email\n" + "".join(f"{s},{s},X,{s}@example.org\n"
                                                                       for s in students))


def test_release_per_student(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(variants.SECRET_ENV, raising=False)
    course_dir = tmp_path / "course"
    _roster(tmp_path / "roster.csv", ["alice", "bob"])
    code = main(["--course-dir", str(course_dir), "release", "01_backprop", "--per-student",
                 str(tmp_path / "roster.csv"), "--exchange", str(tmp_path / "exchange")])
    assert code == 0
    secret = (course_dir / variants.SECRET_FILE).read_text().strip()
    src = CHAPTERS_DIR / "01_backprop" / "1_derivatives_and_scalar_autograd.ipynb"
    default = json.loads((course_dir / "release" / "01_backprop" / src.name).read_text())
    assert variants.notebook_values(default) == variants.notebook_values(json.loads(src.read_text())), (
        "the default release keeps the instructor's values")
    seen = {}
    for who in ("alice", "bob"):
        folder = course_dir / variants.PER_STUDENT_DIR / who / "01_backprop"
        assert sorted(p.name for p in folder.glob("*.ipynb")) == sorted(p.name for p in src.parent.glob("*.ipynb"))
        nb = json.loads((folder / src.name).read_text())
        seen[who] = variants.notebook_values(nb)
        assert seen[who] == variants.learner_values(nb, secret.encode(), who)
        assert nb["metadata"]["dlbook"]["variant_of"]["student"] == who
        for cell in nbformat.reads((folder / src.name).read_text(), as_version=4).cells:  # as nbgrader sees it
            meta = nbgrader_meta(cell)
            if "checksum" in meta:
                from nbgrader.utils import compute_checksum

                assert compute_checksum(cell) == meta["checksum"], meta["grade_id"]
        text = (folder / src.name).read_text()
        assert "BEGIN SOLUTION" not in text and "BEGIN HIDDEN TESTS" not in text and secret not in text
        assert (tmp_path / "exchange" / "dlbook" / "personal" / who / "01_backprop" / src.name).read_text() == text
    assert seen["alice"] != seen["bob"]
    record = json.loads((course_dir / variants.RECORD_DIR / "01_backprop.json").read_text())
    assert record["students"] == ["alice", "bob"] and secret not in json.dumps(record)
    assert not any(secret in p.read_text() for p in (course_dir / "release").rglob("*.ipynb"))


def test_release_per_student_bad_roster(tmp_path, capsys) -> None:
    (tmp_path / "roster.csv").write_text("name\nalice\n")
    assert main(["--course-dir", str(tmp_path / "c"), "release", "01_backprop", "--per-student",
                 str(tmp_path / "roster.csv")]) == 2
    assert "expected a student_id column" in capsys.readouterr().err


def test_grading_needs_the_secret_the_release_was_made_with(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.delenv(variants.SECRET_ENV, raising=False)
    assert variants.for_grading(tmp_path, "01_backprop") is None  # no per-learner release: as before
    (tmp_path / variants.RECORD_DIR).mkdir()
    (tmp_path / variants.RECORD_DIR / "01_backprop.json").write_text(json.dumps(
        {"secret": variants.secret_fingerprint(b"old"), "students": ["alice"]}))
    with pytest.raises(variants.VariantError, match="secret is missing"):
        variants.for_grading(tmp_path, "01_backprop")
    monkeypatch.setenv(variants.SECRET_ENV, "new")
    with pytest.raises(variants.VariantError, match="another course secret"):
        variants.for_grading(tmp_path, "01_backprop")
    assert main(["--course-dir", str(tmp_path), "grade", "01_backprop", str(tmp_path / "subs")]) == 2
    assert "another course secret" in capsys.readouterr().err
    monkeypatch.setenv(variants.SECRET_ENV, "old")
    assert variants.for_grading(tmp_path, "01_backprop").students == {"alice"}


# --- grading: an answer that depends on the learner's values ----------------------------------------

CHAPTER = "99_variants"
NB = "1_output_size.ipynb"


def _cell(kind: str, source: str, **nbgrader) -> nbformat.NotebookNode:
    make = nbformat.v4.new_code_cell if kind == "code" else nbformat.v4.new_markdown_cell
    cell = make(source)
    if nbgrader:
        cell.metadata["nbgrader"] = {"schema_version": 3, "task": False, **nbgrader}
    return cell


def _variant_chapter(source_dir) -> None:
    """A one-exercise chapter: the output size of a convolution with the learner's sizes, worked out by hand."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["dlbook"] = {"variants": {"ch99_out_size": {"size": [20, 24, 28, 32, 36, 40, 44, 48],
                                                            "kernel": [3, 5, 7]}}}
    nb.cells = [
        _cell("code", "from dlbook import check"),
        _cell("markdown", "How many positions does a kernel of `V.kernel` fit on `V.size` pixels (no padding)?"),
        _cell("code", 'V = check.variant("ch99_out_size", size=28, kernel=5)  # your sizes\nprint(V)'),
        _cell("code", "### BEGIN SOLUTION\nout_size = V.size - V.kernel + 1\n### END SOLUTION",
              grade=False, grade_id="ch99_out_size_solution", locked=False, solution=True),
        _cell("code", 'ex = "ch99_out_size"\nV = check.variant("ch99_out_size", size=28, kernel=5)\n'
                      'assert type(out_size) is int, f"{ex}: expected an int"\n### BEGIN HIDDEN TESTS\n'
                      'assert out_size == V.size - V.kernel + 1, f"{ex}: {out_size} for {V.size}, {V.kernel}"\n'
                      '### END HIDDEN TESTS',
              grade=True, grade_id="ch99_out_size", locked=True, points=2, solution=False),
    ]
    (source_dir / CHAPTER).mkdir(parents=True)
    nbformat.write(nb, source_dir / CHAPTER / NB)


def _answer(nb: dict, answer: str) -> nbformat.NotebookNode:
    nb = nbformat.from_dict(nb)
    for cell in nb.cells:
        if nbgrader_meta(cell).get("solution"):
            cell.source = answer
    return nb


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("variants")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(variants.SECRET_ENV, SECRET)
        source_dir, course_dir = root / "src", root / "course"
        _variant_chapter(source_dir)
        students = ["alice", "bob", "carol", "dave"]
        _roster(root / "roster.csv", students)
        variants.release_per_student([CHAPTER], root / "roster.csv", course_dir, source_dir, quiet=True)
        released = {s: json.loads((course_dir / variants.PER_STUDENT_DIR / s / CHAPTER / NB).read_text())
                    for s in students}
        values = {s: variants.notebook_values(released[s])["ch99_out_size"] for s in students}
        size = {s: values[s]["size"] - values[s]["kernel"] + 1 for s in students}
        assert len({size["alice"], size["bob"], size["carol"]}) == 3, f"the test needs different answers: {values}"
        # dave writes carol's values into his notebook and answers for them: the grader never reads them
        dave = json.loads(json.dumps(released["dave"]))
        for cell in dave["cells"]:
            if cell["cell_type"] == "code":
                text = variants.rewrite_source("".join(cell["source"]), {"ch99_out_size": values["carol"]})
                cell["source"] = text.splitlines(keepends=True)
        answers = {"alice": size["alice"], "bob": size["bob"], "carol": size["alice"], "dave": size["carol"]}
        notebooks = {"alice": released["alice"], "bob": released["bob"],
                     "carol": released["alice"],  # alice's notebook, handed in by carol
                     "dave": dave}
        subs = root / "subs"
        for s in students:
            (subs / s / CHAPTER).mkdir(parents=True)
            nbformat.write(_answer(notebooks[s], f"out_size = {answers[s]}"), subs / s / CHAPTER / NB)
        settings = Settings(cell_timeout=120, notebook_budget=600)
        with_variants = grade(CHAPTER, subs, source_dir, root / "graded", workers=1, settings=settings,
                              progress=False, variants=variants.for_grading(course_dir, CHAPTER))
        # the same submissions without variants: everyone is graded with the source's values (size 28, kernel 5)
        plain = grade(CHAPTER, subs, source_dir, root / "graded-plain", workers=1, settings=settings, progress=False)
    return {"reports": with_variants.by_student, "plain": plain.by_student, "values": values, "answers": answers}


def test_each_learners_answer_scores_with_their_own_values(synthetic) -> None:
    reports = synthetic["reports"]
    for s in ("alice", "bob"):
        assert reports[s]["points"] == reports[s]["max_points"] == 2, reports[s]
        assert not reports[s]["flags"], reports[s]["flags"]
        (notebook,) = reports[s]["notebooks"]
        assert notebook["variant"]["values"] == {"ch99_out_size": synthetic["values"][s]}


def test_a_learners_answer_fails_with_another_learners_values(synthetic) -> None:
    """carol hands in alice's notebook: graded with carol's own values, alice's answer is wrong, and flagged."""
    carol = synthetic["reports"]["carol"]
    assert carol["points"] == 0, carol
    assert any(f.startswith("variant_mismatch:") and "issued to 'alice'" in f for f in carol["flags"]), carol["flags"]


def test_values_written_into_the_notebook_are_never_used(synthetic) -> None:
    """dave edits his notebook to carol's values and answers for them: graded with his own, he fails, flagged."""
    dave = synthetic["reports"]["dave"]
    assert dave["points"] == 0, dave
    assert any(f.startswith("variant_mismatch:") for f in dave["flags"]), dave["flags"]


def test_without_a_per_learner_release_grading_is_as_before(synthetic) -> None:
    plain = synthetic["plain"]
    for s, report in plain.items():
        assert report["points"] == (2 if synthetic["answers"][s] == 28 - 5 + 1 else 0), (s, report)
        assert not any(f.startswith("variant_mismatch") for f in report["flags"])
        assert all("variant" not in n for n in report["notebooks"])


# --- grading chapter 1 with each learner's values ----------------------------------------------------

@pytest.mark.slow
def test_chapter_1_per_learner_release_grades_full_marks_and_flags_a_swap(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(variants.SECRET_ENV, SECRET)
    chapter, name = "01_backprop", "1_derivatives_and_scalar_autograd.ipynb"
    source_dir = tmp_path / "src"  # only the notebook with variants: a shorter run
    (source_dir / chapter).mkdir(parents=True)
    (source_dir / chapter / name).write_bytes((CHAPTERS_DIR / chapter / name).read_bytes())
    course_dir = tmp_path / "course"
    _roster(tmp_path / "roster.csv", ["alice", "bob", "carol"])
    variants.release_per_student([chapter], tmp_path / "roster.csv", course_dir, source_dir, quiet=True)
    source_nb = nbformat.read(source_dir / chapter / name, as_version=4)
    subs = tmp_path / "subs"
    for who, release_of in {"alice": "alice", "bob": "bob", "carol": "alice"}.items():
        mine = nbformat.read(course_dir / variants.PER_STUDENT_DIR / release_of / chapter / name, as_version=4)
        (subs / who / chapter).mkdir(parents=True)
        nbformat.write(fill_solutions(mine, source_nb), subs / who / chapter / name)
    batch = grade(chapter, subs, source_dir, tmp_path / "graded", workers=1,
                  settings=Settings(cell_timeout=300, notebook_budget=900), progress=False,
                  variants=variants.for_grading(course_dir, chapter))
    reports = batch.by_student
    values = {who: reports[who]["notebooks"][0]["variant"]["values"] for who in reports}
    assert values["alice"] != values["bob"] and values["carol"] not in (values["alice"], values["bob"])
    for report in reports.values():
        assert report["points"] == report["max_points"] > 0, [e for n in report["notebooks"] for e in n["exercises"]
                                                              if e["status"] != "passed"]
    assert not [f for f in reports["alice"]["flags"] + reports["bob"]["flags"] if not f.startswith("renamed")]
    assert any(f.startswith("variant_mismatch:") and "issued to 'alice'" in f for f in reports["carol"]["flags"])
    assert course.list_chapters(source_dir) == [chapter]
