"""Hints, the learner's progress file and its IPython hook, and the progress page."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest

import dlbook
from autograder import config, course
from autograder.config import CHAPTERS_DIR, REPO_ROOT
from autograder.workspace import MANIFEST
from dlbook import hints, progress, progress_log

SHOTS = REPO_ROOT / "build" / "e2e" / "progress"


def _exercises() -> dict[str, tuple[Path, str]]:
    """Return {grade_id: (chapter folder, the solution code between BEGIN/END SOLUTION)} of every graded check."""
    found = {}
    for nb_path in sorted(CHAPTERS_DIR.glob("*/*.ipynb")):
        cells = json.loads(nb_path.read_text())["cells"]
        last_solution = ""
        for cell in cells:
            meta = cell.get("metadata", {}).get("nbgrader", {})
            source = "".join(cell["source"])
            if meta.get("solution"):
                last_solution = source
            elif cell["cell_type"] == "code" and meta.get("grade"):
                answer = re.findall(r"### BEGIN SOLUTION\n(.*?)### END SOLUTION", last_solution, re.S)
                found[meta["grade_id"]] = (nb_path.parent, "\n".join(answer))
    return found


EXERCISES = _exercises()


def _solution_lines(code: str) -> list[str]:
    """The non-trivial lines of a solution: longer than 10 characters, not a comment or a bare keyword."""
    lines = []
    for line in code.splitlines():
        line = line.split("  #")[0].strip()
        if len(line) > 10 and not line.startswith("#"):
            lines.append(line)
    return lines


def _workspace(tmp_path: Path, chapters=("03_cnn",)) -> Path:
    """A learner workspace as `make lab` builds it: the marker, chapter folders with notebooks and hints."""
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / MANIFEST).write_text("{}")
    for chapter in chapters:
        (ws / chapter).mkdir()
        for path in (CHAPTERS_DIR / chapter).glob("*.ipynb"):
            shutil.copy(path, ws / chapter / path.name)
        shutil.copy(CHAPTERS_DIR / chapter / "hints.json", ws / chapter / "hints.json")
    return ws


# --- the hints files ----------------------------------------------------------------------------------
def test_every_graded_exercise_has_one_to_three_hints() -> None:
    assert EXERCISES, "no graded check cells found"
    for chapter in sorted({folder for folder, _ in EXERCISES.values()}):
        data = json.loads((chapter / "hints.json").read_text())
        ids = {g for g, (folder, _) in EXERCISES.items() if folder == chapter}
        assert set(data) == ids, (f"{chapter.name}/hints.json: missing {sorted(ids - set(data))}, "
                                  f"unknown {sorted(set(data) - ids)}")
        for grade_id, texts in data.items():
            assert isinstance(texts, list) and 1 <= len(texts) <= 3, f"{grade_id}: expected 1-3 hints, got {texts!r}"
            assert all(isinstance(t, str) and len(t) > 20 for t in texts), f"{grade_id}: hints must be sentences"


def test_hints_never_contain_a_solution_line() -> None:
    for grade_id, (chapter, solution) in EXERCISES.items():
        texts = json.loads((chapter / "hints.json").read_text()).get(grade_id, [])
        joined = "\n".join(texts)
        for line in _solution_lines(solution):
            assert line not in joined, f"{grade_id}: a hint gives away the solution line {line!r}"


def test_hints_json_is_not_private_and_changes_the_release(tmp_path) -> None:
    assert "hints.json" not in config.CHAPTER_PRIVATE_FILES
    # The release is rebuilt (make lab, Binder) when a chapter's hints change: they are part of its fingerprint.
    shutil.copytree(CHAPTERS_DIR / "08_scale", tmp_path / "08_scale")
    before = course.source_fingerprint("08_scale", tmp_path)
    hints_path = tmp_path / "08_scale" / "hints.json"
    hints_path.write_text(hints_path.read_text().replace("ring", "Ring", 1))
    assert course.source_fingerprint("08_scale", tmp_path) != before


@pytest.mark.slow
def test_release_and_workspace_carry_hints_json(tmp_path) -> None:
    from autograder.workspace import sync_workspace

    course.release(["08_scale"], tmp_path / "course", quiet=True)
    released = tmp_path / "course" / "release" / "08_scale" / "hints.json"
    assert released.is_file(), "nbgrader should copy hints.json into the student release"
    assert json.loads(released.read_text()) == json.loads((CHAPTERS_DIR / "08_scale" / "hints.json").read_text())
    sync_workspace(tmp_path / "course" / "release", tmp_path / "ws")
    assert (tmp_path / "ws" / "08_scale" / "hints.json").is_file()
    assert not (tmp_path / "ws" / "08_scale" / "targets.json").exists()


# --- dlbook.hint ----------------------------------------------------------------------------------------
def test_hint_cycles_then_stops_and_remembers_in_the_workspace(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.delenv(progress_log.PROGRESS_ENV, raising=False)
    ws = _workspace(tmp_path)
    grade_id = "ch03_conv2d_backward"
    texts = json.loads((ws / "03_cnn" / "hints.json").read_text())[grade_id]
    monkeypatch.chdir(ws / "03_cnn")
    for i, text in enumerate(texts, start=1):
        assert dlbook.hint(grade_id) is None
        assert capsys.readouterr().out.strip() == f"hint {i} of {len(texts)} for {grade_id}: {text}"
    dlbook.hint(grade_id)
    out = capsys.readouterr().out
    assert out.startswith(f"No more hints for {grade_id}") and "chapter text" in out
    assert progress_log.load_progress(ws)["hints"][grade_id] == len(texts)
    dlbook.hint(grade_id, 1)  # rereading one does not lower the count
    assert capsys.readouterr().out.startswith(f"hint 1 of {len(texts)}")
    assert progress_log.hints_shown(ws, grade_id) == len(texts)
    # From the workspace root, the chapter folder is found by the exercise's number.
    monkeypatch.chdir(ws)
    dlbook.hint("ch03_im2col")
    assert capsys.readouterr().out.startswith("hint 1 of ")
    with pytest.raises(ValueError, match="hints 1 to"):
        dlbook.hint(grade_id, 9)


def test_hint_outside_a_workspace_counts_per_session_and_says_when_none(tmp_path, capsys, monkeypatch) -> None:
    folder = tmp_path / "loose"
    folder.mkdir()
    (folder / "hints.json").write_text(json.dumps({"ch99_x": ["first idea here, long enough", "second idea"]}))
    monkeypatch.chdir(folder)
    monkeypatch.setattr(hints, "COURSE_CHAPTERS", tmp_path / "none")
    monkeypatch.setattr(hints, "_session_shown", {})
    dlbook.hint("ch99_x")
    dlbook.hint("ch99_x")
    dlbook.hint("ch99_x")
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("hint 1 of 2 for ch99_x") and out[1].startswith("hint 2 of 2")
    assert out[2].startswith("No more hints")
    assert not (folder / progress_log.PROGRESS_FILE).exists()
    dlbook.hint("ch98_missing")
    assert "No hints found for 'ch98_missing'" in capsys.readouterr().out


def test_newest_updated_hints_file_wins(tmp_path, monkeypatch) -> None:
    (tmp_path / "hints.json").write_text(json.dumps({"ch99_x": ["old hint text"]}))
    newer = tmp_path / "hints.updated-abcd1234.json"
    newer.write_text(json.dumps({"ch99_x": ["new hint text"]}))
    os.utime(tmp_path / "hints.json", (1, 1))
    assert hints.load_hints("ch99_x", tmp_path) == ["new hint text"]


# --- the progress file -----------------------------------------------------------------------------------
def test_corrupt_progress_file_is_moved_aside_with_a_warning(tmp_path) -> None:
    ws = _workspace(tmp_path, chapters=())
    (ws / progress_log.PROGRESS_FILE).write_text("{not json")
    with pytest.warns(progress_log.ProgressWarning, match="moved it to"):
        progress_log.record_attempt(ws, "ch03_im2col", True)
    aside = list(ws.glob(".dlbook-progress.corrupt-*.json"))
    assert len(aside) == 1 and aside[0].read_text() == "{not json", "the corrupt file must be kept, unchanged"
    data = progress_log.load_progress(ws)
    assert [a["exercise"] for a in data["attempts"]] == ["ch03_im2col"]
    (ws / progress_log.PROGRESS_FILE).write_text("[1, 2]")  # valid JSON, not progress
    with pytest.warns(progress_log.ProgressWarning):
        assert progress_log.load_progress(ws)["attempts"] == []
    assert len(list(ws.glob(".dlbook-progress.corrupt-*.json"))) == 2
    assert not list(ws.glob("*.tmp")), "no temporary file left behind"


def test_workspace_detection_and_hook_registration_rules(tmp_path, monkeypatch) -> None:
    ws = _workspace(tmp_path)
    assert progress_log.find_workspace(ws) == ws
    assert progress_log.find_workspace(ws / "03_cnn") == ws
    (ws / "03_cnn" / "deeper").mkdir()
    assert progress_log.find_workspace(ws / "03_cnn" / "deeper") is None
    assert progress_log.find_workspace(CHAPTERS_DIR / "03_cnn") is None, "the source chapters are no workspace"
    # The marker is the file the workspace builder writes.
    assert progress_log.WORKSPACE_MARKER == MANIFEST

    class Events:
        def __init__(self) -> None:
            self.callbacks = {"post_run_cell": []}

        def register(self, name, fn) -> None:
            self.callbacks[name].append(fn)

    monkeypatch.setattr(progress_log, "_active", {})
    kernel_shell = SimpleNamespace(kernel=object(), events=Events())
    terminal_shell = SimpleNamespace(kernel=None, events=Events())
    assert progress_log.register_hook(start=ws / "03_cnn") is False, "plain Python (pytest) is no kernel"
    assert progress_log.register_hook(terminal_shell, start=ws) is False
    assert progress_log.register_hook(kernel_shell, start=tmp_path) is False, "outside a workspace"
    monkeypatch.setenv(progress_log.PROGRESS_ENV, "0")
    assert progress_log.register_hook(kernel_shell, start=ws) is False, "DLBOOK_PROGRESS=0"
    monkeypatch.delenv(progress_log.PROGRESS_ENV)
    assert progress_log.active_workspace() is None
    assert progress_log.register_hook(kernel_shell, start=ws) is True
    assert progress_log.register_hook(kernel_shell, start=ws) is True
    assert len(kernel_shell.events.callbacks["post_run_cell"]) == 1, "registered twice"


def test_plain_python_in_a_workspace_records_nothing(tmp_path) -> None:
    ws = _workspace(tmp_path)
    code = ("import dlbook, dlbook.progress_log as p; assert p.active_workspace() is None; "
            "dlbook.record_metric('test_accuracy', 0.5)")
    env = {k: v for k, v in os.environ.items() if k != progress_log.PROGRESS_ENV}
    subprocess.run([sys.executable, "-c", code], cwd=ws / "03_cnn", check=True, env=env, capture_output=True)
    assert not (ws / progress_log.PROGRESS_FILE).exists()


# --- the hook in a real kernel -------------------------------------------------------------------------------
def _run(client, code: str) -> tuple[str, str, str]:
    """Run ``code`` in the kernel; return (status, stdout, stderr)."""
    out, err = [], []

    def on_output(msg) -> None:
        if msg["msg_type"] == "stream":
            (out if msg["content"]["name"] == "stdout" else err).append(msg["content"]["text"])

    reply = client.execute_interactive(code, timeout=120, output_hook=on_output)
    return reply["content"]["status"], "".join(out), "".join(err)


def test_hook_in_a_kernel_is_inert_outside_and_records_inside_a_workspace(tmp_path) -> None:
    jupyter_client = pytest.importorskip("jupyter_client")
    ws = _workspace(tmp_path)
    elsewhere = tmp_path / "grading" / "alice" / "03_cnn"  # like nbgrader's autograded/<student>/<chapter>
    elsewhere.mkdir(parents=True)
    shutil.copy(CHAPTERS_DIR / "03_cnn" / "hints.json", elsewhere / "hints.json")
    env = {k: v for k, v in os.environ.items() if k != progress_log.PROGRESS_ENV}
    env["MPLBACKEND"] = "Agg"
    km = jupyter_client.KernelManager(kernel_name="python3")
    km.start_kernel(cwd=str(elsewhere), env=env)
    client = km.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=120)
        count = ("import dlbook.progress_log as _p; print(sum(getattr(cb, '__module__', '') == _p.__name__ "
                 "for cb in get_ipython().events.callbacks['post_run_cell']))")
        assert _run(client, "import dlbook")[0] == "ok"
        assert _run(client, count)[1].strip() == "0", "the hook must not be registered outside a workspace"
        status, out, err = _run(client, 'ex = "ch03_conv2d_backward"\nassert False, "wrong"')
        assert status == "error" and "dlbook.hint" not in out + err
        assert not list(tmp_path.rglob(progress_log.PROGRESS_FILE))

        # The same kernel, now as a learner's: what `import dlbook` does in a workspace.
        assert _run(client, f"import os; os.chdir({str(ws / '03_cnn')!r}); "
                            "_p.register_hook(); _p.register_hook()")[0] == "ok"
        assert _run(client, count)[1].strip() == "1", "the hook must be registered exactly once"
        status, out, _ = _run(client, 'ex = "ch03_conv2d_backward"\nassert False, "wrong"')
        assert status == "error"
        assert "hint 1 of 3: `dlbook.hint('ch03_conv2d_backward')`" in out
        assert _run(client, "dlbook.hint('ch03_conv2d_backward')")[1].startswith("hint 1 of 3 for")
        status, out, _ = _run(client, 'ex = "ch03_conv2d_backward"\nraise ValueError("still wrong")')
        assert "hint 2 of 3: `dlbook.hint('ch03_conv2d_backward')`" in out
        status, out, _ = _run(client, 'EX = "ch03_im2col"\nprint("all checks passed")')
        assert status == "ok" and "dlbook.hint" not in out
        assert _run(client, "x = 1  # not a check cell")[0] == "ok"
        assert _run(client, "dlbook.record_metric('test_accuracy', 0.93)")[0] == "ok"
        data = progress_log.load_progress(ws)
        assert [(a["exercise"], a["passed"], a["chapter"]) for a in data["attempts"]] == [
            ("ch03_conv2d_backward", False, "03_cnn"), ("ch03_conv2d_backward", False, "03_cnn"),
            ("ch03_im2col", True, "03_cnn")]
        assert data["hints"] == {"ch03_conv2d_backward": 1}
        assert [(m["name"], m["value"], m["chapter"]) for m in data["metrics"]] == [("test_accuracy", 0.93, "03_cnn")]
        # A corrupt file is moved aside; the learner's cell still succeeds, with a one-line warning.
        (ws / progress_log.PROGRESS_FILE).write_text("{broken")
        status, out, err = _run(client, 'ex = "ch03_maxpool_forward"\nprint("ok")')
        assert status == "ok" and "moved it to" in err
        # An unwritable workspace never breaks a cell either.
        assert _run(client, "import dlbook.progress_log as _p2; _p2._active['workspace'] = "
                            f"{str(tmp_path / 'missing')!r}")[0] == "ok"
        status, out, err = _run(client, 'ex = "ch03_maxpool_forward"\nprint("ok")')
        assert status == "ok" and "progress not recorded" in err
    finally:
        client.stop_channels()
        km.shutdown_kernel(now=True)
    aside = list(ws.glob(".dlbook-progress.corrupt-*.json"))
    assert len(aside) == 1 and aside[0].read_text() == "{broken"
    data = progress_log.load_progress(ws)
    assert [(a["exercise"], a["passed"]) for a in data["attempts"]] == [("ch03_maxpool_forward", True)]


def test_hook_records_outcomes_in_order(tmp_path) -> None:
    """The records themselves, without a kernel: what _post_run_cell writes for each kind of cell."""
    ws = _workspace(tmp_path)
    saved = dict(progress_log._active)
    progress_log._active["workspace"] = ws
    cwd = os.getcwd()
    os.chdir(ws / "03_cnn")
    try:
        for source, ok in [('ex = "ch03_im2col"\nassert False', False), ("print(1)", True),
                           ('  EX = "ch03_im2col"\n', True), ("ex = ch03_im2col", True)]:
            progress_log._post_run_cell(SimpleNamespace(info=SimpleNamespace(raw_cell=source), success=ok))
    finally:
        os.chdir(cwd)
        progress_log._active.clear()
        progress_log._active.update(saved)
    attempts = progress_log.load_progress(ws)["attempts"]
    assert [(a["exercise"], a["passed"], a["chapter"]) for a in attempts] == [
        ("ch03_im2col", False, "03_cnn"), ("ch03_im2col", True, "03_cnn")]


# --- the page -------------------------------------------------------------------------------------------------
def _learner_record(ws: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for exercise, passed in [("ch03_conv_output_size", False), ("ch03_conv_output_size", True),
                                 ("ch03_im2col", True), ("ch03_maxpool_forward", True),
                                 ("ch03_maxpool_forward", False), ("ch06_epsilon_greedy", True)]:
            progress_log.record_attempt(ws, exercise, passed)
        progress_log.set_hints_shown(ws, "ch03_conv_output_size", 2)
        progress_log.set_hints_shown(ws, "ch03_maxpool_forward", 1)
        progress_log.record_metric_value(ws, "test_accuracy", 0.915, "03_cnn")
        progress_log.record_metric_value(ws, "conv_vs_torch_ratio", 4.2, "03_cnn")


def test_progress_page_counts(tmp_path) -> None:
    ws = _workspace(tmp_path, chapters=("03_cnn", "06_rl"))
    _learner_record(ws)
    chapters, _ = progress.collect(ws)
    by_name = {c.chapter: c for c in chapters}
    ch3, ch6 = by_name["03_cnn"], by_name["06_rl"]
    n3 = len([g for g, (f, _) in EXERCISES.items() if f.name == "03_cnn"])
    assert len(ch3.exercises) == n3
    assert sorted(ch3.passed) == ["ch03_conv_output_size", "ch03_im2col"], "the latest check run decides"
    assert ch3.failing == ["ch03_maxpool_forward"]
    assert (ch3.attempts, ch3.hints_used) == (5, 3)
    assert (len(ch6.passed), ch6.attempts, ch6.hints_used) == (1, 1, 0)
    targets = {t.name: t for t in ch3.targets}
    assert targets["test_accuracy"].value == 0.915 and targets["test_accuracy"].met is True
    assert targets["conv_vs_torch_ratio"].met is False
    assert "seconds" not in targets
    page = progress.write_page(ws)
    text = page.read_text()
    assert page == ws / "progress.html"
    assert f"<td class='passed'>2 / {n3}</td><td class='attempts'>5</td><td class='hints'>3</td>" in text
    assert "<script" not in text.lower()
    assert "data:image/png;base64," in text
    assert f"3 of {n3 + len(ch6.exercises)} exercises passed" in text


def test_progress_page_command_line(tmp_path, capsys) -> None:
    ws = _workspace(tmp_path, chapters=("06_rl",))
    proc = subprocess.run([sys.executable, "-m", "dlbook.progress", str(ws)], capture_output=True, text=True,
                          check=True)
    assert proc.stdout.strip() == str((ws / "progress.html").resolve())
    assert "No check has run yet" in (ws / "progress.html").read_text()
    assert progress.main([str(tmp_path / "nope")]) == 2
    assert "make lab" in capsys.readouterr().err


@pytest.mark.slow
def test_progress_page_in_chromium(tmp_path) -> None:
    playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is a dev dependency")
    chromium = Path(os.environ.get("DLBOOK_CHROMIUM", "/usr/bin/chromium"))
    if not chromium.exists():
        pytest.skip(f"no Chromium at {chromium} (Debian package chromium; set DLBOOK_CHROMIUM)")
    from .test_browser_e2e import CHROMIUM_ARGS

    ws = _workspace(tmp_path, chapters=("03_cnn", "06_rl"))
    _learner_record(ws)
    page_path = progress.write_page(ws)
    SHOTS.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(page_path.as_uri())
            assert "exercises passed" in page.inner_text("#total")
            row = page.inner_text("#ch-03_cnn")
            assert "2 / " in row and "\t5\t" in row and "\t3\t" in row, row
            assert "test_accuracy = 0.915" in row
            assert page.evaluate("document.querySelector('#plot').naturalWidth") > 0, "the plot did not load"
            page.screenshot(path=str(SHOTS / "progress.png"), full_page=True)
        finally:
            browser.close()
    assert (SHOTS / "progress.png").stat().st_size > 10_000
