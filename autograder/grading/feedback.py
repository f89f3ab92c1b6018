"""Feedback pages: the graded notebook as HTML, hidden tests removed, outputs sanitised, size capped.

Learner outputs are hostile: only known output types and mime types are kept, images only with an
integer width and height (see :func:`_safe_output`), HTML and markdown go through a bleach sanitiser
(:func:`_clean_html`), the page forbids every script by its Content-Security-Policy (in
``templates/feedback.html.j2``), and a page never exceeds ``PAGE_CAP`` bytes: the largest outputs are
replaced by a note until it fits, then long cells are shortened (:func:`_fit_page`); the HTML itself is
never cut.
"""

from __future__ import annotations

import re
from pathlib import Path

from .notebook import visible_source

FEEDBACK_TEMPLATE = Path(__file__).parent.parent / "templates" / "feedback.html.j2"
PAGE_CAP = 2 << 20  # bytes of one feedback page
SOURCE_CHARS = (50_000, 10_000, 2_000)  # characters of a cell's source: always, then if dropping outputs did not do
SOURCE_TOTAL = 400_000  # characters of all sources (the longest chapter has 52,000)
TEXT_TYPES = ("text/plain", "text/html", "text/markdown")  # html and markdown: sanitised by the template
IMAGE_TYPES = ("image/png", "image/jpeg")  # written as data: URIs; svg is dropped (it can carry script)
_BASE64 = re.compile(r"[A-Za-z0-9+/=\s]*")
_IMAGE_SIDE = 10_000  # the largest width or height kept for an image, in pixels
# What rendered markdown and a learner's HTML may keep (nbconvert's own list escapes headings, paragraphs,
# table heads, so markdown showed as tags); no style but table alignment, no image, no form, no script.
_TAGS = frozenset({"a", "abbr", "acronym", "b", "blockquote", "br", "code", "dd", "del", "div", "dl", "dt", "em",
                   "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "ins", "kbd", "li", "ol", "p", "pre", "q", "s",
                   "samp", "small", "span", "strong", "sub", "sup", "table", "tbody", "td", "tfoot", "th",
                   "thead", "tr", "u", "ul"})
_ATTRIBUTES = {"*": ["class", "id", "title"], "a": ["href"], "th": ["style", "colspan", "rowspan"],
               "td": ["style", "colspan", "rowspan"]}
_EXPORTER = _CLEANER = None


def _text(value) -> str | None:
    """A string field of an output (nbformat allows a list of lines); None if it is anything else."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "".join(value)
    return None


def _side(value) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 < value <= _IMAGE_SIDE
    return value if ok else None


def _safe_data(out: dict) -> tuple[dict, dict]:
    """The data of known safe mime types, and for images only their integer width and height."""
    data = out.get("data") if isinstance(out.get("data"), dict) else {}
    metadata = out.get("metadata") if isinstance(out.get("metadata"), dict) else {}
    kept, meta, dropped = {}, {}, []
    for mime, value in data.items():
        text = _text(value) if mime in TEXT_TYPES + IMAGE_TYPES else None
        if text is None or (mime in IMAGE_TYPES and not _BASE64.fullmatch(text)):
            dropped.append(str(mime)[:60])
            continue
        kept[mime] = text
        if mime in IMAGE_TYPES:  # nbformat keeps them per mime type; IPython's Image puts them there
            own = metadata.get(mime) if isinstance(metadata.get(mime), dict) else {}
            sides = {k: _side(own.get(k)) or _side(metadata.get(k)) for k in ("width", "height")}
            if any(sides.values()):
                meta[mime] = {k: v for k, v in sides.items() if v}
    if dropped and not kept:  # else what is kept stands in (a widget's or a Javascript object's text/plain)
        shown = ", ".join(sorted(dropped)[:5]) + (", ..." if len(dropped) > 5 else "")
        kept = {"text/plain": f"[grader: output of type {shown} is not shown in feedback]"}
    return kept, meta


def _safe_output(out, test_cell: bool) -> dict | None:
    """``out`` rebuilt from what the feedback shows: nothing of it is copied unchecked."""
    if not isinstance(out, dict):
        return None
    kind = out.get("output_type")
    if kind == "stream":
        return {"output_type": "stream", "name": "stderr" if out.get("name") == "stderr" else "stdout",
                "text": _text(out.get("text")) or ""}
    if kind == "error":
        ename, evalue = _text(out.get("ename")) or "", _text(out.get("evalue")) or ""
        tb = out.get("traceback") if isinstance(out.get("traceback"), list) else []
        tb = [f"{ename}: {evalue}"] if test_cell else [line for line in tb if isinstance(line, str)]
        return {"output_type": "error", "ename": ename, "evalue": evalue, "traceback": tb}
    if kind in ("display_data", "execute_result"):
        data, metadata = _safe_data(out)
        safe = {"output_type": kind, "data": data, "metadata": metadata}
        if kind == "execute_result":
            safe["execution_count"] = None
        return safe
    return None


def _clean_html(element) -> str:
    """nbconvert's ``clean_html`` filter with the tags markdown needs (bleach: unknown tags are escaped)."""
    global _CLEANER
    if _CLEANER is None:
        from bleach.css_sanitizer import CSSSanitizer
        from bleach.sanitizer import Cleaner

        _CLEANER = Cleaner(tags=_TAGS, attributes=_ATTRIBUTES, protocols={"http", "https", "mailto"},
                           css_sanitizer=CSSSanitizer(allowed_css_properties=["text-align"]))
    return _CLEANER.clean(element.decode() if isinstance(element, bytes) else str(element))


def _literal(text: str) -> str:
    """``text`` as literal markdown on one line (an error message in the scores table)."""
    return re.sub(r"([\\`*_{}\[\]()<>#+\-.!|~&:/$])", r"\\\1", " ".join(text.split()))


def _note(text: str) -> dict:
    return {"output_type": "stream", "name": "stderr", "text": f"[grader: {text}]\n"}


def _exporter():
    from nbconvert import HTMLExporter
    from nbconvert.exporters.templateexporter import TemplateExporter
    from nbconvert.filters.highlight import Highlight2HTML
    from nbconvert.filters.widgetsdatatypefilter import WidgetsDataTypeFilter

    class FeedbackExporter(HTMLExporter):
        """The lab template without HTMLExporter's last pass, which re-parses the whole page (its CSS too)
        with BeautifulSoup only to add ``alt`` to images and ``tabindex`` to inputs and outputs (keyboard
        scrolling): half of the rendering time. Both are added here by pattern instead."""

        def from_notebook_node(self, nb, resources=None, **kw):
            self.register_filter("highlight_code", Highlight2HTML(pygments_lexer="ipython3", parent=self))
            resources = self._init_resources(resources)
            self.register_filter("filter_data_type", WidgetsDataTypeFilter(
                notebook_metadata=self._nb_metadata, parent=self, resources=resources))
            html, resources = TemplateExporter.from_notebook_node(self, nb, resources, **kw)
            html = _IMG_WITHOUT_ALT.sub('<img alt="an output of the notebook"', html)
            return _FOCUSABLE.sub(r'\1 tabindex="0"', html), resources

    # sanitize_html: a learner's HTML output must not run JavaScript in the instructor's browser
    return FeedbackExporter(template_name="lab", template_file=str(FEEDBACK_TEMPLATE), sanitize_html=True,
                            filters={"clean_html": _clean_html})


_IMG_WITHOUT_ALT = re.compile(r"<img(?![^>]*\balt=)", re.IGNORECASE)
_FOCUSABLE = re.compile(r'(<div class="[^"]*\bjp-(?:Cell-inputWrapper|OutputArea-output)\b[^"]*")')


def _render(nb) -> bytes:
    global _EXPORTER
    if _EXPORTER is None:  # one per worker process: loading the templates takes a while
        _EXPORTER = _exporter()
    body, _ = _EXPORTER.from_notebook_node(nb)
    return body.encode("utf-8", "replace")  # lone surrogates from a learner's output


def _cut(cell, chars: int) -> None:
    if len(cell.source) > chars:
        more = f"[grader: {len(cell.source) - chars} more characters not shown]"
        cell.source = cell.source[:chars] + (f"\n# {more}" if cell.cell_type == "code" else f"\n\n{more}")


def _shown_size(out) -> int:
    """About the bytes ``out`` takes in the page: its text as the template writes it, plus the wrapping."""
    from nbconvert.filters.ansi import ansi2html
    from nbconvert.filters.markdown import markdown2html

    kind, data = out.get("output_type"), out.get("data", {})
    if kind == "stream":
        shown = ansi2html(out["text"])
    elif kind == "error":
        shown = "\n".join(map(ansi2html, out["traceback"]))
    elif "text/html" in data:
        shown = _clean_html(data["text/html"])
    elif "text/markdown" in data:
        shown = _clean_html(markdown2html(data["text/markdown"]))
    else:
        shown = data.get("image/png") or data.get("image/jpeg") or ansi2html(data.get("text/plain", ""))
    return len(shown.encode("utf-8", "replace")) + 400


def _fit_page(nb, head) -> bytes:
    """Render ``nb``; while over PAGE_CAP drop the largest outputs, then shorten sources, then show scores only."""
    import nbformat

    budget = SOURCE_TOTAL  # before any rendering: highlighting a huge source takes minutes
    for cell in nb.cells[1:]:
        _cut(cell, max(min(SOURCE_CHARS[0], budget), 0))
        budget -= len(cell.source)
    body = _render(nb)
    if len(body) <= PAGE_CAP:
        return body
    head.source += ("\n\n**Some outputs or long cells are not shown: a feedback page is limited to "
                    f"{PAGE_CAP >> 20} MiB.**\n")
    outs = sorted(((_shown_size(o), c, i) for c, cell in enumerate(nb.cells) if cell.cell_type == "code"
                   for i, o in enumerate(cell.outputs)), reverse=True)
    for _ in range(4):  # the sizes are estimates: check, drop more if need be
        excess = len(body) - PAGE_CAP + PAGE_CAP // 32
        while outs and excess > 0:
            size, c, i = outs.pop(0)
            nb.cells[c].outputs[i] = nbformat.from_dict(_note(f"an output of about {size} bytes is not shown here"))
            excess -= size
        body = _render(nb)
        if len(body) <= PAGE_CAP or not outs:
            break
    for chars in SOURCE_CHARS[1:]:
        if len(body) <= PAGE_CAP:
            return body
        for cell in nb.cells[1:]:
            _cut(cell, chars)
        body = _render(nb)
    if len(body) > PAGE_CAP:  # only the scores are left
        nb.cells = [head, nbformat.v4.new_markdown_cell("[grader: the notebook is too large to show here]")]
        body = _render(nb)
    return body


def write_feedback_html(cells: list[dict], results: list, report: dict, path: Path) -> None:
    """Write the graded notebook as HTML: hidden tests removed, test tracebacks reduced to their message."""
    import nbformat

    rows = "\n".join(f"| {e['grade_id']} | {e['points']:g} / {e['max_points']:g} | {e['status']} | "
                     f"{_literal((e['error'] or '')[:300])} |"
                     for e in report["exercises"])
    head = (f"# Feedback: {report['notebook']}\n\nScore: **{report['points']:g} / {report['max_points']:g}**\n\n"
            f"| exercise | points | status | message |\n| --- | --- | --- | --- |\n{rows}\n")
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_markdown_cell(head))
    for cell, res in zip(cells, results, strict=False):
        if cell["kind"] == "markdown":
            nb.cells.append(nbformat.v4.new_markdown_cell(cell["source"]))
            continue
        source = visible_source(cell["source"]) if cell["kind"] == "test" else cell["source"]
        outputs = [_safe_output(out, cell["kind"] == "test") for out in (res or {}).get("outputs", [])]
        code = nbformat.v4.new_code_cell(source)
        code.outputs = [nbformat.from_dict(out) for out in outputs if out is not None]
        nb.cells.append(code)
    body = _fit_page(nb, nb.cells[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
