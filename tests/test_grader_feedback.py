"""Hostile outputs against the output caps and the feedback page: sizes bounded, no script, nothing unquoted."""

from __future__ import annotations

import json
import re

import nbformat
import pytest

from autograder.grading.feedback import write_feedback_html
from autograder.grading.outputs import Outputs

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
PAGE_CAP = 2 << 20  # bytes of a feedback page (feedback.PAGE_CAP)
NOTE_BYTES = 200  # the "[grader: N more bytes of output not kept ...]" note finish() may add after the cap
HUGE = 17_000_000
DOUBLE = "def double(x):\n    return 2 * x"


def _stored(items: list[dict]) -> int:
    return sum(len(json.dumps(o)) for o in items)


def _report(error: str | None = None) -> dict:
    return {"notebook": "nb.ipynb", "points": 0, "max_points": 1,
            "exercises": [{"grade_id": "ex1", "points": 0, "max_points": 1, "status": "failed", "error": error}]}


def _handlers(page: str) -> list[str]:
    """Event handler attributes in any tag (``<img ... onerror=``)."""
    return re.findall(r"<[^>]*[\s\"'/]on[a-z]+\s*=", page, re.IGNORECASE)


def _body(page: str) -> str:
    """The page after its styles (the lab CSS has words such as ``.validationErrors``)."""
    return page[page.index("<body"):].lower()


def _page(tmp_path, outputs: list[dict], source: str = "show()", kind: str = "solution", cells=None) -> str:
    cells = cells or [{"kind": kind, "source": source}]
    results = [{"outputs": outputs} for _ in cells]
    path = tmp_path / "feedback" / "nb.html"
    write_feedback_html(cells, results, _report(), path)
    return path.read_bytes().decode("utf-8")


# --- Outputs: every byte of every message counts against the cell's cap ----------------------------

def test_a_huge_error_is_cut_to_the_cap() -> None:
    out = Outputs(cap=64 << 10)
    out.add_error("E" * HUGE, "v" * HUGE, ["frame\n" * 1000] * (HUGE // 6000) + ["the last line"])
    items = out.finish()
    assert _stored(items) <= (64 << 10) + NOTE_BYTES
    error = items[0]
    assert error["output_type"] == "error" and len(error["ename"]) <= 200 and len(error["evalue"]) <= 2000
    assert error["traceback"][0].endswith("the last line")  # a traceback keeps its end
    assert "more bytes of output not kept" in items[-1]["text"]
    assert int(re.search(r"(\d+) more bytes", items[-1]["text"]).group(1)) > 2 * HUGE


def test_errors_after_the_cap_are_dropped_not_stored() -> None:
    out = Outputs(cap=1000)
    for _ in range(1000):
        out.add_error("ValueError", "x" * 500, ["tb " * 300])
    out.finish()  # the judge collects the kernel's outputs, then adds its verdict's error
    out.add_error("AssertionError", "wrong", ["AssertionError: wrong"])
    items = out.finish()
    assert _stored(items) <= 1000 + NOTE_BYTES and len(items) <= 3
    assert sum("more bytes of output not kept" in o.get("text", "") for o in items) == 1


def test_display_metadata_and_structure_count_against_the_cap() -> None:
    out = Outputs(cap=10_000)
    out.add_data("display_data", {"data": {"text/plain": "x"}, "metadata": {"junk": "m" * HUGE}})
    out.add_data("execute_result", {"data": {"text/plain": "y"}, "metadata": {"k" * HUGE: 1},
                                    "execution_count": "<script>" * 1000})
    for i in range(20_000):  # one byte at a time, alternating streams: each write is a new output
        out.add_text("stderr" if i % 2 else "stdout", "z")
    out.add_text("n" * HUGE, "a stream's name is no free channel")
    items = out.finish()
    assert _stored(items) <= 10_000 + NOTE_BYTES
    assert out.used == _stored(items[:-1]) <= 10_000
    assert all(o.get("name", "stdout") in ("stdout", "stderr") for o in items)


def test_cleared_output_no_longer_counts() -> None:
    out = Outputs(cap=1000)
    for step in range(100):  # a progress bar: clear, redraw
        out.clear()
        out.add_text("stdout", f"step {step} " + "#" * 500)
    assert out.finish() == [{"output_type": "stream", "name": "stdout", "text": "step 99 " + "#" * 500}]


# --- feedback pages ---------------------------------------------------------------------------------

def test_image_metadata_cannot_add_attributes(tmp_path) -> None:
    outputs = [{"output_type": "display_data", "data": {"image/png": PNG, "text/plain": "a"},
                "metadata": {"image/png": {"width": "1 onerror=alert(1)", "height": '100" onload="alert(2)'}}},
               {"output_type": "display_data", "data": {"image/jpeg": PNG, "text/plain": "b"},
                "metadata": {"width": "2 onerror=alert(3)"}},
               {"output_type": "display_data", "data": {"image/png": PNG, "text/plain": "c"},
                "metadata": {"image/png": {"width": 321, "height": True, "unconfined": "<x>"}}},
               {"output_type": "display_data", "data": {"image/png": '" onerror="alert(4)', "text/plain": "d"},
                "metadata": {}}]
    page = _page(tmp_path, outputs)
    assert not _handlers(page) and "onerror" not in _body(page) and "onload" not in _body(page)
    assert "alert(" not in page
    imgs = re.findall(r"<img\b[^>]*>", page)
    assert len(imgs) == 3 and re.search(r'\bwidth="?321\b', page)  # an integer width is kept
    assert not re.search(r"height=", " ".join(imgs))  # a bool is no height


def test_malformed_metadata_does_not_lose_the_page(tmp_path) -> None:
    outputs = [{"output_type": "display_data", "data": {"image/png": PNG, "text/plain": "a"},
                "metadata": {"image/png": "not a dict", "width": 120}},
               {"output_type": "display_data", "data": {"text/plain": ["li", "nes"]}, "metadata": ["no", "dict"]},
               {"output_type": "stream", "name": "stdout", "text": "lone \ud800 surrogate"}, "not an output"]
    page = _page(tmp_path, outputs)
    assert re.search(r'\bwidth="?120\b', page) and "lines" in page and "surrogate" in page


def test_scripts_and_unknown_types_never_reach_the_page(tmp_path) -> None:
    outputs = [{"output_type": "display_data", "metadata": {},
                "data": {"text/html": "<b>kept</b><script>alert(1)</script><img src=x onerror=alert(2)>"
                                      "<a href='javascript:alert(3)'>a</a><iframe src=//evil></iframe>"}},
               {"output_type": "display_data", "metadata": {},
                "data": {"application/javascript": "alert(4)", "text/plain": "<Javascript object>"}},
               {"output_type": "display_data", "metadata": {},
                "data": {"text/vnd.mermaid": "<img src=x onerror=alert(5)>", "text/plain": "mermaid"}},
               {"output_type": "display_data", "metadata": {},
                "data": {"image/svg+xml": "<svg onload=alert(6)><script>alert(7)</script></svg>"}},
               {"output_type": "display_data", "metadata": {},
                "data": {"application/vnd.jupyter.widget-view+json": {"model_id": "</script><script>alert(8)"}}},
               {"output_type": "display_data", "metadata": {},
                "data": {"text/markdown": "**md** <script>x()</script>"}},
               {"output_type": "stream", "name": "<script>", "text": "<script>alert(9)</script>"}]
    page = _page(tmp_path, outputs)
    lower = page.lower()
    assert "<script" not in lower and "<iframe" not in lower and "<svg" not in lower
    assert not _handlers(page) and "onerror" not in re.sub(r"&lt;.*?&gt;", "", _body(page))  # escaped text only
    assert "javascript:" not in lower and "alert(8)" not in lower
    assert "<b>kept</b>" in page and "<strong>md</strong>" in page
    assert "&lt;Javascript object&gt;" in page and "image/svg+xml is not shown" in page


def test_every_page_has_a_content_security_policy_first(tmp_path) -> None:
    page = _page(tmp_path, [{"output_type": "stream", "name": "stdout", "text": "hi"}])
    head = re.search(r"<head>\s*(<meta[^>]*>)", page)
    assert head and 'http-equiv="Content-Security-Policy"' in head.group(1)
    content = re.search(r'content="([^"]*)"', head.group(1)).group(1)
    policy = dict(d.strip().split(" ", 1) for d in content.split(";"))
    assert policy["default-src"] == "'none'" and policy["script-src"] == "'none'"
    assert policy["img-src"] == "data:" and "unsafe-eval" not in content and "http" not in content
    assert "<script" not in page  # no require.js, MathJax or mermaid either


def test_page_size_is_capped_by_dropping_the_largest_outputs(tmp_path) -> None:
    outputs = [{"output_type": "stream", "name": "stdout", "text": "small output kept\n"},
               {"output_type": "error", "ename": "E", "evalue": "v", "traceback": ["<" * 600_000]},
               {"output_type": "display_data", "metadata": {}, "data": {"text/plain": "x" * 2_500_000}}]
    page = _page(tmp_path, outputs)
    assert len(page.encode()) <= PAGE_CAP and page.rstrip().endswith("</html>")
    assert "small output kept" in page and "is not shown here" in page
    assert f"a feedback page is limited to {PAGE_CAP >> 20} MiB" in page and "Some outputs or long cells" in page


def test_huge_sources_are_shortened_not_truncated_html(tmp_path) -> None:
    cells = [{"kind": "solution", "source": "x = 1\n" * 60_000}, {"kind": "markdown", "source": "# end"}]
    page = _page(tmp_path, [], cells=cells)
    assert len(page.encode()) <= PAGE_CAP and page.rstrip().endswith("</html>")
    assert "more characters not shown" in page


def test_a_hostile_cell_through_outputs_and_feedback_stays_small(tmp_path) -> None:
    out = Outputs(cap=64 << 10)
    out.add_text("stdout", "\ud800 lone surrogate\n")
    out.add_data("display_data", {"data": {"image/png": PNG}, "metadata": {"image/png": {"width": "w" * HUGE}}})
    out.add_error("E" * HUGE, "\x1b[31m" * (HUGE // 5), ["\x1b[31m<" * (HUGE // 6)])
    page = _page(tmp_path, out.finish())
    assert len(page.encode()) < 1_000_000 and "more bytes of output not kept" in page


@pytest.mark.slow
def test_hostile_submission_end_to_end(tmp_path) -> None:
    """A real kernel sends the hostile outputs: the report and the feedback page stay small and inert."""
    from autograder.grade import Settings, grade_notebook, match_notebooks, reference_cells
    from autograder.grading.sandbox import Limits

    def notebook(answer: str, extra: str | None = None) -> nbformat.NotebookNode:
        nb = nbformat.v4.new_notebook()
        sol = nbformat.v4.new_code_cell(answer)
        sol.metadata["nbgrader"] = {"grade": False, "grade_id": "t_sol", "locked": False, "schema_version": 3,
                                    "solution": True, "task": False}
        check = nbformat.v4.new_code_cell("assert double(2) == 4")
        check.metadata["nbgrader"] = {"grade": True, "grade_id": "t_check", "locked": True, "points": 1,
                                      "schema_version": 3, "solution": False, "task": False}
        nb.cells = [sol, *([nbformat.v4.new_code_cell(extra)] if extra else []), check]
        return nb

    ref_path = tmp_path / "ref" / "t.ipynb"
    ref_path.parent.mkdir()
    nbformat.write(notebook(DOUBLE), ref_path)
    hostile = ("from IPython.display import display\n"
               f"display({{'image/png': {PNG!r}, 'text/plain': 'img'}}, raw=True,\n"
               "        metadata={'image/png': {'width': '1 on' + 'error=alert(1)'}})\n"  # split: the source is shown
               "display({'text/plain': 'meta'}, raw=True, metadata={'junk': 'm' * 3_000_000})\n"
               "display({'application/javascript': 'ale' + 'rt(2)'}, raw=True)\n"
               "raise type('E' * 5000, (Exception,), {})('v' * 3_000_000)")
    folder = tmp_path / "mallory"
    folder.mkdir()
    nbformat.write(notebook(DOUBLE, hostile), folder / "t.ipynb")
    found = match_notebooks(["t.ipynb"], {"t.ipynb": {"t_sol", "t_check"}}, folder)
    settings = Settings(cell_timeout=60, use_bwrap=False, limits=Limits(memory_bytes=2 << 30))
    page_path = tmp_path / "feedback" / "t.html"
    report = grade_notebook("t.ipynb", reference_cells(ref_path), found["t.ipynb"], folder, settings, page_path)
    assert report["points"] == 1, json.dumps(report)[:3000]
    assert report["cells"][0]["status"] == "error" and len(report["cells"][0]["error"]) <= 2202  # ename cut too
    page = page_path.read_text()
    assert len(page) < 700_000 and "more bytes of output not kept" in page
    assert not _handlers(page) and "onerror" not in _body(page) and "<script" not in page and "alert(2)" not in page
