"""Feedback pages: the graded notebook as HTML, hidden tests removed, outputs sanitised."""

from __future__ import annotations

from pathlib import Path

from .notebook import visible_source

FEEDBACK_TEMPLATE = Path(__file__).parent.parent / "templates" / "feedback.html.j2"
_EXPORTER = None


def _feedback_html(cells: list[dict], results: list, report: dict, path: Path) -> None:
    """Write the graded notebook as HTML: hidden tests removed, test tracebacks reduced to their message."""
    import nbformat
    from nbconvert import HTMLExporter

    rows = "\n".join(f"| {e['grade_id']} | {e['points']:g} / {e['max_points']:g} | {e['status']} | "
                     f"{(e['error'] or '').replace('|', '/')[:300]} |" for e in report["exercises"])
    head = (f"# Feedback: {report['notebook']}\n\nScore: **{report['points']:g} / {report['max_points']:g}**\n\n"
            f"| exercise | points | status | message |\n| --- | --- | --- | --- |\n{rows}\n")
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_markdown_cell(head))
    for cell, res in zip(cells, results, strict=False):
        if cell["kind"] == "markdown":
            nb.cells.append(nbformat.v4.new_markdown_cell(cell["source"]))
            continue
        source = visible_source(cell["source"]) if cell["kind"] == "test" else cell["source"]
        outputs = []
        for out in (res or {}).get("outputs", []):
            if out["output_type"] == "error" and cell["kind"] == "test":
                out = {**out, "traceback": [f"{out['ename']}: {out['evalue']}"]}
            outputs.append(nbformat.from_dict(out))
        code = nbformat.v4.new_code_cell(source)
        code.outputs = outputs
        nb.cells.append(code)
    global _EXPORTER
    if _EXPORTER is None:  # one per worker process: loading the templates takes a while
        # sanitize_html: a learner's HTML output must not run JavaScript in the instructor's browser
        _EXPORTER = HTMLExporter(template_name="lab", template_file=str(FEEDBACK_TEMPLATE),
                                 sanitize_html=True)
    body, _ = _EXPORTER.from_notebook_node(nb)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)


