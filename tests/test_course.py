"""Course operations (release, collect): what reaches learners, and failures that say what was expected."""

from __future__ import annotations

import pytest

from autograder import course
from autograder.__main__ import main
from autograder.config import CHAPTER_PRIVATE_FILES, CHAPTERS_DIR


def test_unknown_chapter(tmp_path, capsys) -> None:
    code = main(["--course-dir", str(tmp_path / "c"), "release", "99_nope"])
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown chapter '99_nope'; expected one of:" in err and "01_backprop" in err


def test_missing_submissions_folder(tmp_path) -> None:
    with pytest.raises(course.CourseError, match="expected a folder of submissions"):
        course.collect("01_backprop", tmp_path / "missing", tmp_path / "course")


def test_empty_submissions_folder(tmp_path) -> None:
    (tmp_path / "subs" / "alice").mkdir(parents=True)
    with pytest.raises(course.CourseError, match=r"<student>/01_backprop/\*\.ipynb"):
        course.collect("01_backprop", tmp_path / "subs", tmp_path / "course")


def test_bad_student_id(tmp_path) -> None:
    (tmp_path / "subs" / "bad name").mkdir(parents=True)
    (tmp_path / "subs" / "bad name" / "x.ipynb").write_text("{}")
    with pytest.raises(course.CourseError, match="not a valid id"):
        course.collect("01_backprop", tmp_path / "subs", tmp_path / "course")


def test_collect_copies_both_layouts(tmp_path) -> None:
    subs = tmp_path / "subs"
    (subs / "alice" / "01_backprop").mkdir(parents=True)
    (subs / "alice" / "01_backprop" / "a.ipynb").write_text("A")
    (subs / "bob").mkdir()
    (subs / "bob" / "a.ipynb").write_text("B")
    students = course.collect("01_backprop", subs, tmp_path / "course")
    assert students == ["alice", "bob"]
    assert (tmp_path / "course" / "submitted" / "bob" / "01_backprop" / "a.ipynb").read_text() == "B"
    assert (subs / "bob" / "a.ipynb").read_text() == "B"


@pytest.mark.slow
def test_release_leaves_out_the_chapters_private_files(tmp_path) -> None:
    """nbgrader copies a chapter's other files to learners (08's ddp_train.py), never its targets or bug."""
    chapter = "08_scale"
    assert {p.name for p in (CHAPTERS_DIR / chapter).iterdir()} >= {"ddp_train.py", *CHAPTER_PRIVATE_FILES}
    [released] = course.release([chapter], tmp_path / "course", quiet=True)
    names = {p.name for p in released.rglob("*")}
    assert "ddp_train.py" in names, f"the release should hold the chapter's own files, it holds {sorted(names)}"
    leaked = names & set(CHAPTER_PRIVATE_FILES)
    assert not leaked, f"the student release of {chapter} holds {sorted(leaked)}: add them to CourseDirectory.ignore"


def test_nbgrader_ignores_the_chapters_private_files_and_its_own_defaults(tmp_path) -> None:
    from nbgrader.coursedir import CourseDirectory
    from traitlets.config import Config

    from autograder.config import configure

    ignore = configure(Config(), tmp_path).CourseDirectory.ignore
    assert set(ignore) >= {*CourseDirectory.ignore.default(), *CHAPTER_PRIVATE_FILES}, ignore


@pytest.mark.slow
def test_only_changed_chapters_are_released_again(tmp_path) -> None:
    import json
    import shutil

    source = tmp_path / "chapters"
    shutil.copytree(CHAPTERS_DIR / "01_backprop", source / "01_backprop")
    course_dir = tmp_path / "course"

    def release_times() -> dict:
        course.release(None, course_dir, source, quiet=True, only_changed=True)
        return {p.name: p.stat().st_mtime_ns for p in (course_dir / "release" / "01_backprop").glob("*.ipynb")}

    first = release_times()
    assert first and release_times() == first, "nothing changed: nothing is released again"
    (source / "01_backprop" / "targets.json").write_text("{}")  # a private file is not part of the release
    assert release_times() == first
    nb_path = source / "01_backprop" / sorted(first)[0]
    nb = json.loads(nb_path.read_text())
    nb["cells"][0]["source"] = ["# A new title\n"]
    nb_path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    third = release_times()
    assert third != first, "a changed source notebook is released again"
    assert "# A new title" in (course_dir / "release" / "01_backprop" / nb_path.name).read_text()
    shutil.rmtree(course_dir / "release" / "01_backprop")  # a release that is gone is made again
    assert release_times().keys() == first.keys()


@pytest.mark.slow
def test_releasing_several_chapters_in_one_process_gives_nbgraders_release(tmp_path) -> None:
    """course.release (autograder/release_many.py, one process) makes byte for byte what `nbgrader
    generate_assignment` makes, one chapter per run; and the gradebook knows every chapter."""
    import hashlib

    from nbgrader.api import Gradebook

    chapters = ["01_backprop", "08_scale"]  # 08 has a file besides its notebooks (ddp_train.py)
    course.release(chapters, tmp_path / "many", quiet=True)
    for chapter in chapters:
        course.run_nbgrader(tmp_path / "cli", "generate_assignment", chapter, "--force", quiet=True)

    def files(root):
        return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted((root / "release").rglob("*")) if p.is_file()}

    many, cli = files(tmp_path / "many"), files(tmp_path / "cli")
    assert many and many == cli
    with Gradebook(f"sqlite:///{tmp_path / 'many' / 'gradebook.db'}") as gb:
        assert sorted(a.name for a in gb.assignments) == chapters


@pytest.mark.slow
def test_a_chapter_that_fails_to_release_leaves_no_stamp_and_says_which(tmp_path) -> None:
    import shutil

    source = tmp_path / "chapters"
    for chapter in ("01_backprop", "02_training"):
        shutil.copytree(CHAPTERS_DIR / chapter, source / chapter)
    broken = next((source / "02_training").glob("*.ipynb"))
    broken.write_text("{ this is not a notebook")
    with pytest.raises(course.CourseError, match="02_training"):
        course.release(None, tmp_path / "course", source, quiet=True, only_changed=True)
    assert not list((tmp_path / "course" / course.RELEASE_STAMPS).glob("*.sha256"))


def test_the_in_process_alembic_head_is_what_the_alembic_command_says(tmp_path) -> None:
    """nbgrader's get_alembic_version runs `alembic heads` in a subprocess; ours reads the same scripts."""
    import subprocess
    import sys
    from pathlib import Path

    import nbgrader.api
    from nbgrader.dbutil import _temp_alembic_ini

    from autograder.config import alembic_head, use_inprocess_alembic_head

    with _temp_alembic_ini(f"sqlite:///{tmp_path / 'unused.db'}") as ini:
        out = subprocess.check_output([str(Path(sys.executable).parent / "alembic"), "-c", ini, "heads"], text=True)
    assert alembic_head() == out.split("\n")[0].split(" ")[0] != ""
    use_inprocess_alembic_head()
    with nbgrader.api.Gradebook(f"sqlite:///{tmp_path / 'gradebook.db'}") as gb:
        version = gb.db.execute(nbgrader.api.text("SELECT version_num FROM alembic_version")).scalar()
    assert version == alembic_head()
