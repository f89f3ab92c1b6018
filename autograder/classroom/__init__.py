"""``python -m autograder classroom``: a JupyterHub for a class, with the nbgrader exchange in between.

The setup of The Littlest JupyterHub, on one machine: one system user per learner, each learner's
JupyterLab started as that user by JupyterHub's LocalProcessSpawner, and nbgrader's exchange (a shared
folder) carrying assignments out and submissions and feedback back.

What a learner can and cannot reach (the file system enforces it, not the UI):

- A learner's server runs as the learner's own system user, in their home (mode 0700: no other
  learner can read it).
- The source notebooks (solutions, hidden tests), the nbgrader course directory (submissions,
  gradebook), the repository's ``.git`` and the hub's state (database, cookie secret, proxy token,
  passwords) are made readable by their owner (the instructor, root) only; ``start`` checks, as a
  learner, that a source notebook cannot be read and refuses to start if it can.
- The exchange is nbgrader's: ``outbound/`` is readable by all, ``inbound/`` is write-only for learners
  (no listing; each submission's folder name carries a random part), feedback files are named by a
  hash of the learner's own submission secret.
- nbgrader's instructor tools (Formgrader, Create Assignment, Course List) are switched off in the
  learners' JupyterLab and server; that is a convenience, the permissions above are the protection.
- Learner processes need to run the course's Python: where a folder above it is closed to them (a
  pyenv under ``/root``, a clone in a private temp folder), ``start`` says which and, only with
  ``--grant-traverse``, adds traverse-only permission (``o+x``: enter, never list or read) to them.

Authentication is jupyterhub-nativeauthenticator with signup switched off: ``start`` creates each
account with a generated password and writes them all to ``credentials.csv`` (mode 0600).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from .. import course
from ..config import CHAPTERS_DIR, DEFAULT_COURSE_DIR, REPO_ROOT, write_course_config
from ..lab import write_learner_jupyter_config

COURSE_ID = "dlbook"
INSTRUCTOR = "instructor"  # the hub account of the instructor; its server runs as the user who started the hub
NODE_DIR = Path(__file__).resolve().parent / "node"
PROXY = NODE_DIR / "node_modules" / ".bin" / "configurable-http-proxy"
DEFAULT_DIR = REPO_ROOT / "build" / "classroom"
DEFAULT_EXCHANGE = Path("/srv/nbgrader/exchange")
EXAMPLE_ROSTER = Path(__file__).resolve().parent / "roster.csv"
ROSTER_FIELDS = ("student_id", "first_name", "last_name", "email")
# A student id is the learner's system user name and hub name: what useradd accepts and JupyterHub keeps as is.
USER_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
# nbgrader's tools that learners do not get (lab plugins and server extensions).
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ClassroomError(RuntimeError):
    """The classroom cannot be set up or run; the message says what was expected and what to do."""


@dataclass(frozen=True)
class Student:
    student_id: str
    first_name: str
    last_name: str
    email: str


@dataclass
class Classroom:
    """A classroom's settings, kept in ``DIR/classroom.json`` so that the instructor's commands find them."""

    dir: str
    roster: str
    exchange: str
    course_dir: str
    source_dir: str
    ip: str = "127.0.0.1"
    port: int = 8000
    hub_port: int = 8081
    proxy_api_port: int = 8001
    instructor_user: str = "root"

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}/"

    @property
    def private(self) -> Path:
        """The hub's secrets: database, cookie secret, proxy token, logs (mode 0700)."""
        return Path(self.dir) / "hub"

    @property
    def credentials(self) -> Path:
        return Path(self.dir) / "credentials.csv"

    def config_dir(self, role: str) -> Path:
        """The Jupyter configuration folder of the ``learner`` or ``instructor`` servers."""
        return Path(self.dir) / f"{role}-jupyter"

    def save(self) -> None:
        path = Path(self.dir) / "classroom.json"
        path.write_text(json.dumps(asdict(self), indent=2))
        path.chmod(0o644)

    @classmethod
    def load(cls, folder: Path) -> Classroom:
        path = Path(folder) / "classroom.json"
        if not path.is_file():
            raise ClassroomError(f"expected a classroom in {folder} (its classroom.json): start one first with "
                                 f"`python -m autograder classroom start --dir {folder}`")
        return cls(**json.loads(path.read_text()))

    def students(self) -> list[Student]:
        return read_roster(Path(self.roster))


def read_roster(path: Path) -> list[Student]:
    """Return the learners of a roster CSV (``student_id,first_name,last_name,email``), checked."""
    if not Path(path).is_file():
        raise ClassroomError(f"expected a roster CSV at {path} with columns {','.join(ROSTER_FIELDS)} "
                             f"(an example: {EXAMPLE_ROSTER})")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != ROSTER_FIELDS:
            raise ClassroomError(f"roster {path}: expected the columns {','.join(ROSTER_FIELDS)}, "
                                 f"got {','.join(reader.fieldnames or [])}")
        students = [Student(**{k: (row[k] or "").strip() for k in ROSTER_FIELDS}) for row in reader]
    ids = [s.student_id for s in students]
    for line, sid in enumerate(ids, start=2):
        if not USER_NAME.match(sid) or sid == INSTRUCTOR:
            raise ClassroomError(f"roster {path}, line {line}: student_id {sid!r} is not usable as a system user "
                                 f"name: expected a lowercase letter, then up to 31 lowercase letters, digits, "
                                 f"'_' or '-' (and not {INSTRUCTOR!r})")
    duplicates = sorted({s for s in ids if ids.count(s) > 1})
    if duplicates:
        raise ClassroomError(f"roster {path}: each student_id once, got {', '.join(duplicates)} more than once")
    if not students:
        raise ClassroomError(f"roster {path}: expected at least one learner, got none")
    return students


# --- system users and permissions ---------------------------------------------------------------

def require_root() -> None:
    if os.geteuid() != 0:
        raise ClassroomError(
            f"the classroom creates a system user per learner and starts their servers as them, which needs "
            f"root; this process runs as uid {os.geteuid()}. Run it with sudo (`sudo make classroom`, or "
            f"`sudo .venv/bin/python -m autograder classroom start`) on the machine that hosts the class.")


def ensure_users(students: list[Student]) -> list[str]:
    """Create a system user (home mode 0700) for every learner who has none; return the names created."""
    created = []
    for s in students:
        try:
            entry = pwd.getpwnam(s.student_id)
        except KeyError:
            comment = f"{s.first_name} {s.last_name}".strip().replace(":", " ") or s.student_id
            subprocess.run([_tool("useradd"), "--create-home", "--shell", "/bin/bash", "--comment", comment,
                            s.student_id], check=True, capture_output=True, text=True)
            created.append(s.student_id)
            entry = pwd.getpwnam(s.student_id)
        if entry.pw_uid < 1000:  # root, daemons (postgres, www-data, ...): never a learner, never touched
            raise ClassroomError(f"student_id {s.student_id!r} is the system account with uid {entry.pw_uid}: "
                                 f"expected a new name or a regular user (uid 1000 or more)")
        Path(entry.pw_dir).chmod(0o700)  # Debian's useradd makes 0755 homes: learners must not read each other's
    return created


def as_user(user: str, *cmd: str) -> subprocess.CompletedProcess:
    """Run ``cmd`` as the system user ``user`` (with ``runuser``, no password); return the finished process."""
    return subprocess.run([_tool("runuser"), "-u", user, "--", *cmd], capture_output=True, text=True,
                          cwd="/", env={"PATH": SYSTEM_PATH, "LANG": "C.UTF-8"})


def _tool(name: str) -> str:
    """The path of a system tool (``useradd``, ``runuser``: in sbin, which a sudo'd PATH may lack)."""
    found = shutil.which(name, path=SYSTEM_PATH)
    if not found:
        raise ClassroomError(f"expected the system tool {name!r} in {SYSTEM_PATH} (Debian package passwd/util-linux)")
    return found


def closed_ancestors(paths: list[Path]) -> list[Path]:
    """Return the folders above (and including the folders among) ``paths`` that others cannot enter."""
    closed: list[Path] = []
    for path in paths:
        for folder in [*reversed(Path(path).parents), Path(path)]:
            if folder.is_dir() and not folder.stat().st_mode & stat.S_IXOTH and folder not in closed:
                closed.append(folder)
    return closed


def learner_paths() -> list[Path]:
    """What a learner's server must reach: the interpreter (its real path), the environment, dlbook."""
    import dlbook

    return [Path(os.path.realpath(sys.executable)).parent, Path(sys.prefix), Path(dlbook.__file__).parent]


def check_reachable(user: str, room: Classroom, grant_traverse: bool) -> list[Path]:
    """Make sure ``user`` can run this Python with dlbook and nbgrader, read the learners' Jupyter
    configuration and use the exchange; return the folders opened for it.

    Folders are opened (``o+x``) only with ``grant_traverse``; otherwise the error says which and how.
    """
    config = room.config_dir("learner") / "nbgrader_config.py"
    # Finding and reading the packages' files proves access without importing them (torch takes seconds).
    probe = [sys.executable, "-c", "import os, importlib.util as u; "
             "[open(u.find_spec(m).origin).close() for m in ('dlbook', 'torch', 'nbgrader', 'jupyterhub')]; "
             f"open({str(config)!r}).close(); os.listdir({room.exchange!r})"]
    if as_user(user, *probe).returncode == 0:
        return []
    closed = closed_ancestors([*learner_paths(), config.parent, Path(room.exchange)])
    if closed and grant_traverse:
        for folder in closed:
            folder.chmod(folder.stat().st_mode | stat.S_IXOTH)
            print(f"granted traverse-only permission (o+x, no listing or reading) on {folder}")
    result = as_user(user, *probe)
    if result.returncode != 0:
        if closed and not grant_traverse:
            raise ClassroomError(
                f"learner {user!r} cannot run {sys.executable} or reach the exchange: these folders are closed "
                f"to other users: {', '.join(map(str, closed))}. Either install the course somewhere learners "
                f"can reach, or let them pass through (not list or read) with "
                f"`chmod o+x {' '.join(map(str, closed))}`, which `--grant-traverse` does for you.")
        raise ClassroomError(f"learner {user!r} cannot run {sys.executable} with dlbook and nbgrader: "
                             f"{(result.stderr or result.stdout).strip()[-800:]}")
    return closed if grant_traverse else []


def restrict(paths: list[Path]) -> list[Path]:
    """Remove every permission of group and others on ``paths`` (folders); return those changed."""
    changed = []
    for path in paths:
        if path.is_dir() and path.stat().st_mode & 0o077:
            path.chmod(path.stat().st_mode & 0o700)
            changed.append(path)
    return changed


def check_secret(user: str, paths: list[Path]) -> None:
    """Refuse to go on if the learner ``user`` can read any of ``paths``."""
    readable = [p for p in paths if as_user(user, "test", "-r", str(p)).returncode == 0]
    if readable:
        raise ClassroomError(f"learner {user!r} can read {', '.join(map(str, readable))}: expected them closed to "
                             f"learners (solutions, hidden tests, submissions). Check the permissions of the "
                             f"folders above them.")


def ensure_exchange(exchange: Path) -> None:
    """Create nbgrader's exchange folder with the mode nbgrader expects (1777: all write, sticky)."""
    exchange.mkdir(parents=True, exist_ok=True)
    exchange.chmod(0o1777)


# --- accounts ----------------------------------------------------------------------------------

def ensure_passwords(path: Path, names: list[str]) -> dict[str, str]:
    """Return ``{account: password}``; a new random password for accounts the file (mode 0600) lacks."""
    known: dict[str, str] = {}
    if path.exists():
        with path.open(newline="") as f:
            known = {row["username"]: row["password"] for row in csv.DictReader(f)}
    passwords = {n: known.get(n) or secrets.token_urlsafe(12) for n in names}
    fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["username", "password", "role"])
        for name, password in passwords.items():
            w.writerow([name, password, "instructor" if name == INSTRUCTOR else "learner"])
    os.replace(path.with_suffix(".tmp"), path)
    path.chmod(0o600)
    return passwords


def ensure_hub_accounts(db_url: str, passwords: dict[str, str]) -> list[str]:
    """Create the nativeauthenticator account (authorized) of each name it lacks; return those created.

    An existing account keeps its password (the learner may have changed it on the hub).
    """
    import bcrypt
    from jupyterhub import orm
    from nativeauthenticator.orm import UserInfo

    session = orm.new_session_factory(db_url)()
    created = []
    try:
        for name, password in passwords.items():
            if UserInfo.find(session, name) is None:
                session.add(UserInfo(username=name, password=bcrypt.hashpw(password.encode(), bcrypt.gensalt()),
                                     is_authorized=True))
                created.append(name)
        session.commit()
    finally:
        session.close()
    return created


# --- Jupyter configuration of the single-user servers --------------------------------------------

NBGRADER_LEARNER = '''\
# Generated by `python -m autograder classroom`: what a learner's nbgrader sees.
c = get_config()  # noqa: F821
c.CourseDirectory.course_id = {course_id!r}
c.Exchange.root = {exchange!r}
# Fetch gives a learner their own release (`classroom release CHAPTER --per-student`) when there is one
c.ExchangeFactory.fetch_assignment = "autograder.classroom.personal_fetch.PersonalFetchAssignment"
'''

NBGRADER_INSTRUCTOR = '''\
# Generated by `python -m autograder classroom`: the course, and the exchange, for the instructor's server.
from autograder.config import configure

c = get_config()  # noqa: F821
configure(c, course_dir={course_dir!r}, source_dir={source_dir!r})
c.Exchange.root = {exchange!r}
'''


def write_jupyter_configs(room: Classroom) -> None:
    """Write the learners' (instructor tools off) and the instructor's Jupyter configuration folders."""
    learner = write_learner_jupyter_config(room.config_dir("learner"))
    (learner / "nbgrader_config.py").write_text(NBGRADER_LEARNER.format(course_id=COURSE_ID, exchange=room.exchange))
    for path in [learner, learner / "labconfig", *learner.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    instructor = room.config_dir("instructor")
    instructor.mkdir(mode=0o700, exist_ok=True)
    (instructor / "nbgrader_config.py").write_text(NBGRADER_INSTRUCTOR.format(
        course_dir=room.course_dir, source_dir=room.source_dir, exchange=room.exchange))


HUB_CONFIG = '''\
# Generated by `python -m autograder classroom`; edit autograder/classroom/hub.py instead.
from autograder.classroom.hub import configure

configure(get_config(), {dir!r})  # noqa: F821
'''


def prepare(room: Classroom, grant_traverse: bool = False) -> dict[str, str]:
    """Set up users, permissions, exchange, accounts and configuration of ``room``; return the passwords."""
    require_root()
    if not PROXY.exists():
        raise ClassroomError(f"expected configurable-http-proxy at {PROXY}: install it with "
                             f"`npm ci --prefix {NODE_DIR}` (`make classroom` does)")
    students = room.students()
    folder, course_dir, source_dir = Path(room.dir), Path(room.course_dir), Path(room.source_dir)
    created = ensure_users(students)
    if created:
        print(f"created system users: {', '.join(created)}")
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o711)  # learners pass through to their Jupyter configuration, never list the rest
    room.private.mkdir(mode=0o700, exist_ok=True)
    write_course_config(course_dir, source_dir)
    secret = [course_dir, source_dir, room.private]
    if (REPO_ROOT / ".git").is_dir() and source_dir.is_relative_to(REPO_ROOT):
        secret.append(REPO_ROOT / ".git")  # the source notebooks are in its history too
    for path in restrict(secret):
        print(f"closed to group and others (solutions, hidden tests, submissions, secrets): {path}")
    ensure_exchange(Path(room.exchange))
    write_jupyter_configs(room)
    (room.private / "jupyterhub_config.py").write_text(HUB_CONFIG.format(dir=str(folder)))
    token = room.private / "proxy_token"
    if not token.exists():
        fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    passwords = ensure_passwords(room.credentials, [INSTRUCTOR, *(s.student_id for s in students)])
    ensure_hub_accounts(f"sqlite:///{room.private / 'jupyterhub.sqlite'}", passwords)
    check_reachable(students[0].student_id, room, grant_traverse)
    notebooks = sorted(source_dir.glob("*/*.ipynb"))[:1] + [course_dir / "nbgrader_config.py", room.credentials]
    check_secret(students[0].student_id, notebooks)
    room.save()
    return passwords


def import_students(students: list[Student], course_dir: Path, source_dir: Path) -> None:
    """Add the roster to the course's gradebook, so that a learner who submits nothing is listed too."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "students.csv"
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "first_name", "last_name", "email"])
            w.writerows([s.student_id, s.first_name, s.last_name, s.email] for s in students)
        course.run_nbgrader(course_dir, "db", "student", "import", str(path), source_dir=source_dir, quiet=True)


# --- running the hub ---------------------------------------------------------------------------

def wait_for_hub(url: str, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ClassroomError(f"JupyterHub exited with status {proc.returncode} before answering at {url}")
        try:
            with urllib.request.urlopen(f"{url}hub/api", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise ClassroomError(f"JupyterHub did not answer at {url} within {seconds:.0f} s")


def serve(room: Classroom) -> int:
    """Run the hub in the foreground until Ctrl-C or SIGTERM; stop it and every server it started.

    While the hub starts, the roster goes into the course's gradebook.
    """
    log = room.private / "jupyterhub.log"
    with log.open("a") as out:
        proc = subprocess.Popen([sys.executable, "-m", "jupyterhub", "-f", str(room.private / "jupyterhub_config.py")],
                                cwd=room.private, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    def on_signal(_signum, _frame) -> None:
        raise KeyboardInterrupt

    # Both stop the hub, even where a shell started this in the background with SIGINT ignored.
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        import_students(room.students(), Path(room.course_dir), Path(room.source_dir))
        wait_for_hub(room.url, proc)
        print(f"\n  The classroom hub is ready: {room.url}\n"
              f"  Accounts and passwords (instructor: {INSTRUCTOR}): {room.credentials}\n"
              f"  Exchange: {room.exchange}   Hub log: {log}\n  Stop with Ctrl-C.\n", flush=True)
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    except (ClassroomError, course.CourseError) as err:
        print(f"error: {err}\n{log.read_text()[-3000:]}", file=sys.stderr)
        return 2
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if proc.poll() is None:
            # SIGTERM: JupyterHub stops every single-user server and the proxy it started, then exits.
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        print("classroom hub stopped", flush=True)


# --- the instructor's loop -----------------------------------------------------------------------

def _exchange_args(room: Classroom) -> list[str]:
    return [f"--Exchange.root={room.exchange}", f"--CourseDirectory.course_id={COURSE_ID}"]


def release(room: Classroom, chapter: str, per_student: bool = False) -> Path:
    """Generate the student version of ``chapter`` and put it in the exchange's outbound folder.

    ``per_student``: also one copy per roster learner with their own values (:mod:`autograder.variants`)
    in ``EXCHANGE/<course>/personal/<student>/``, which their *Fetch* hands out (:mod:`.personal_fetch`).
    """
    course_dir, source_dir = Path(room.course_dir), Path(room.source_dir)
    if per_student:
        from ..variants import VariantError, release_per_student

        try:
            release_per_student([chapter], Path(room.roster), course_dir, source_dir, exchange=Path(room.exchange),
                                course_id=COURSE_ID, quiet=True)
        except VariantError as err:
            raise ClassroomError(str(err)) from None
    else:
        course.release([chapter], course_dir, source_dir, quiet=True)
    course.run_nbgrader(course_dir, "release_assignment", chapter, "--force", *_exchange_args(room),
                        source_dir=source_dir, quiet=True)
    return Path(room.exchange) / COURSE_ID / "outbound" / chapter


def collect(room: Classroom, chapter: str) -> list[str]:
    """Copy each learner's latest submission of ``chapter`` from the exchange to the course; return who submitted.

    ``--update``: a later submission replaces the one collected before, so only the latest is graded.
    """
    course_dir, source_dir = Path(room.course_dir), Path(room.source_dir)
    course._check_chapter(chapter, source_dir)
    course.run_nbgrader(course_dir, "collect", chapter, "--update", *_exchange_args(room), source_dir=source_dir,
                        quiet=True)
    submitted = course_dir / "submitted"
    return sorted(s.student_id for s in room.students() if (submitted / s.student_id / chapter).is_dir())


def grade(room: Classroom, chapter: str, workers: int | None = None, fast: bool = True):
    """Grade the collected submissions of ``chapter`` with the confined grader; return its ``BatchResult``.

    Scores go to the course's gradebook; reports and feedback pages to ``COURSE_DIR/graded/CHAPTER``.
    """
    from ..grade import Settings
    from ..grade import grade as confined_grade
    from ..grading.deadlines import PolicyError, load_policy

    course_dir, source_dir = Path(room.course_dir), Path(room.source_dir)
    course._check_chapter(chapter, source_dir)
    policy_file = course_dir / "policy.toml"  # due dates and late penalties, if the course has them (README)
    try:
        policy = load_policy(policy_file, course.list_chapters(source_dir)) if policy_file.is_file() else None
    except PolicyError as err:
        raise ClassroomError(str(err)) from None
    with tempfile.TemporaryDirectory(prefix="classroom-") as tmp:
        # Only roster learners' submissions, each the latest collected one (nbgrader's layout).
        batch = Path(tmp) / "submitted"
        batch.mkdir()
        for s in room.students():
            folder = course_dir / "submitted" / s.student_id / chapter
            if folder.is_dir():
                shutil.copytree(folder, batch / s.student_id / chapter, symlinks=True)
        if not any(batch.iterdir()):
            raise ClassroomError(f"nothing to grade for {chapter}: no learner's submission in "
                                 f"{course_dir / 'submitted'} (run `python -m autograder classroom collect "
                                 f"{chapter}` first)")
        out = course_dir / "graded" / chapter
        from ..variants import VariantError, for_grading

        try:  # learners who got their own release (`release --per-student`) are graded with their values
            mine = for_grading(course_dir, chapter)
        except VariantError as err:
            raise ClassroomError(str(err)) from None
        return confined_grade(chapter, batch, source_dir, out, workers=workers,
                              db_url=f"sqlite:///{course_dir / 'gradebook.db'}", settings=Settings(fast=fast),
                              progress=False, policy=policy, variants=mine)


def release_feedback(room: Classroom, chapter: str) -> list[str]:
    """Put the grader's feedback pages of ``chapter`` in the exchange for the learners; return who gets one.

    nbgrader finds a learner's feedback by the timestamp and secret of the submission graded, so both
    are copied beside the page.
    """
    course_dir, source_dir = Path(room.course_dir), Path(room.source_dir)
    graded = course_dir / "graded" / chapter / "feedback"
    released = []
    for s in room.students():
        pages = sorted((graded / s.student_id).glob("*.html"))
        submitted = course_dir / "submitted" / s.student_id / chapter
        if not pages or not (submitted / "timestamp.txt").exists():
            continue
        dest = course_dir / "feedback" / s.student_id / chapter
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        for page in pages:
            shutil.copy2(page, dest / page.name)
        for name in ("timestamp.txt", "submission_secret.txt"):
            shutil.copy2(submitted / name, dest / name)
        released.append(s.student_id)
    if not released:
        raise ClassroomError(f"no feedback to release for {chapter}: expected graded submissions in {graded} "
                             f"(run `python -m autograder classroom grade {chapter}` first)")
    course.run_nbgrader(course_dir, "release_feedback", chapter, *_exchange_args(room), source_dir=source_dir,
                        quiet=True)
    return released


# --- command line ------------------------------------------------------------------------------

def main(argv: list[str], course_dir: Path = DEFAULT_COURSE_DIR, source_dir: Path = CHAPTERS_DIR) -> int:
    parser = argparse.ArgumentParser(prog="python -m autograder classroom", description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR,
                        help="the classroom's state: settings, hub database, passwords (default: build/classroom)")
    # --dir also after the command (`classroom grade 01_backprop --dir DIR`).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dir", type=Path, default=argparse.SUPPRESS, help="as above")
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("start", parents=[common], help="create the accounts and run the hub (the default command)")
    p.add_argument("--roster", type=Path, default=EXAMPLE_ROSTER,
                   help="CSV of student_id,first_name,last_name,email (default: the example roster)")
    p.add_argument("--exchange", type=Path, default=DEFAULT_EXCHANGE, help="nbgrader exchange folder "
                   f"(default: {DEFAULT_EXCHANGE})")
    p.add_argument("--ip", default="127.0.0.1", help="address the hub listens on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="the hub's port (default: 8000)")
    p.add_argument("--grant-traverse", action="store_true",
                   help="let learners pass through (o+x, never list or read) folders above the course's Python")
    for name in ("release", "collect", "grade", "feedback"):
        p = sub.add_parser(name, parents=[common], help={
            "release": "generate a chapter's student version and release it to the exchange",
            "collect": "collect the latest submission of each learner from the exchange",
            "grade": "grade the collected submissions with the confined grader (scores to the gradebook)",
            "feedback": "release the grader's feedback pages to the learners through the exchange"}[name])
        p.add_argument("chapter")
        if name == "release":
            p.add_argument("--per-student", action="store_true",
                           help="also one copy per learner with their own values, which their Fetch gets")
        if name == "grade":
            p.add_argument("--workers", type=int, default=None, help="parallel kernels (default: the cores)")
            p.add_argument("--full", action="store_true", help="run notebooks at full settings (slow)")
    p = sub.add_parser("export", parents=[common], help="export every grade as CSV")
    p.add_argument("--to", type=Path, default=REPO_ROOT / "build" / "grades.csv")
    args = parser.parse_args(argv)
    folder = args.dir.resolve()
    try:
        if args.command in (None, "start"):
            defaults = parser.parse_args(["start"]) if args.command is None else args
            from dlbook.distributed import free_port

            room = Classroom(dir=str(folder), roster=str(defaults.roster.resolve()),
                             exchange=str(defaults.exchange.resolve()), course_dir=str(course_dir),
                             source_dir=str(source_dir), ip=defaults.ip, port=defaults.port, hub_port=free_port(),
                             proxy_api_port=free_port(), instructor_user=pwd.getpwuid(os.geteuid()).pw_name)
            prepare(room, defaults.grant_traverse)
            return serve(room)
        _run_command(args, Classroom.load(folder))
    except (ClassroomError, course.CourseError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as err:
        print(f"error: `{' '.join(err.cmd)}` failed: {err.stderr or err.stdout}", file=sys.stderr)
        return 2
    return 0


def _run_command(args: argparse.Namespace, room: Classroom) -> None:
    """``release``, ``collect``, ``grade``, ``feedback`` or ``export`` on an existing classroom."""
    if args.command == "release":
        print(f"released {args.chapter} to {release(room, args.chapter, args.per_student)}")
        if args.per_student:
            print(f"each learner's own copy (their values): {Path(room.exchange) / COURSE_ID / 'personal'}")
        print("learners fetch it in JupyterLab's Assignments tab; a second fetch never overwrites their copy")
    elif args.command == "collect":
        got = collect(room, args.chapter)
        missing = [s.student_id for s in room.students() if s.student_id not in got]
        print(f"collected {args.chapter} from {len(got)} learners: {', '.join(got) or '-'}")
        print(f"not submitted: {', '.join(missing) or '-'}")
    elif args.command == "grade":
        result = grade(room, args.chapter, args.workers, fast=not args.full)
        print(result.summary())
        graded = {r["student"] for r in result.reports}
        for s in room.students():
            if s.student_id not in graded:
                print(f"{s.student_id:<24} not submitted")
    elif args.command == "feedback":
        print(f"feedback released to: {', '.join(release_feedback(room, args.chapter))}")
        print("learners get it with 'Fetch Feedback' in the Assignments tab")
    elif args.command == "export":
        print(f"grades written to {course.export(args.to, Path(room.course_dir), Path(room.source_dir))}")
