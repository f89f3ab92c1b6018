"""The course as learners and instructors see it: JupyterLab, widgets and nbgrader in real Chromium.

A JupyterLab server is started the way ``make lab`` starts it (``python -m autograder lab``, loopback,
token) on a fresh workspace, and Debian's Chromium is driven with Playwright (no browser download):

1. the chapter list opens; the chapter's student notebook opens with the course kernel;
2. "Run All" on the notebook with every exercise solved completes in fast mode with no error output;
   a plot and a progress bar appear;
3. an ipywidgets control renders and its output changes when the control changes;
4. nbgrader's Validate on the untouched notebook reports the failing exercises; after one correct
   answer is typed into its solution cell and saved, Validate no longer reports that exercise;
5. as instructor (``make formgrader``), the formgrader page lists the chapters.

Screenshots of steps 2-5 go to ``build/e2e/<chapter>/`` for a person to look at. Servers and the
browser are always shut down, even when a step fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest

from autograder.config import REPO_ROOT
from dlbook.distributed import free_port

from .conftest import CHAPTERS, CHAPTERS_DIR, fill_solutions, nbgrader_meta

pytestmark = pytest.mark.slow

CHROMIUM = Path(os.environ.get("DLBOOK_CHROMIUM", "/usr/bin/chromium"))
SHOTS = REPO_ROOT / "build" / "e2e"
# Flags for a headless Chromium on a machine without network access or a GPU (running as root
# needs --no-sandbox); the background-networking flags stop it from calling Google's hosts.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is a dev dependency")
if not CHROMIUM.exists():  # .ci/run installs it; a developer machine may not have it
    pytest.skip(f"no Chromium at {CHROMIUM} (Debian package chromium; set DLBOOK_CHROMIUM)",
                allow_module_level=True)


def _widget_notebooks(chapter: str) -> list[Path]:
    """The chapter's notebooks with an ipywidgets slider (the control the test drives), in order."""
    return [path for path in sorted((CHAPTERS_DIR / chapter).glob("*.ipynb"))
            if "ipywidgets" in (text := path.read_text()) and "Slider(" in text]


WIDGET_CHAPTERS = [c for c in CHAPTERS if _widget_notebooks(c)]
# Chapter 1's first notebook proves the path; the newest chapter's last one proves that new chapters keep
# working. (The chapters' content is graded in full by tests/test_grading_pipeline.py; here the notebook is
# run three times, Run All and two Validates, so the newest chapter's heavier first notebook would only cost
# time: 09's first is about ten times its last in fast mode.)
E2E_CHAPTERS = sorted({WIDGET_CHAPTERS[0], WIDGET_CHAPTERS[-1]}) if WIDGET_CHAPTERS else []


def _widget_notebook(chapter: str) -> Path | None:
    found = _widget_notebooks(chapter)
    if not found:
        return None
    return found[0] if chapter == WIDGET_CHAPTERS[0] else found[-1]


class Server:
    """``python -m autograder lab`` in the background; ``url`` has the token; stopped by ``stop()``."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.port = free_port()
        self.log = log
        # Fast mode for kernels and nbgrader's Validate (they inherit it); JupyterLab's layout and
        # settings in the test's own folders, so a developer's open tabs never leak in.
        env = dict(os.environ, DLBOOK_FAST="1",
                   JUPYTERLAB_WORKSPACES_DIR=str(log.parent / "lab-workspaces"),
                   JUPYTERLAB_SETTINGS_DIR=str(log.parent / "lab-settings"))
        env.pop("MPLBACKEND", None)  # the kernel shows plots inline
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "autograder", "lab", "--port", str(self.port), *args],
                stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env)
        deadline = time.monotonic() + 600  # releasing every chapter first takes a while
        while True:
            match = re.search(rf"http://127\.0\.0\.1:{self.port}/\w+\?token=([0-9a-f]+)", log.read_text())
            if match:
                self.url, self.token = match.group(0), match.group(1)
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"JupyterLab did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)

    def page(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}?token={self.token}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # Ctrl-C: the launcher stops JupyterLab and its kernels
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def _dismiss_popups(page) -> None:
    """Close JupyterLab's 'news' notification so that it never covers what we click."""
    no = page.locator(".jp-Notification-Toast-Close, .jp-toast-button:has-text('No')")
    for i in range(no.count()):
        try:
            no.nth(i).click(timeout=2000)
        except playwright_api.Error:
            pass


def _open_notebook(page, server: Server, rel: str) -> None:
    page.goto(server.page(f"lab/tree/{rel}"))
    page.wait_for_selector(".jp-NotebookPanel .jp-Notebook .jp-Cell", timeout=120_000)
    # The kernel has started when the status bar says Idle.
    page.wait_for_selector(".jp-NotebookPanel-toolbar .jp-KernelName", timeout=60_000)
    page.wait_for_function(
        "() => [...document.querySelectorAll('.jp-StatusBar-TextItem')].some(e => /Idle/.test(e.textContent))",
        timeout=120_000)
    _dismiss_popups(page)
    # JupyterLab may restore earlier tabs around it: make this notebook the current one (nbgrader's
    # Validate acts on the current notebook), and check that the status bar agrees.
    name = rel.rsplit("/", 1)[-1]
    page.locator(".lm-TabBar-tab .lm-TabBar-tabLabel", has_text=re.compile(f"^{re.escape(name)}$")).first.click()
    page.locator(".jp-NotebookPanel .jp-Cell").filter(visible=True).first.click()
    page.wait_for_function(
        "(n) => [...document.querySelectorAll('.jp-StatusBar-TextItem')].some(e => e.textContent.trim() === n)",
        arg=name, timeout=30_000)


def _run_all_and_wait(page, n_code_cells: int, timeout_ms: int) -> None:
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
    # Done when every code cell has an execution count and none shows [*].
    page.wait_for_function(
        """(n) => {
            const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')];
            return prompts.length === n && prompts.every(p => /\\[\\d+\\]/.test(p.textContent));
        }""", arg=n_code_cells, timeout=timeout_ms, polling=1000)


def _close_all_tabs(page) -> None:
    """Close every tab, discarding unsaved changes (JupyterLab asks once per modified notebook)."""
    page.get_by_role("menuitem", name="File", exact=True).click()
    page.get_by_role("menuitem", name="Close All Tabs", exact=True).click()
    deadline = time.monotonic() + 60
    while page.locator(".jp-NotebookPanel").count() and time.monotonic() < deadline:
        discard = page.locator(".jp-Dialog .jp-Dialog-button", has_text="Discard")
        if discard.count():
            discard.first.click()
        time.sleep(0.5)
    assert not page.locator(".jp-NotebookPanel").count(), "the notebook tabs did not close"


def _validate(page) -> str:
    """Click nbgrader's Validate button (of the notebook shown) and return the text of its dialog."""
    # JupyterLab may restore other notebook tabs; click the button of the notebook on screen.
    page.locator(".jp-NotebookPanel-toolbar").get_by_text("Validate", exact=True).filter(visible=True).click()
    dialog = page.locator(".jp-Dialog")
    dialog.wait_for(timeout=300_000)
    # The dialog first says it is validating; wait for the result.
    page.wait_for_function(
        "() => { const d = document.querySelector('.jp-Dialog'); "
        "return d && /(VALIDATION FAILED|Success|passed|failed|error)/i.test(d.textContent); }",
        timeout=300_000, polling=1000)
    return dialog.inner_text()


def _close_dialog(page) -> None:
    page.locator(".jp-Dialog .jp-Dialog-button").last.click()
    page.locator(".jp-Dialog").wait_for(state="detached", timeout=30_000)


def _unique_line(cell_source: str, others: list[str]) -> str:
    """Return the longest line of ``cell_source`` that appears in none of ``others``."""
    lines = sorted((ln.strip() for ln in cell_source.splitlines()), key=len, reverse=True)
    for line in lines:
        if len(line) > 12 and "HIDDEN" not in line and not any(line in o for o in others):
            return line
    raise AssertionError("no distinctive line in the test cell")


@pytest.mark.parametrize("chapter", E2E_CHAPTERS)
def test_learner_and_instructor_in_the_browser(browser, chapter, tmp_path) -> None:
    source_path = _widget_notebook(chapter)
    assert source_path is not None
    shots = SHOTS / chapter
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir(parents=True)
    workspace, course_dir = tmp_path / "workspace", tmp_path / "course"

    server = Server(["--dest", str(workspace), "--course-dir", str(course_dir)], tmp_path / "lab.log")
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    try:
        # 1. the chapter list, then the student notebook with the course kernel
        page.goto(server.url)
        page.locator(".jp-DirListing-item", has_text=chapter).first.wait_for(timeout=120_000)
        _dismiss_popups(page)
        page.screenshot(path=str(shots / "1_chapters.png"))
        listed = page.locator(".jp-DirListing-itemText").all_inner_texts()
        assert set(CHAPTERS) <= {t.strip() for t in listed}, f"file browser shows {listed}"
        # a learner's JupyterLab has no nbgrader instructor tools (make lab's Jupyter configuration)
        page.get_by_role("menuitem", name="Nbgrader", exact=True).click()
        menu = [t.strip() for t in page.locator(".lm-Menu-content .lm-Menu-itemLabel").all_inner_texts() if t.strip()]
        page.keyboard.press("Escape")
        assert not {"Formgrader", "Create assignment", "Course List"} & set(menu), f"the Nbgrader menu shows {menu}"
        assert page.request.get(server.url.split("/lab")[0] + "/formgrader").status == 404
        student_path = workspace / chapter / source_path.name
        assert student_path.exists(), "make lab did not build the workspace"
        student_nb = nbformat.read(student_path, as_version=4)
        source_nb = nbformat.read(source_path, as_version=4)
        solved_name = source_path.stem + "_solved.ipynb"
        nbformat.write(fill_solutions(student_nb, source_nb), workspace / chapter / solved_name)
        n_code = sum(c.cell_type == "code" for c in student_nb.cells)

        # 2. Run All on the solved notebook: no error output, a plot and a progress bar
        _open_notebook(page, server, f"{chapter}/{solved_name}")
        kernel = page.locator(".jp-NotebookPanel-toolbar .jp-KernelName").first.inner_text()
        assert "Python 3" in kernel, f"the notebook opened with kernel {kernel!r}"
        _run_all_and_wait(page, n_code, timeout_ms=600_000)
        errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
        error_texts = [t for t in errors.all_inner_texts() if t.strip()]
        assert not error_texts, f"error output after Run All: {error_texts[0][:2000]}"
        assert page.locator(".jp-RenderedImage img").count() > 0, "no plot after Run All"
        progress = page.locator(".widget-hprogress, .widget-progress")
        assert progress.count() > 0, "no progress bar after Run All"
        progress.first.scroll_into_view_if_needed()
        page.screenshot(path=str(shots / "2_run_all.png"))

        # 3. a widget renders and its output reacts
        slider = page.locator(".jp-OutputArea .widget-slider").first
        slider.wait_for(timeout=60_000)
        cell = page.locator(".jp-CodeCell", has=slider).first
        before = cell.locator(".jp-Cell-outputArea").inner_html()
        slider.scroll_into_view_if_needed()
        handle = slider.locator(".noUi-handle").first
        handle.focus()
        for _ in range(5):
            handle.press("ArrowRight")
        page.wait_for_function(
            "([el, old]) => el.innerHTML !== old",
            arg=[cell.locator(".jp-Cell-outputArea").element_handle(), before], timeout=120_000)
        time.sleep(1)  # let the new plot render before the screenshot
        page.screenshot(path=str(shots / "3_widget.png"))

        # 4. Validate on the untouched notebook, then with one exercise solved
        _close_all_tabs(page)
        _open_notebook(page, server, f"{chapter}/{source_path.name}")
        # The learner sees the released test cell (hidden tests removed): find a line only it has.
        graded = [c for c in student_nb.cells if nbgrader_meta(c).get("grade") and not nbgrader_meta(c).get("solution")]
        first_test = graded[0]
        grade_id = nbgrader_meta(first_test)["grade_id"]
        marker = _unique_line(first_test.source, [c.source for c in student_nb.cells if c is not first_test])
        report = _validate(page)
        page.screenshot(path=str(shots / "4_validate_untouched.png"))
        assert "cell failed" in report, f"Validate on the untouched notebook said: {report[:1000]}"
        assert marker in report, f"Validate does not report {grade_id} as failing: {report[:2000]}"
        _close_dialog(page)

        solution_id = f"{grade_id}_solution"
        index = next(i for i, c in enumerate(student_nb.cells) if nbgrader_meta(c).get("grade_id") == solution_id)
        answer = next(c.source for c in source_nb.cells if nbgrader_meta(c).get("grade_id") == solution_id)
        panel = next(p for p in page.locator(".jp-NotebookPanel").all()
                     if p.locator(".jp-Cell").first.is_visible())
        editor = panel.locator(".jp-Cell").nth(index).locator(".cm-content")
        editor.scroll_into_view_if_needed()
        editor.click()
        page.keyboard.press("Control+a")
        page.keyboard.insert_text(answer)
        page.keyboard.press("Control+s")
        deadline, saved_source = time.monotonic() + 60, None
        while saved_source != answer.strip() and time.monotonic() < deadline:
            time.sleep(0.5)
            saved = nbformat.read(workspace / chapter / source_path.name, as_version=4)
            saved_source = next(c.source for c in saved.cells
                                if nbgrader_meta(c).get("grade_id") == solution_id).strip()
        assert saved_source == answer.strip(), f"the typed answer was not saved as typed: {saved_source[:500]}"
        report = _validate(page)
        page.screenshot(path=str(shots / "4_validate_one_solved.png"))
        assert marker not in report, f"Validate still reports {grade_id} after it was solved: {report[:2000]}"
        _close_dialog(page)
    except Exception:
        page.screenshot(path=str(shots / "failure.png"))  # what the browser showed when the step failed
        raise
    finally:
        context.close()
        server.stop()
    assert server.proc.returncode == 0, (tmp_path / "lab.log").read_text()[-2000:]

    # 5. the instructor's formgrader lists the chapters
    instructor = Server(["--instructor", "--course-dir", str(course_dir)], tmp_path / "formgrader.log")
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    try:
        page.goto(instructor.page("formgrader"))
        for name in CHAPTERS:
            page.get_by_text(name, exact=True).first.wait_for(timeout=120_000)
        page.screenshot(path=str(shots / "5_formgrader.png"))
    except Exception:
        page.screenshot(path=str(shots / "failure.png"))
        raise
    finally:
        context.close()
        instructor.stop()
    (shots / "README.json").write_text(json.dumps({"chapter": chapter, "notebook": source_path.name}))
