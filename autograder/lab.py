"""``make lab``: build the learner workspace, then run JupyterLab on it and say where to open it.

``python -m autograder lab [--port 8888] [--dest workspace]``; with ``--instructor`` (``make
formgrader``) it releases every chapter and serves the nbgrader course directory instead, opening on
nbgrader's formgrader.

- The workspace is synced first (new notebooks copied in, nothing ever overwritten), from the learner's
  own release (``build/learner``, not the instructor's course), regenerated only for chapters whose
  sources changed.
- If a JupyterLab server is already running on this workspace, its URL is printed and nothing new
  is started (a second ``make lab`` says so instead of failing on a busy port).
- The server listens on 127.0.0.1 with a fresh random token; the URL printed includes it.
- Ctrl-C stops the server cleanly (JupyterLab shuts its kernels down) and returns exit status 0.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
from pathlib import Path

from .config import CHAPTERS_DIR, DEFAULT_COURSE_DIR, LEARNER_COURSE_DIR, REPO_ROOT

GLOSSARY = "GLOSSARY.md"  # chapters/GLOSSARY.md -> workspace/GLOSSARY.md

# nbgrader's instructor tools, which a learner's JupyterLab does not show (make lab, Binder, the classroom).
INSTRUCTOR_LAB_PLUGINS = ("@jupyter/nbgrader:formgrader", "@jupyter/nbgrader:create-assignment",
                          "@jupyter/nbgrader:course-list")
INSTRUCTOR_SERVER_EXTENSIONS = ("nbgrader.server_extensions.formgrader", "nbgrader.server_extensions.course_list")


def write_learner_jupyter_config(folder: Path) -> Path:
    """Write a Jupyter configuration folder that turns nbgrader's instructor tools off; return it.

    ``labconfig/page_config.json`` disables (and locks) the Formgrader, Create Assignment and Course List
    plugins of JupyterLab, and ``jupyter_server_config.json`` the formgrader and course-list server
    extensions. Put the folder first on ``JUPYTER_CONFIG_PATH`` for a learner's server. The learner's own
    Validate button, the assignment list and the visible checks stay.
    """
    (folder / "labconfig").mkdir(parents=True, exist_ok=True)
    off = dict.fromkeys(INSTRUCTOR_LAB_PLUGINS, True)
    (folder / "labconfig" / "page_config.json").write_text(
        json.dumps({"disabledExtensions": off, "lockedExtensions": off}, indent=2))
    (folder / "jupyter_server_config.json").write_text(json.dumps(
        {"ServerApp": {"jpserver_extensions": dict.fromkeys(INSTRUCTOR_SERVER_EXTENSIONS, False)}}, indent=2))
    return folder


def learner_env(config_folder: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with ``config_folder`` first on ``JUPYTER_CONFIG_PATH``."""
    env = dict(os.environ if base is None else base)
    env["JUPYTER_CONFIG_PATH"] = os.pathsep.join(p for p in (str(config_folder), env.get("JUPYTER_CONFIG_PATH")) if p)
    return env


def running_servers(root: Path) -> list[dict]:
    """Return the running Jupyter servers (as listed by jupyter_server) whose root is ``root``."""
    from jupyter_server.serverapp import list_running_servers

    root = root.resolve()
    found = []
    for info in list_running_servers():
        server_root = info.get("root_dir") or info.get("notebook_dir") or ""
        if server_root and Path(server_root).resolve() == root and _pid_alive(info.get("pid")):
            found.append(info)
    return found


def _pid_alive(pid: object) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def server_url(info: dict, page: str = "lab") -> str:
    """Return the URL of ``page``, token included, of a running server described by ``info``."""
    base = info["url"].rstrip("/")
    token = info.get("token") or ""
    return f"{base}/{page}" + (f"?token={token}" if token else "")


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def lab_command(dest: Path, port: int, token: str) -> list[str]:
    """Return the command line that starts JupyterLab on ``dest``."""
    cmd = [
        sys.executable, "-m", "jupyter", "lab",
        f"--ServerApp.root_dir={dest}",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        "--ServerApp.open_browser=False",
        f"--IdentityProvider.token={token}",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # containers (Binder, CI, Docker) often run as root
    return cmd


def prepare_workspace(dest: Path, course_dir: Path = LEARNER_COURSE_DIR, source_dir: Path = CHAPTERS_DIR):
    """Release the chapters whose sources changed, then copy what is new into ``dest`` (never overwriting).

    The course's bilingual glossary (``GLOSSARY.md`` beside the chapters) goes to the workspace's top,
    where the notebooks' ``../GLOSSARY.md`` links find it. Return the
    :class:`~autograder.workspace.SyncReport`. ``make lab``, ``python -m autograder workspace``
    and Binder's postBuild all build the learner's workspace this way.
    """
    from . import course
    from .workspace import sync_workspace

    course.release(None, course_dir, source_dir, quiet=True, only_changed=True)
    glossary = Path(source_dir) / GLOSSARY
    return sync_workspace(course_dir / "release", dest, {GLOSSARY: glossary} if glossary.is_file() else None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autograder lab", description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=REPO_ROOT / "workspace")
    parser.add_argument("--port", type=int, default=8888)
    parser.add_argument("--course-dir", type=Path, default=None,
                        help="nbgrader course directory (default: build/learner, or build/course with --instructor)")
    parser.add_argument("--source-dir", type=Path, default=CHAPTERS_DIR)
    parser.add_argument("--instructor", action="store_true",
                        help="serve the course directory with nbgrader's formgrader instead of the workspace")
    args = parser.parse_args(argv)
    course_dir = (args.course_dir or (DEFAULT_COURSE_DIR if args.instructor else LEARNER_COURSE_DIR)).resolve()
    dest = course_dir if args.instructor else args.dest.resolve()
    page = "formgrader" if args.instructor else "lab"

    already = running_servers(dest) if dest.exists() else []
    if already:
        print(f"JupyterLab is already running on {dest} (pid {already[0]['pid']}). Open:\n\n"
              f"    {server_url(already[0], page)}\n\nStop it with Ctrl-C in its terminal before starting another.")
        return 0

    from . import course

    try:
        if args.instructor:
            course.release(None, course_dir, args.source_dir.resolve(), quiet=True, only_changed=True)
            print(f"Course directory: {course_dir} (student versions in release/)")
        else:
            report = prepare_workspace(dest, course_dir, args.source_dir.resolve())
            print(f"Workspace: {dest}")
            print(report.summary())
    except course.CourseError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    if not port_is_free(args.port):
        print(f"error: port {args.port} on 127.0.0.1 is in use by another program; "
              f"choose another with `make lab PORT=8890`", file=sys.stderr)
        return 2
    token = secrets.token_hex(24)
    url = f"http://127.0.0.1:{args.port}/{page}?token={token}"
    # nbgrader reads nbgrader_config.py from the working directory: the course's, for the formgrader.
    # A learner's JupyterLab does not show nbgrader's instructor tools; the instructor's (--instructor) does.
    env = None if args.instructor else learner_env(write_learner_jupyter_config(course_dir / "jupyter-learner"))
    proc = subprocess.Popen(lab_command(dest, args.port, token), stdout=sys.stdout, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, cwd=dest, env=env)
    announced = False
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            sys.stderr.write(line)
            if not announced and ("is running at" in line or "Use Control-C" in line):
                announced = True
                print(f"\n  dlbook is ready. Open this URL in your browser:\n\n      {url}\n\n"
                      f"  Stop with Ctrl-C.\n", flush=True)
        return proc.wait()
    except KeyboardInterrupt:
        # JupyterLab asks for confirmation on the first SIGINT; SIGTERM shuts it down at once, kernels too.
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        print("\nJupyterLab stopped." + ("" if args.instructor else f" Your notebooks are in {dest}"))
        return 0
    finally:
        if proc.poll() is None:  # never leave a server behind, whatever ended the launcher
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    sys.exit(main())
