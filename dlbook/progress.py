"""The learner's progress page: ``python -m dlbook.progress [WORKSPACE]`` (``make progress``).

Writes ``WORKSPACE/progress.html`` (plain HTML, the plot a PNG embedded as base64, no JavaScript) and
prints its path. Per chapter: exercises passed / total, check runs (attempts), hints used, and the
chapter's target metrics next to the values the learner's own runs reached; then a plot of exercises
passed over time. Read from:

- the exercises: the graded check cells of the workspace's notebooks (their nbgrader metadata);
- attempts, hints, metrics: the workspace's ``.dlbook-progress.json`` (:mod:`dlbook.progress_log`);
  an exercise counts as passed when its latest check run passed;
- the targets: ``WORKSPACE/NN_slug/targets.json`` if there is one, else the course's
  ``chapters/NN_slug/targets.json`` beside the installed dlbook (``make lab`` and Binder install the
  course with ``pip install -e .``). targets.json stays out of the student release (it is the
  maintainer's file); without it the page shows the learner's values alone.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import progress_log

PAGE = "progress.html"
COURSE_CHAPTERS = Path(__file__).resolve().parent.parent / "chapters"


@dataclass
class Target:
    """One target metric of a chapter and the learner's latest value of it (None: not reached yet)."""

    notebook: str
    name: str
    op: str
    threshold: float
    value: float | None = None

    @property
    def met(self) -> bool | None:
        if self.value is None:
            return None
        return {">=": self.value >= self.threshold, "<=": self.value <= self.threshold,
                ">": self.value > self.threshold, "<": self.value < self.threshold}.get(self.op)


@dataclass
class ChapterProgress:
    """What one chapter of the workspace shows on the page."""

    chapter: str
    exercises: list[str]
    passed: list[str] = field(default_factory=list)
    failing: list[str] = field(default_factory=list)
    attempts: int = 0
    hints_used: int = 0
    targets: list[Target] = field(default_factory=list)


def chapter_exercises(folder: Path) -> list[str]:
    """Return the grade_ids of the graded check cells of the notebooks in ``folder``, in order, once each."""
    found: list[str] = []
    for path in sorted(folder.glob("*.ipynb")):
        try:
            cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
        except (OSError, ValueError, AttributeError):
            continue
        for cell in cells:
            meta = cell.get("metadata", {}).get("nbgrader", {}) if isinstance(cell, dict) else {}
            if cell.get("cell_type") == "code" and meta.get("grade") and not meta.get("solution"):
                if meta.get("grade_id") and meta["grade_id"] not in found:
                    found.append(meta["grade_id"])
    return found


def chapter_targets(workspace: Path, chapter: str) -> list[Target]:
    """Return the chapter's target metrics (not the benchmark's time limits), from targets.json."""
    for path in (workspace / chapter / "targets.json", COURSE_CHAPTERS / chapter / "targets.json"):
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return []
            return [Target(notebook, name, spec[0], float(spec[1]))
                    for notebook, entry in sorted(data.items())
                    for name, spec in entry.get("targets", {}).items() if name != "seconds"]
    return []


def collect(workspace: str | Path) -> tuple[list[ChapterProgress], dict[str, Any]]:
    """Return each chapter's progress and the raw progress record of ``workspace``."""
    workspace = Path(workspace)
    record = progress_log.load_progress(workspace)
    attempts = sorted((a for a in record["attempts"] if isinstance(a, dict) and "exercise" in a),
                      key=lambda a: progress_log.timestamp(a.get("time", "")))
    latest = {a["exercise"]: bool(a.get("passed")) for a in attempts}
    chapters = []
    for folder in sorted(p for p in workspace.iterdir() if p.is_dir() and progress_log.CHAPTER_FOLDER.match(p.name)):
        exercises = chapter_exercises(folder)
        if not exercises:
            continue
        ch = ChapterProgress(folder.name, exercises)
        ch.passed = [e for e in exercises if latest.get(e) is True]
        ch.failing = [e for e in exercises if latest.get(e) is False]
        ch.attempts = sum(1 for a in attempts if a["exercise"] in exercises)
        ch.hints_used = sum(int(record["hints"].get(e, 0) or 0) for e in exercises)
        ch.targets = chapter_targets(workspace, folder.name)
        for target in ch.targets:
            for m in record["metrics"]:  # in time order: the latest value wins
                if (isinstance(m, dict) and m.get("name") == target.name and m.get("chapter") == folder.name
                        and m.get("notebook", target.notebook) == target.notebook):
                    target.value = float(m["value"])
        chapters.append(ch)
    return chapters, record


def passed_over_time(record: dict[str, Any]) -> list[tuple[float, int]]:
    """Return (POSIX time, exercises whose latest check passed) after every recorded check run."""
    state: dict[str, bool] = {}
    points = []
    attempts = [a for a in record["attempts"] if isinstance(a, dict) and "exercise" in a]
    for a in sorted(attempts, key=lambda a: progress_log.timestamp(a.get("time", ""))):
        state[a["exercise"]] = bool(a.get("passed"))
        points.append((progress_log.timestamp(a.get("time", "")), sum(state.values())))
    return points


def plot_png(points: list[tuple[float, int]], total: int) -> bytes:
    """Return a PNG of exercises passed over time (matplotlib's Agg canvas; pyplot's state untouched)."""
    from datetime import datetime, timedelta

    from matplotlib import dates
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    times = [datetime.fromtimestamp(t) for t, _ in points]
    ax.step(times, [n for _, n in points], where="post", color="tab:blue", marker="o", markersize=3)
    # A few minutes of work (or one burst of check runs) would otherwise get an axis spanning years.
    pad = max((times[-1] - times[0]) * 0.05, timedelta(minutes=5))
    ax.set_xlim(times[0] - pad, times[-1] + pad)
    locator = dates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(dates.ConciseDateFormatter(locator))
    ax.axhline(total, color="tab:gray", linestyle="--", linewidth=1, label=f"all {total} exercises")
    ax.set_ylim(0, max(total, 1) * 1.08)
    ax.set_ylabel("exercises passed")
    ax.set_title("Exercises passed over time")
    ax.legend(loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


CSS = """body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}
th{background:#f3f3f3}.ok{color:#176f2c}.no{color:#a3261b}.todo{color:#777}"""


def _fmt(value: float | None) -> str:
    return "not yet run" if value is None else f"{value:.4g}"


def render(workspace: str | Path) -> str:
    """Return the progress page of ``workspace`` as an HTML document."""
    workspace = Path(workspace)
    chapters, record = collect(workspace)
    esc = html.escape
    total = sum(len(c.exercises) for c in chapters)
    done = sum(len(c.passed) for c in chapters)
    out = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>dlbook progress</title>",
           f"<style>{CSS}</style></head><body>", "<h1>Your dlbook progress</h1>",
           f"<p id='total'>{done} of {total} exercises passed. Workspace: <code>{esc(str(workspace))}</code></p>",
           "<table id='chapters'><tr><th>Chapter</th><th>Exercises passed</th><th>Check runs</th>"
           "<th>Hints used</th><th>Your result vs the course's target</th></tr>"]
    for c in chapters:
        targets = "<br>".join(
            f"<span class='{ {True: 'ok', False: 'no', None: 'todo'}[t.met] }'>{esc(t.name)} = {_fmt(t.value)}</span>"
            f" (target {esc(t.op)} {t.threshold:g})" for t in c.targets) or "<span class='todo'>no target</span>"
        out.append(f"<tr id='ch-{esc(c.chapter)}'><td>{esc(c.chapter)}</td>"
                   f"<td class='passed'>{len(c.passed)} / {len(c.exercises)}</td><td class='attempts'>{c.attempts}</td>"
                   f"<td class='hints'>{c.hints_used}</td><td>{targets}</td></tr>")
    out.append("</table>")
    points = passed_over_time(record)
    if points:
        png = base64.b64encode(plot_png(points, total)).decode("ascii")
        out.append(f"<img id='plot' alt='exercises passed over time' src='data:image/png;base64,{png}'>")
    else:
        out.append("<p>No check has run yet: run an exercise's check cell in a notebook of this workspace.</p>")
    for c in chapters:
        out.append(f"<details><summary>{esc(c.chapter)}: each exercise</summary><table>"
                   "<tr><th>Exercise</th><th>Latest check</th><th>Hints seen</th></tr>")
        for e in c.exercises:
            status = ("<span class='ok'>passed</span>" if e in c.passed else
                      "<span class='no'>failed</span>" if e in c.failing else "<span class='todo'>not run</span>")
            out.append(f"<tr><td><code>{esc(e)}</code></td><td>{status}</td>"
                       f"<td>{int(record['hints'].get(e, 0) or 0)}</td></tr>")
        out.append("</table></details>")
    out.append("<p>Stuck? <code>dlbook.hint('&lt;exercise&gt;')</code> in the notebook shows the next hint.</p>"
               "</body></html>")
    return "\n".join(out)


def write_page(workspace: str | Path) -> Path:
    """Write ``WORKSPACE/progress.html`` atomically and return its path."""
    workspace = Path(workspace)
    path = workspace / PAGE
    tmp = path.with_name(f".{PAGE}.tmp")
    tmp.write_text(render(workspace), encoding="utf-8")
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dlbook.progress", description=__doc__.splitlines()[0])
    parser.add_argument("workspace", nargs="?", type=Path, default=None,
                        help="the learner workspace (default: the one around the working directory, else ./workspace)")
    args = parser.parse_args(argv)
    workspace = args.workspace or progress_log.find_workspace() or Path("workspace")
    if not workspace.is_dir():
        print(f"error: no workspace at {workspace}; build it with `make lab` first", file=sys.stderr)
        return 2
    print(write_page(workspace.resolve()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
