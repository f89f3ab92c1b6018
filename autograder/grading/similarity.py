"""Similarity of learners' answers: every pair of learners, ranked, with the matching regions side by side.

``python -m autograder similarity CHAPTER SUBMISSIONS`` reads the submissions as ``grade`` does (a folder,
an nbgrader ``submitted/`` tree or an LMS zip, through :mod:`.intake`), and writes ``report.html`` (the
pairs at or above the threshold, ranked, each with both learners' code side by side and the matching
regions marked) and ``pairs.csv`` (every pair that shares anything) to ``build/similarity/CHAPTER/``.

What is compared, per notebook of the chapter: the learner's own code only.

- The learner's solution cells (found by their nbgrader grade_id, as :func:`.notebook.assemble` finds
  them) and the code cells the learner added (``extra``: an answer pasted into a new cell still counts).
  Test cells, setup cells, markdown and outputs are never compared.
- Template code never counts: every line that the release itself contains (the student version of the
  source notebook, made here with nbgrader's own ``ClearSolutions``, as ``release`` makes it) is removed
  from the learner's code before comparing, whitespace ignored: from a solution cell, the lines of that
  cell in the release (its signature, docstring, stub); from a cell the learner added, the lines of any
  code cell of the release. Two learners who only hold the release
  template have no code left: they score 0 and are not reported. The release's solution templates are
  also given to the detector as boilerplate, so a reformatted template line does not count either.
- Normalised: Pygments tokens, with every name (variables, attributes, functions, classes) replaced by
  one letter, every string literal by another, comments and whitespace dropped. Renaming variables,
  rewording comments and reformatting change nothing.

Score: MOSS's winnowing (k-grams of normalised tokens, fingerprinted) gives, for each learner of a
pair, the share of that learner's code that is also in the other's. A pair's score is the larger of
the two (a learner who copied one other's answer scores high even if the other wrote more), as MOSS
and copydetect rank pairs; both shares and the learners' code sizes are in the report. A score is
evidence to look at, never a verdict: short, tightly templated answers converge, so read the code.

Library: ``copydetect`` (PyPI, MIT; MOSS-style winnowing on Pygments tokens, pure Python with numpy),
used for tokenising, name normalisation, fingerprints, boilerplate removal and the matched slices;
this module does the notebook part (which cells, template lines out) and the report. Considered:
MOSS itself (a web service: submissions would leave the host, and it needs an account), JPlag (Java,
a separate runtime to install), ``pycode_similar`` (AST-based, per function, no matched regions to
show), and a hand-written AST comparison (more code to maintain for what copydetect already does).
copydetect installs offline from the local index, imports nothing outside this environment, and takes
code as strings (``fp=``), so nothing is written to disk for it.
"""

from __future__ import annotations

import csv
import html
import io
import itertools
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .intake import discover, match_notebooks
from .notebook import assemble, reference_cells

# nbgrader's stub for a cleared code solution, as autograder/config.py configures ClearSolutions.
CODE_STUB = "# YOUR CODE HERE\nraise NotImplementedError()"
NOISE = 25  # k: matches shorter than this many normalised characters are noise (copydetect's default)
GUARANTEE = 30  # every match at least this long is found (winnowing window = GUARANTEE - NOISE + 1)
THRESHOLD = 0.5  # pairs at or above this score are shown in report.html (pairs.csv has every pair)
MAX_SHOWN = 200  # report.html shows at most this many pairs


@dataclass
class LearnerCode:
    """One learner's own code in one notebook: what is compared (template lines removed)."""

    student: str
    notebook: str
    code: str


@dataclass
class Pair:
    """Two learners' code in one notebook: ``score`` (the larger share) and what matched."""

    notebook: str
    student_a: str
    student_b: str
    score: float
    share_a: float  # of a's code, the share also in b's
    share_b: float
    matched: int  # normalised characters of a's code that match b's
    size_a: int  # normalised characters of each learner's code
    size_b: int
    code_a: str = field(default="", repr=False)  # what was compared (template lines removed)
    code_b: str = field(default="", repr=False)
    slices_a: list[tuple[int, int]] = field(default_factory=list, repr=False)  # matching regions of code_a
    slices_b: list[tuple[int, int]] = field(default_factory=list, repr=False)

    @property
    def html_a(self) -> str:
        """a's code, HTML-escaped, the regions that match b's in ``<mark>``."""
        return _marked(self.code_a, self.slices_a)

    @property
    def html_b(self) -> str:
        return _marked(self.code_b, self.slices_b)


@dataclass
class SimilarityReport:
    chapter: str
    pairs: list[Pair]  # every pair that shares anything, highest score first
    learners: dict[str, list[str]]  # {notebook: students whose code was compared}
    problems: list[str]
    threshold: float
    html: Path | None = None
    csv: Path | None = None
    empty: dict[str, list[str]] = field(default_factory=dict)  # {notebook: students with no code of their own}

    @property
    def reported(self) -> list[Pair]:
        return [p for p in self.pairs if p.score >= self.threshold]

    def summary(self) -> str:
        lines = [f"similarity of {self.chapter}: {sum(len(s) for s in self.learners.values())} notebooks compared, "
                 f"{len(self.pairs)} pairs share code, {len(self.reported)} at or above {self.threshold:g}"]
        for p in self.reported[:10]:
            lines.append(f"  {p.score:5.2f}  {p.notebook}: {p.student_a} / {p.student_b}  "
                         f"({p.share_a:.0%} / {p.share_b:.0%})")
        lines += [f"note: {p}" for p in self.problems]
        if self.html:
            lines.append(f"report: {self.html}\npairs: {self.csv}")
        return "\n".join(lines)


# --- what is compared ------------------------------------------------------------------------------

def release_notebook(source: Path | bytes):
    """Return the student version of a source notebook (an ``nbformat`` notebook), as ``release`` makes it.

    nbgrader's own ``ClearSolutions`` with the course's stub: the template code the release hands out.
    """
    import nbformat
    from nbgrader.preprocessors import ClearSolutions

    raw = source if isinstance(source, bytes) else Path(source).read_bytes()
    nb = nbformat.reads(raw.decode("utf-8"), as_version=4)
    nb, _ = ClearSolutions(code_stub={"python": CODE_STUB}).preprocess(nb, {"language": "python"})
    return nb


def release_cells(source: Path | bytes) -> list[dict]:
    """Return the student version of a source notebook's cells, in :func:`.notebook.reference_cells` form."""
    import nbformat

    return reference_cells(nbformat.writes(release_notebook(source)).encode("utf-8"))


def _line_key(line: str) -> str:
    return "".join(line.split())


def template_lines(release: list[dict]) -> dict[str | None, set[str]]:
    """The release's code lines (whitespace removed): ``{solution grade_id: its lines}``, and under ``None``
    the lines of every code cell (for the cells a learner added). A learner's line among them never counts."""
    lines: dict[str | None, set[str]] = {None: set()}
    for c in release:
        if c["kind"] == "markdown":
            continue
        keys = {k for line in c["source"].splitlines() if (k := _line_key(line))}
        lines[None] |= keys
        if c["kind"] == "solution" and c["grade_id"]:
            lines[c["grade_id"]] = keys
    return lines


def learner_code(ref: list[dict], cells: list[dict], template: dict[str | None, set[str]]) -> str:
    """Return the learner's own code in a notebook: solution and added cells, template lines removed.

    A solution cell loses the lines of its own cell in the release; a cell the learner added loses
    every line of the release's code cells.
    """
    run, _ = assemble(ref, cells)
    kept = []
    for cell in run:
        if cell["kind"] not in ("solution", "extra"):
            continue
        known = template.get(cell["grade_id"], template[None]) if cell["kind"] == "solution" else template[None]
        lines = [line for line in cell["source"].splitlines() if _line_key(line) not in known]
        if any(line.strip() for line in lines):
            kept.append("\n".join(lines).strip("\n"))
    return "\n\n".join(kept)


# --- comparing ---------------------------------------------------------------------------------------

def _fingerprint(code: str, name: str, boilerplate):
    from copydetect import CodeFingerprint

    return CodeFingerprint(name, NOISE, GUARANTEE - NOISE + 1, boilerplate=boilerplate, language="python",
                           fp=io.StringIO(code))


def _regions(slices) -> list[tuple[int, int]]:
    """copydetect's ``2 x N`` array of slice starts and ends as ``[(start, end), ...]``."""
    if len(slices) == 0 or len(slices[0]) == 0:
        return []
    return [(int(a), int(b)) for a, b in zip(slices[0], slices[1], strict=True)]


def _marked(code: str, regions: list[tuple[int, int]]) -> str:
    out, at = [], 0
    for start, end in regions:
        start, end = max(start, at), max(end, start)
        out += [html.escape(code[at:start]), "<mark>", html.escape(code[start:end]), "</mark>"]
        at = end
    return "".join([*out, html.escape(code[at:])])


def compare(codes: list[LearnerCode], boilerplate_code: str = "") -> list[Pair]:
    """Return every pair of ``codes`` (one notebook) that shares code, highest score first."""
    from copydetect import compare_files

    boiler = _fingerprint(boilerplate_code, "template.py", None).hashes if boilerplate_code.strip() else set()
    prints = [(c, _fingerprint(c.code, f"{c.student}.py", list(boiler))) for c in codes if c.code.strip()]
    pairs = []
    for (a, fa), (b, fb) in itertools.combinations(prints, 2):
        if not fa.hashes or not fb.hashes:
            continue
        matched, (share_a, share_b), (slices_a, slices_b) = compare_files(fa, fb)
        if matched <= 0:
            continue
        share_a, share_b = min(float(share_a), 1.0), min(float(share_b), 1.0)
        pairs.append(Pair(a.notebook, a.student, b.student, max(share_a, share_b), share_a, share_b, int(matched),
                          len(fa.filtered_code), len(fb.filtered_code), a.code, b.code, _regions(slices_a),
                          _regions(slices_b)))
    pairs.sort(key=lambda p: (-p.score, p.notebook, p.student_a, p.student_b))
    return pairs


def similarity(chapter: str, submissions: Path, source_dir: Path, out_dir: Path | None = None,
               threshold: float = THRESHOLD) -> SimilarityReport:
    """Compare every learner's code of ``chapter`` in ``submissions`` with every other's; write the report.

    A notebook that cannot be read (or is missing, ambiguous, a link) is a problem in the report and
    that learner's notebook is left out; the batch goes on.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"expected a threshold between 0 and 1, got {threshold}")
    sources = {p.name: p.read_bytes() for p in sorted((Path(source_dir) / chapter).glob("*.ipynb"))}
    if not sources:
        raise FileNotFoundError(f"no source notebooks in {Path(source_dir) / chapter}")
    refs = {name: reference_cells(data) for name, data in sources.items()}
    releases = {name: release_cells(data) for name, data in sources.items()}
    templates = {name: template_lines(cells) for name, cells in releases.items()}
    boilerplate = {name: "\n".join(c["source"] for c in cells if c["kind"] == "solution")
                   for name, cells in releases.items()}
    ref_ids = {name: {c["grade_id"] for c in cells if c["grade_id"]} for name, cells in refs.items()}
    codes: dict[str, list[LearnerCode]] = {name: [] for name in refs}
    empty: dict[str, list[str]] = {name: [] for name in refs}
    with tempfile.TemporaryDirectory(prefix="ag-similarity-") as scratch:
        students, problems = discover(Path(submissions), chapter, Path(scratch))
        withheld = getattr(students, "withheld", {})
        for student, folder in students.items():
            try:
                found = match_notebooks(list(refs), ref_ids, folder, withheld.get(student))
            except Exception as err:  # noqa: BLE001 - one learner's files never stop the batch
                problems.append(f"{student}: skipped ({type(err).__name__}: {err})")
                continue
            for name, (path, cells, error) in found.items():
                if cells is None:
                    if path is not None or not str(error).startswith("no such notebook"):
                        problems.append(f"{student}: {name} not compared: {error}")
                    continue
                try:
                    code = learner_code(refs[name], cells, templates[name])
                except Exception as err:  # noqa: BLE001
                    problems.append(f"{student}: {name} not compared ({type(err).__name__}: {err})")
                    continue
                (codes[name] if code.strip() else empty[name]).append(LearnerCode(student, name, code))
    pairs = [p for name in refs for p in compare(codes[name], boilerplate[name])]
    pairs.sort(key=lambda p: (-p.score, p.notebook, p.student_a, p.student_b))
    report = SimilarityReport(chapter, pairs, {n: [c.student for c in cs] for n, cs in codes.items()}, problems,
                              threshold, empty={n: [c.student for c in cs] for n, cs in empty.items()})
    if out_dir is not None:
        write_report(report, Path(out_dir))
    return report


# --- the report ----------------------------------------------------------------------------------------

CSV_COLUMNS = ["rank", "notebook", "student_a", "student_b", "score", "share_a", "share_b", "matched_chars",
               "size_a", "size_b", "reported"]

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>Similarity: {chapter}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
table.pairs td, table.pairs th {{ padding: 0.2em 0.8em; text-align: left; }}
.side {{ display: grid; grid-template-columns: 1fr 1fr; gap: 1em; }}
pre {{ background: #f6f6f6; padding: 0.6em; overflow-x: auto; font-size: 0.85em; white-space: pre-wrap; }}
mark {{ background: #ffd27a; }}
section {{ border-top: 1px solid #ccc; margin-top: 1.5em; }}
</style></head><body>
<h1>Similarity of learners' code: {chapter}</h1>
<p>Learners' own code only (solution cells and cells they added; every line of the release template removed),
normalised (names, strings, comments and formatting ignored), compared by winnowing (copydetect). Score: the
larger share of one learner's code found in the other's. {shown} of {total} pairs with shared code are at or above
{threshold:g} (all are in pairs.csv). A score is a reason to read the code, not a verdict.</p>
{problems}
<table class="pairs"><tr><th>rank</th><th>score</th><th>notebook</th><th>learner A</th><th>share of A</th>
<th>learner B</th><th>share of B</th></tr>
{rows}
</table>
{sections}
</body></html>
"""


def _problems_html(report: SimilarityReport) -> str:
    items = [f"<li>{html.escape(p)}</li>" for p in report.problems]
    items += [f"<li>{html.escape(n)}: no code of their own (template only): {html.escape(', '.join(s))}</li>"
              for n, s in report.empty.items() if s]
    return f"<h2>Not compared</h2><ul>{''.join(items)}</ul>" if items else ""


def write_report(report: SimilarityReport, out_dir: Path) -> None:
    """Write ``report.html`` (pairs at or above the threshold, side by side) and ``pairs.csv`` (every pair)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shown = report.reported[:MAX_SHOWN]
    esc = html.escape
    rows, sections = [], []
    for i, p in enumerate(shown, 1):
        rows.append(f'<tr><td><a href="#pair{i}">{i}</a></td><td>{p.score:.2f}</td><td>{esc(p.notebook)}</td>'
                    f"<td>{esc(p.student_a)}</td><td>{p.share_a:.0%}</td><td>{esc(p.student_b)}</td>"
                    f"<td>{p.share_b:.0%}</td></tr>")
        sections.append(f'<section id="pair{i}"><h2>{i}. {esc(p.notebook)}: score {p.score:.2f}</h2><div class="side">'
                        f"<div><h3>{esc(p.student_a)} ({p.share_a:.0%} of {p.size_a} normalised characters)</h3>"
                        f"<pre>{p.html_a}</pre></div>"
                        f"<div><h3>{esc(p.student_b)} ({p.share_b:.0%} of {p.size_b} normalised characters)</h3>"
                        f"<pre>{p.html_b}</pre></div></div></section>")
    page = PAGE.format(chapter=esc(report.chapter), shown=len(shown), total=len(report.pairs),
                       threshold=report.threshold, problems=_problems_html(report), rows="\n".join(rows),
                       sections="\n".join(sections))
    report.html = out_dir / "report.html"
    report.html.write_text(page, encoding="utf-8")
    report.csv = out_dir / "pairs.csv"
    with report.csv.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for i, p in enumerate(report.pairs, 1):
            w.writerow([i, p.notebook, p.student_a, p.student_b, f"{p.score:.4f}", f"{p.share_a:.4f}",
                        f"{p.share_b:.4f}", p.matched, p.size_a, p.size_b, int(p.score >= report.threshold)])
    (out_dir / "problems.json").write_text(json.dumps({"problems": report.problems, "template_only": report.empty},
                                                      indent=2))
