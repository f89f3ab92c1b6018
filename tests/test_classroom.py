"""A class on a JupyterHub, from release to feedback, in Debian's Chromium (real hub, proxy, users, exchange).

``python -m autograder classroom start`` runs the hub for a 3-learner roster (system users created for
the test, deleted after it). The instructor releases chapter 1 from the command line and opens the
formgrader on the hub. Learner A logs in, fetches the chapter in the Assignments tab, submits it once
untouched, then with the solutions filled in (written into A's copy, as A's files), runs Validate and
submits again; learner B submits the untouched chapter; learner C submits nothing. The instructor
collects (A's latest submission only), grades with the confined grader and releases feedback; A logs
in again, fetches the feedback and opens it. Then, as A's system user: no hidden test code in the
feedback, and B's files, the exchange's inbound folder and the course are out of reach.

Screenshots go to ``build/e2e/classroom/``. Whatever happens, the hub is stopped, no process of the
hub, its proxy or the learners remains (checked), and the test users are deleted.
"""

from __future__ import annotations

import csv
import html
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import pytest

from autograder import variants
from autograder.classroom import PROXY, SYSTEM_PATH, ClassroomError, read_roster
from autograder.config import CHAPTERS_DIR, REPO_ROOT
from dlbook.distributed import free_port

from .conftest import fill_solutions

try:
    from playwright import sync_api as playwright_api
except ImportError:  # a dev dependency: the browser test is skipped without it (see _missing)
    playwright_api = None

CHAPTER = "01_backprop"
SHOTS = REPO_ROOT / "build" / "e2e" / "classroom"


def _missing() -> str | None:
    """Why the hub cannot run here (None when it can)."""
    for module in ("playwright.sync_api", "jupyterhub", "nativeauthenticator"):
        if importlib.util.find_spec(module.split(".")[0]) is None:
            return f"{module} is not installed (the dev extra)"
    if os.geteuid() != 0:
        return "the classroom creates system users: the test runs as root (as CI does)"
    if not PROXY.exists():
        return f"no configurable-http-proxy at {PROXY}: `npm ci --prefix {PROXY.parents[2]}` (.ci/run does)"
    if not shutil.which("useradd", path=SYSTEM_PATH) or not shutil.which("runuser", path=SYSTEM_PATH):
        return "useradd and runuser are needed (Debian packages passwd, util-linux)"
    return None


def _sh(*cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, cwd=REPO_ROOT, **kw)


def _as(user: str, *cmd: str, cwd: str = "/") -> subprocess.CompletedProcess:
    """Run ``cmd`` as the system user ``user`` (the way the learner's own processes run)."""
    return subprocess.run(["runuser", "-u", user, "--", *cmd], capture_output=True, text=True, cwd=cwd,
                          env={"PATH": SYSTEM_PATH, "LANG": "C.UTF-8"})


def _processes(uids: set[int], marks: list[str]) -> list[str]:
    """The processes owned by ``uids`` or whose command line contains one of ``marks``: ``"pid: cmdline"``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            uid = entry.stat().st_uid
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if cmd and (uid in uids or any(m in cmd for m in marks)):
            found.append(f"{entry.name}: {cmd[:200]}")
    return found


class Hub:
    """``python -m autograder classroom start`` in the background; ``stop()`` stops it like Ctrl-C."""

    def __init__(self, root: Path, roster: Path, port: int, log: Path) -> None:
        self.root, self.port, self.url = root, port, f"http://127.0.0.1:{port}/"
        self.base = [sys.executable, "-m", "autograder", "--course-dir", str(root / "course"),
                     "classroom", "--dir", str(root / "room")]
        self.log = log
        env = dict(os.environ, DLBOOK_FAST="1", OMP_NUM_THREADS="1")  # learners' kernels: fast mode
        started = time.monotonic()
        with self.log.open("w") as out:
            self.proc = subprocess.Popen([*self.base, "start", "--roster", str(roster), "--exchange",
                                          str(root / "exchange"), "--port", str(port), "--grant-traverse"],
                                         stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env)
        while "The classroom hub is ready" not in self.log.read_text():
            if self.proc.poll() is not None or time.monotonic() - started > 180:
                self.stop()
                raise AssertionError(f"the hub did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.5)
        self.start_seconds = time.monotonic() - started
        text = self.log.read_text()
        assert self.url in text and str(root / "room" / "credentials.csv") in text, text
        with (root / "room" / "credentials.csv").open() as f:
            self.passwords = {row["username"]: row["password"] for row in csv.DictReader(f)}

    def cli(self, *args: str) -> str:
        """Run an instructor command (``classroom release CHAPTER``, ...); return its output."""
        result = _sh(*self.base, *args)
        assert result.returncode == 0, f"classroom {' '.join(args)} failed:\n{result.stdout}{result.stderr}"
        return result.stdout

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _login(browser, hub: Hub, user: str):
    """Log ``user`` in through the hub's login page; return (context, page) on their JupyterLab."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(f"{hub.url}hub/login")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", hub.passwords[user])
    page.click("input[type=submit], button[type=submit]")
    page.wait_for_selector(".jp-LauncherCard, .jp-DirListing", timeout=180_000)
    return context, page


def _screenshot(page, name: str) -> None:
    """Save a screenshot under build/e2e/classroom/, without JupyterLab's "Jupyter news?" toast over it."""
    for close in page.locator(".jp-Notification-Toast-Close").all():
        try:
            close.click(timeout=2000)
            close.wait_for(state="detached", timeout=5000)
        except playwright_api.Error:
            pass
    page.screenshot(path=str(SHOTS / name))


def _nbgrader_menu(page) -> list[str]:
    page.get_by_role("menuitem", name="Nbgrader", exact=True).click()
    labels = [t.strip() for t in page.locator(".lm-Menu-content .lm-Menu-itemLabel").all_inner_texts() if t.strip()]
    page.keyboard.press("Escape")
    return labels


def _assignments(page):
    """Open the Assignments tab (Nbgrader > Assignment List) and wait for its lists."""
    page.get_by_role("menuitem", name="Nbgrader", exact=True).click()
    page.locator(".lm-Menu-content .lm-Menu-item", has_text="Assignment List").first.click()
    page.locator("#released_assignments_list_loading").wait_for(state="hidden", timeout=60_000)
    page.locator("#fetched_assignments_list_loading").wait_for(state="hidden", timeout=60_000)


def _row(page, listing: str):
    return page.locator(f"#{listing} > .list_item", has_text=CHAPTER).first


def _fetch(page) -> None:
    _row(page, "released_assignments_list").get_by_role("button", name="Fetch").click()
    _row(page, "fetched_assignments_list").wait_for(timeout=60_000)


def _submissions(page) -> list[str]:
    """The timestamps that the Assignments tab lists under Submitted assignments."""
    return re.findall(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ UTC",
                      page.locator("#submitted_assignments_list").inner_text())


def _submit(page) -> None:
    before = len(_submissions(page))
    _row(page, "fetched_assignments_list").get_by_role("button", name="Submit").click()
    deadline = time.monotonic() + 60
    while len(_submissions(page)) <= before:
        assert time.monotonic() < deadline, "the submission does not show under Submitted assignments"
        time.sleep(0.5)


def _validate(page, notebook: str) -> None:
    """Click Validate of ``notebook`` in the Assignments tab; fail unless nbgrader says it passes."""
    row = page.locator("#fetched_assignments_list .nested_list_item", has_text=Path(notebook).stem).first
    if not row.is_visible():  # the chapter's notebooks are listed under it once it is expanded
        _row(page, "fetched_assignments_list").locator("a", has_text=CHAPTER).first.click()
        row.wait_for(timeout=30_000)
    row.get_by_role("button", name="Validate").click()
    dialog = page.locator(".jp-Dialog", has_text="Validation Results")
    dialog.wait_for(timeout=300_000)
    page.wait_for_function(
        "() => { const d = document.querySelector('.jp-Dialog'); "
        "return d && /(Success|failed|error|Error)/.test(d.textContent); }", timeout=300_000, polling=1000)
    message = dialog.inner_text()
    dialog.locator(".jp-Dialog-button").last.click()
    dialog.wait_for(state="detached", timeout=30_000)
    assert "Success! Your notebook passes all the tests" in message, f"Validate on {notebook}: {message[:2000]}"


def _hidden_test_lines(released: Path) -> list[str]:
    """The lines of the chapter's hidden tests that the student version in ``released`` does not show."""
    shown = "\n".join(cell.source for p in released.glob("*.ipynb") for cell in nbformat.read(p, as_version=4).cells)
    lines = []
    for path in sorted((CHAPTERS_DIR / CHAPTER).glob("*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            for block in re.findall(r"### BEGIN HIDDEN TESTS(.*?)### END HIDDEN TESTS", cell.source, re.S):
                lines += [ln.strip() for ln in block.splitlines() if len(ln.strip()) > 20 and ln.strip() not in shown]
    assert lines, f"expected hidden tests in {CHAPTER}"
    return lines


@pytest.mark.slow
@pytest.mark.skipif(_missing() is not None, reason=str(_missing()))
def test_a_class_on_the_hub_from_release_to_feedback(tmp_path) -> None:
    from .test_browser_e2e import CHROMIUM, CHROMIUM_ARGS  # skips without Chromium

    started = time.monotonic()
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)
    tag = secrets.token_hex(2)
    a, b, c = (f"dlbt{tag}-{x}" for x in "abc")
    # Not pytest's tmp_path: learners must pass through the folder that holds the exchange (mode 0711).
    root = Path(tempfile.mkdtemp(prefix="dlbook-classroom-"))
    root.chmod(0o711)
    roster = root / "roster.csv"
    roster.write_text("student_id,first_name,last_name,email\n" + "".join(
        f"{u},Learner,{u[-1].upper()},{u}@example.org\n" for u in (a, b, c)))
    notebooks = sorted(p.name for p in (CHAPTERS_DIR / CHAPTER).glob("*.ipynb"))
    exchange, course_dir = root / "exchange", root / "course"
    timings: dict[str, float] = {}
    hub, port = None, free_port()
    browser_cm = playwright_api.sync_playwright()
    pw = browser_cm.__enter__()
    browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    try:
        hub = Hub(root, roster, port, tmp_path / "classroom.log")
        timings["hub_start"] = hub.start_seconds
        assert (root / "room" / "credentials.csv").stat().st_mode & 0o777 == 0o600
        assert exchange.stat().st_mode & 0o7777 == 0o1777, oct(exchange.stat().st_mode)
        # Per learner: each one's Fetch gets their own values (chapter 1 declares variants).
        out = hub.cli("release", CHAPTER, "--per-student")
        assert "never overwrites" in out and "own copy" in out, out
        assert sorted(p.name for p in (exchange / "dlbook" / "outbound" / CHAPTER).glob("*.ipynb")) == notebooks
        personal = exchange / "dlbook" / "personal"
        assert sorted(p.name for p in personal.iterdir()) == [a, b, c]
        assert all((personal / u).stat().st_mode & 0o777 == 0o700 for u in (a, b, c))
        secret = (course_dir / variants.SECRET_FILE).read_bytes().strip()

        # The instructor's server has nbgrader's instructor tools; the formgrader lists the chapter.
        context, page = _login(browser, hub, "instructor")
        assert {"Formgrader", "Create assignment"} <= set(_nbgrader_menu(page)), _nbgrader_menu(page)
        page.goto(f"{hub.url}user/instructor/formgrader")
        page.get_by_text(CHAPTER, exact=True).first.wait_for(timeout=60_000)
        _screenshot(page, "0_instructor_formgrader.png")
        context.close()
        timings["instructor"] = time.monotonic() - started

        # Learner A: fetch, submit untouched, fill the solutions, Validate, submit again.
        context, page = _login(browser, hub, a)
        assert _nbgrader_menu(page) == ["Assignment List"], "a learner must not get nbgrader's instructor tools"
        assert page.request.get(f"{hub.url}user/{a}/formgrader").status == 404
        _assignments(page)
        _fetch(page)
        _submit(page)
        home_a = Path(f"/home/{a}") if Path(f"/home/{a}").is_dir() else Path(os.path.expanduser(f"~{a}"))
        fetched = home_a / CHAPTER
        owner = fetched.stat()
        for name in notebooks:  # A's own release, with A's values
            source = json.loads((CHAPTERS_DIR / CHAPTER / name).read_text())
            mine = json.loads((fetched / name).read_text())
            assert variants.notebook_values(mine) == variants.learner_values(source, secret, a), name
            if variants.declarations(source):
                assert mine["metadata"]["dlbook"]["variant_of"]["student"] == a
                assert variants.notebook_values(mine) != variants.notebook_values(source), name
        for name in notebooks:
            student_nb = nbformat.read(fetched / name, as_version=4)
            nbformat.write(fill_solutions(student_nb, nbformat.read(CHAPTERS_DIR / CHAPTER / name, as_version=4)),
                           fetched / name)
            os.chown(fetched / name, owner.st_uid, owner.st_gid)
        for name in notebooks:
            _validate(page, name)
        timings["validate"] = time.monotonic() - started
        _submit(page)
        _screenshot(page, "1_learner_assignments.png")
        assert len(_submissions(page)) == 2, _submissions(page)
        context.close()
        # A second fetch never overwrites the learner's work: nbgrader refuses.
        solved = (fetched / notebooks[0]).read_bytes()
        refused = _as(a, "env", f"HOME={home_a}", f"JUPYTER_CONFIG_PATH={root / 'room' / 'learner-jupyter'}",
                      sys.executable, "-m", "nbgrader", "fetch_assignment", CHAPTER, cwd=str(home_a))
        assert refused.returncode != 0 and "already" in (refused.stdout + refused.stderr), refused
        assert (fetched / notebooks[0]).read_bytes() == solved

        # Learner B submits the untouched chapter; learner C never logs in.
        context, page = _login(browser, hub, b)
        _assignments(page)
        _fetch(page)
        _submit(page)
        context.close()
        timings["learners"] = time.monotonic() - started

        # The instructor collects (A's latest only), grades with the confined grader, releases feedback.
        out = hub.cli("collect", CHAPTER)
        assert f"collected {CHAPTER} from 2 learners: {a}, {b}" in out and f"not submitted: {c}" in out, out
        out = hub.cli("grade", CHAPTER)
        assert re.search(rf"^{c}\s+not submitted$", out, re.M), out
        reports = {p.stem: json.loads(p.read_text()) for p in (course_dir / "graded" / CHAPTER / "reports").glob("*")}
        assert sorted(reports) == [a, b], "one report per learner who submitted, graded once"
        assert reports[a]["max_points"] > 0 and reports[a]["points"] == reports[a]["max_points"], reports[a]
        graded_with = {n["notebook"]: n["variant"]["values"] for n in reports[a]["notebooks"] if "variant" in n}
        assert graded_with and all(v == variants.learner_values(
            json.loads((CHAPTERS_DIR / CHAPTER / n).read_text()), secret, a) for n, v in graded_with.items())
        assert not [f for f in reports[a]["flags"] if f.startswith("variant_mismatch")], reports[a]["flags"]
        assert reports[b]["points"] == 0, reports[b]
        timings["grade"] = time.monotonic() - started
        out = hub.cli("feedback", CHAPTER)
        assert f"feedback released to: {a}, {b}" in out, out
        export = root / "grades.csv"
        hub.cli("export", "--to", str(export))
        with export.open() as f:
            rows = {r["student_id"]: r for r in csv.DictReader(f) if r["assignment"] == CHAPTER}
        assert set(rows) == {a, b, c}, rows
        assert float(rows[a]["score"]) == float(rows[a]["max_score"]) > 0 and float(rows[b]["score"]) == 0
        assert float(rows[c]["score"]) == 0 and not rows[c]["timestamp"], rows[c]

        # A logs in again, fetches the feedback and opens it.
        context, page = _login(browser, hub, a)
        _assignments(page)
        _row(page, "submitted_assignments_list").get_by_role("button", name="Fetch Feedback").click()
        page.locator("#submitted_assignments_list a", has_text="view feedback").first.wait_for(timeout=60_000)
        page.locator("#submitted_assignments_list a", has_text="view feedback").first.click()
        pages = sorted((home_a / CHAPTER / "feedback").glob("*/*.html"))
        assert [p.name for p in pages] == [Path(n).with_suffix(".html").name for n in notebooks], pages
        rel = pages[0].relative_to(home_a)
        page.goto(f"{hub.url}user/{a}/files/{rel}")
        page.wait_for_load_state()
        _screenshot(page, "2_learner_feedback.png")
        shown = page.inner_text("body")
        context.close()
        assert "grade" in shown.lower() or "points" in shown.lower(), shown[:1000]
        # The pages' text as written (code is split into highlighted spans, quotes are escaped).
        on_disk = html.unescape(re.sub(r"<[^>]+>", "", "\n".join(p.read_text() for p in pages)))
        hidden = _hidden_test_lines(exchange / "dlbook" / "outbound" / CHAPTER)
        leaked = [ln for ln in hidden if ln in shown or ln in on_disk]
        assert not leaked, f"hidden test code in A's feedback: {leaked[:3]}"

        # As A's system user: B's files, the exchange's inbound and feedback folders, the course: no access.
        home_b = Path(os.path.expanduser(f"~{b}"))
        assert _as(a, "cat", str(fetched / notebooks[0])).returncode == 0, "A must read A's own files"
        for attempt in (["ls", str(home_b)], ["cat", str(home_b / CHAPTER / notebooks[0])],
                        ["ls", str(exchange / "dlbook" / "inbound")],
                        ["sh", "-c", f"cat {exchange}/dlbook/inbound/{b}+{CHAPTER}+*/*.ipynb"],
                        ["ls", str(exchange / "dlbook" / "feedback")],
                        ["ls", str(course_dir)], ["cat", str(CHAPTERS_DIR / CHAPTER / notebooks[0])],
                        ["ls", str(personal / b)], ["cat", str(personal / b / CHAPTER / notebooks[0])],
                        ["cat", str(root / "room" / "credentials.csv")],
                        ["ls", str(root / "room" / "hub")]):
            result = _as(a, *attempt)
            # Denied; or, for the glob, not even found (inbound cannot be listed to expand it).
            assert result.returncode != 0 and not result.stdout, f"A could run {attempt}: {result}"
            assert "denied" in result.stderr or "No such file" in result.stderr, result
        assert list((exchange / "dlbook" / "inbound").glob(f"{b}+{CHAPTER}+*")), "B's submission is in inbound"
    except Exception:
        SHOTS.mkdir(parents=True, exist_ok=True)
        for ctx in browser.contexts:
            for p in ctx.pages:
                try:
                    p.screenshot(path=str(SHOTS / "failure.png"))
                except playwright_api.Error:
                    pass
        raise
    finally:
        print(f"classroom test timings so far (s): {timings}")
        browser.close()
        browser_cm.__exit__(None, None, None)
        if hub is not None:
            hub.stop()
        uids = set()
        for user in (a, b, c):
            try:
                uids.add(int(_sh("id", "-u", user).stdout))
            except ValueError:
                pass
        # The test's users, anything started on its folder (hub, instructor's server), its proxy.
        marks = [str(root), f"configurable-http-proxy --ip 127.0.0.1 --port {port} "]
        strays = _processes(uids, marks)
        for line in strays:  # stop what the test started, by id, before failing on it
            try:
                os.kill(int(line.split(":")[0]), signal.SIGKILL)
            except ProcessLookupError:
                pass
        for user in (a, b, c):
            _sh("userdel", "--remove", user)
        shutil.rmtree(root, ignore_errors=True)
    timings["total"] = time.monotonic() - started
    (SHOTS / "timings.json").write_text(json.dumps({k: round(v, 1) for k, v in timings.items()}, indent=2))
    print(f"classroom test timings (s): {timings}")
    assert hub.proc.returncode == 0, hub.log.read_text()[-3000:]
    assert not strays, f"processes left after the hub stopped: {strays}"
    assert not _processes(uids, marks)


def test_the_roster_is_checked_before_anything_is_created(tmp_path) -> None:
    path = tmp_path / "roster.csv"
    path.write_text("student_id,first_name,last_name,email\nada,Ada,L,ada@example.org\n")
    assert [s.student_id for s in read_roster(path)] == ["ada"]
    for text, expected in [
        ("id,first,last,email\nada,A,L,a@x\n", "expected the columns student_id,first_name,last_name,email"),
        ("student_id,first_name,last_name,email\nAda,A,L,a@x\n", "'Ada' is not usable as a system user name"),
        ("student_id,first_name,last_name,email\ninstructor,A,L,a@x\n", "'instructor' is not usable"),
        ("student_id,first_name,last_name,email\nada,A,L,a@x\nada,B,L,b@x\n", "got ada more than once"),
        ("student_id,first_name,last_name,email\n", "expected at least one learner"),
    ]:
        path.write_text(text)
        with pytest.raises(ClassroomError, match=re.escape(expected)):
            read_roster(path)
    with pytest.raises(ClassroomError, match="expected a roster CSV at"):
        read_roster(tmp_path / "missing.csv")


def test_the_example_roster_is_valid() -> None:
    from autograder.classroom import EXAMPLE_ROSTER

    assert len(read_roster(EXAMPLE_ROSTER)) == 3


def test_a_system_account_is_never_taken_for_a_learner() -> None:
    from autograder.classroom import Student, ensure_users

    with pytest.raises(ClassroomError, match="'daemon' is the system account with uid 1"):
        ensure_users([Student("daemon", "D", "Aemon", "daemon@example.org")])
