"""The grader's pieces that need no kernel: matching against the reference, discovery, output caps."""

from __future__ import annotations

import json
import zipfile

import nbformat
import pytest

from autograder.__main__ import main
from autograder.config import CHAPTERS_DIR
from autograder.grading.feedback import write_feedback_html
from autograder.grading.intake import discover, match_notebooks
from autograder.grading.notebook import assemble, load_submission, reference_calls, reference_cells, visible_source
from autograder.grading.outputs import Outputs as _Outputs
from autograder.grading.sandbox import Limits, dirs_with_parents

NB = CHAPTERS_DIR / "01_backprop" / "1_derivatives_and_scalar_autograd.ipynb"


@pytest.fixture(scope="module")
def ref() -> list[dict]:
    return reference_cells(NB)


def _as_submission(ref: list[dict]) -> list[dict]:
    """The reference as a learner would submit it (hidden tests stripped, metadata kept)."""
    return [{"cell_type": "markdown" if c["kind"] == "markdown" else "code",
             "source": visible_source(c["source"]) if c["kind"] == "test" else c["source"], "meta": dict(c["meta"])}
            for c in ref]


def test_visible_source_drops_hidden_regions() -> None:
    src = "a = 1\n### BEGIN HIDDEN TESTS\nsecret()\n### END HIDDEN TESTS\nprint('ok')"
    assert visible_source(src) == "a = 1\nprint('ok')"


def test_honest_submission_assembles_to_the_reference(ref) -> None:
    run, flags = assemble(ref, _as_submission(ref))
    assert flags == []
    assert [c["source"] for c in run if c["kind"] == "test"] == [c["source"] for c in ref if c["kind"] == "test"]
    assert all("BEGIN HIDDEN TESTS" in c["source"] for c in run if c["kind"] == "test")


def test_deleted_and_edited_tests_are_replaced_by_the_reference(ref) -> None:
    sub = _as_submission(ref)
    first_test = next(i for i, c in enumerate(sub) if c["meta"].get("grade") and not c["meta"].get("solution"))
    sub[first_test]["source"] = "print('all checks passed')"
    sub = [c for c in sub if c["meta"].get("grade_id") != "ch01_mse_gradients"]
    run, flags = assemble(ref, sub)
    kinds = {f.split(":")[0] for f in flags}
    assert {"test_cell_edited", "test_cell_missing"} <= kinds
    ids = [c["grade_id"] for c in run if c["grade_id"]]
    assert ids == [c["grade_id"] for c in ref if c["grade_id"]], "graded cells back in reference order"


def test_forged_metadata_is_ignored_and_reported(ref) -> None:
    sub = _as_submission(ref)
    for c in sub:
        if c["meta"].get("solution"):
            c["meta"].update(grade=True, points=1000)
    sub.append({"cell_type": "code", "source": "x = 1", "meta": {"grade": True, "grade_id": "bonus", "points": 50}})
    run, flags = assemble(ref, sub)
    kinds = {f.split(":")[0] for f in flags}
    assert {"metadata_changed", "unknown_grade_id", "extra_cells"} <= kinds
    assert sum(c.get("points", 0) for c in run if c["kind"] == "test") == 14


def test_reference_calls_are_flagged(ref) -> None:
    sub = _as_submission(ref)
    for c in sub:
        if c["meta"].get("grade_id") == "ch01_central_difference_solution":
            c["source"] = "def central_difference(f, x, h=1e-5):\n    return autograd.derivative(f, x)\n"
    run, _ = assemble(ref, sub)
    assert reference_calls(ref, run) == ["calls_reference: ch01_central_difference_solution uses autograd.derivative"]


def test_invalid_and_renamed_notebooks(tmp_path, ref) -> None:
    nb = nbformat.read(NB, as_version=4)
    (tmp_path / "Untitled (1).ipynb").write_text(nbformat.writes(nb))
    (tmp_path / "other.ipynb").write_text("{not json")
    with pytest.raises(ValueError, match="invalid JSON"):
        load_submission(tmp_path / "other.ipynb")
    ids = {NB.name: {c["grade_id"] for c in ref if c["grade_id"]}}
    found = match_notebooks([NB.name], ids, tmp_path)
    assert found[NB.name][0].name == "Untitled (1).ipynb" and found[NB.name][2] is None


def test_discover_folder_and_lms_zip(tmp_path) -> None:
    (tmp_path / "tree" / "alice" / "01_backprop").mkdir(parents=True)
    (tmp_path / "tree" / "alice" / "01_backprop" / "a.ipynb").write_text("{}")
    (tmp_path / "tree" / "bob").mkdir()
    (tmp_path / "tree" / "bob" / "a.ipynb").write_text("{}")
    students, problems = discover(tmp_path / "tree", "01_backprop", tmp_path / "s1")
    assert sorted(students) == ["alice", "bob"] and problems == []
    archive = tmp_path / "lms.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("carol_123_a.ipynb", json.dumps({"cells": []}))
        zf.writestr("dave_9_a.ipynb", "{}")
        zf.writestr("../evil.ipynb", "{}")
        zf.writestr("noid.ipynb", "{}")
    students, problems = discover(archive, "01_backprop", tmp_path / "s2")
    assert sorted(students) == ["carol", "dave"]
    assert (students["carol"] / "123_a.ipynb").exists()
    assert not (tmp_path / "evil.ipynb").exists() and len(problems) == 1


def test_outputs_are_capped_in_bytes() -> None:
    out = _Outputs(cap=100)
    out.add_text("stdout", "é" * 80)  # 160 bytes
    out.add_text("stdout", "more")
    out.add_data("display_data", {"data": {"text/plain": "x" * 500}})
    items = out.finish()
    assert len(items[0]["text"].encode()) <= 100
    assert "more bytes of output not kept" in items[-1]["text"]


def test_sandbox_parents_are_world_readable() -> None:
    assert dirs_with_parents(__import__("pathlib").Path("/a/b/c")) == [
        "--perms", "0755", "--dir", "/a", "--perms", "0755", "--dir", "/a/b"]
    assert Limits().memory_bytes == 4 << 30


def test_grade_command_rejects_unknown_chapter(tmp_path, capsys) -> None:
    assert main(["--course-dir", str(tmp_path / "c"), "grade", "99_nope", str(tmp_path)]) == 2
    assert "unknown chapter '99_nope'" in capsys.readouterr().err


def test_feedback_page_escapes_learner_code_and_sanitises_outputs(tmp_path) -> None:
    cells = [{"kind": "markdown", "source": "# Exercise"},
             {"kind": "solution", "source": "x = '<script>alert(1)</script>'  # </div><img src=q onerror=alert(2)>"},
             {"kind": "test", "source": "assert x\n### BEGIN HIDDEN TESTS\nsecret_check()\n### END HIDDEN TESTS"}]
    results = [None,
               {"outputs": [{"output_type": "display_data", "metadata": {},
                             "data": {"text/html": "<b>bold</b><script>steal()</script>", "text/plain": "b"}}]},
               {"outputs": [{"output_type": "error", "ename": "AssertionError", "evalue": "wrong",
                             "traceback": ["long traceback with secret_check() context"]}]}]
    report = {"notebook": "nb.ipynb", "points": 0, "max_points": 2,
              "exercises": [{"grade_id": "ex1", "points": 0, "max_points": 2, "status": "failed", "error": "wrong"}]}
    page = tmp_path / "nb.html"
    write_feedback_html(cells, results, report, page)
    html = page.read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<img src=q" not in html
    assert "<b>bold</b>" in html and "steal()</script>" not in html
    assert "secret_check" not in html and "AssertionError: wrong" in html
    assert "0 / 2" in html


def test_arrays_cross_as_checked_text() -> None:
    """The judge and the kernel send arrays as "DTYPE:SHAPE:BASE64"; anything else is refused, nothing unpickled."""
    import numpy as np

    from autograder.grading.agent import ProtocolError, array_to_b64, b64_to_array

    for array in (np.random.default_rng(0).random((3, 4)), np.arange(5, dtype=np.int8), np.array(3.5),
                  np.zeros((0, 3)), np.array([True, False]), np.array(["ab", "c"]), np.arange(20.0).reshape(4, 5).T,
                  np.array([1 + 2j], dtype=np.complex64), np.zeros(3, dtype=">f4"), np.float16(2.5)):
        back = b64_to_array(array_to_b64(array))
        assert back.dtype == np.asarray(array).dtype and back.shape == np.shape(array)
        assert (back == array).all() and back.flags.writeable
    with pytest.raises(TypeError, match="dtype object"):
        array_to_b64(np.array([object()]))
    pickled = "gANjYnVpbHRpbnMKZXZhbApx"  # a pickle of builtins.eval, as a hostile kernel might send it
    for bad, why in [(pickled, "dtype"), ("|O8::AAAA", "dtype"), ("<V8::AAAAAAAAAAA=", "dtype"),
                     ("<f8:2:AAAA", "in 3 bytes"), ("<f8:-1:", "shape"), ("<f8:1:!!!!", "not base64"),
                     ("<f8:" + ",".join(["1"] * 33) + ":", "shape"), (5, "not text")]:
        with pytest.raises(ProtocolError, match=why):
            b64_to_array(bad)
