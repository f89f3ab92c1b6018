"""Real servers for the distributed-grading tests, on loopback, stopped whatever happens.

- :class:`Postgres`: a throwaway PostgreSQL cluster (Debian's ``postgresql`` package) in a temporary
  folder, run as ``nobody`` when the tests run as root (PostgreSQL refuses root), else as the current user.
- :class:`DaskCluster`: ``dask scheduler`` and ``python -m autograder worker`` processes, each in a
  process group of its own.

Both record every process they start (and its children) and check, when stopped, that none is left.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid: int) -> set[int]:
    """Every living descendant of ``pid`` (from /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def mentioning(text: str) -> set[int]:
    """Every living process whose command line contains ``text``, with its descendants (from /proc)."""
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found |= {int(entry.name)} | children(int(entry.name))
    return found


def wait_gone(pids: set[int], timeout: float = 20.0) -> set[int]:
    """Wait until no process of ``pids`` lives; return those still alive after ``timeout``."""
    deadline = time.monotonic() + timeout
    while (left := {p for p in pids if alive(p)}) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def wait_port(port: int, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"expected a server on port {port}, got exit code {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.2)
    raise RuntimeError(f"expected a server on 127.0.0.1:{port} within {timeout} s, got none")


class Postgres:
    """A PostgreSQL 15 cluster on 127.0.0.1 (trust authentication), removed by :meth:`stop`."""

    def __init__(self) -> None:
        if not (PG_BIN / "initdb").exists():
            raise FileNotFoundError(f"expected PostgreSQL 15 in {PG_BIN} (Debian package postgresql)")
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="dlbook-pg-"))
        self.data = self.root / "data"
        self.user = "nobody" if os.geteuid() == 0 else None
        self.pids: set[int] = set()
        if self.user:
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        try:
            self._run(PG_BIN / "initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8",
                      "--no-sync")
            options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off -c max_connections=50"
            self._run(PG_BIN / "pg_ctl", "-D", self.data, "-l", self.root / "log", "-o", options, "-w", "start")
            self.pids = {int((self.data / "postmaster.pid").read_text().split()[0])}
            self.pids |= children(next(iter(self.pids)))
        except BaseException:
            self.stop()
            raise

    def _run(self, *argv: object) -> None:
        cmd = [str(a) for a in argv]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120, cwd=self.root)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create the database ``name``; return its SQLAlchemy URL."""
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def query(self, database: str, sql: str) -> list[tuple]:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=database) as conn:
            return conn.execute(sql).fetchall()

    def stop(self) -> None:
        """Stop the server (immediate mode), check no process of it is left, remove its folder."""
        try:
            if (self.data / "postmaster.pid").exists():
                self.pids |= {p for pid in list(self.pids) for p in children(pid)}
                with contextlib.suppress(subprocess.SubprocessError):
                    self._run(PG_BIN / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
            left = wait_gone(self.pids)
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            assert not wait_gone(left, 5), f"expected no PostgreSQL process left, got {sorted(left)}"
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


class DaskCluster:
    """``dask scheduler`` and ``workers`` grading workers (``python -m autograder worker``), on 127.0.0.1."""

    def __init__(self, workers: int = 2, slots: int = 1, allowed_failures: int = 1) -> None:
        self.port = free_port()
        self.procs: dict[str, subprocess.Popen] = {}
        self.seen: set[int] = set()
        self.logs = Path(tempfile.mkdtemp(prefix="dlbook-dask-"))
        # the workers' temporary files: a worker killed by a test cannot remove its own, stop() does
        (self.logs / "tmp").mkdir(mode=0o755)
        env = {**os.environ, "TMPDIR": str(self.logs / "tmp")}
        try:
            self._start("scheduler", [sys.executable, "-m", "autograder", "scheduler", "--port", str(self.port),
                                      "--allowed-failures", str(allowed_failures)], env)
            wait_port(self.port, proc=self.procs["scheduler"])
            for i in range(workers):
                self._start(f"worker{i}", [sys.executable, "-m", "autograder", "worker", f"127.0.0.1:{self.port}",
                                           "--slots", str(slots), "--memory", "3"], env)
            self.wait_workers(workers * slots)
        except BaseException:
            self.stop()
            raise

    @property
    def executor(self) -> str:
        return f"dask://127.0.0.1:{self.port}"

    def _start(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        log = (self.logs / f"{name}.log").open("wb")
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True, cwd=Path(__file__).parent.parent)
        self.seen.add(self.procs[name].pid)

    def client(self):
        from distributed import Client

        return Client(f"tcp://127.0.0.1:{self.port}", timeout=30, set_as_default=False)

    def wait_workers(self, n: int, timeout: float = 120.0) -> None:
        with self.client() as client:
            client.wait_for_workers(n, timeout=timeout)

    def remember(self) -> None:
        """Note the current children of every process started (checked at :meth:`stop`)."""
        for proc in self.procs.values():
            self.seen |= children(proc.pid)

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM each process group, SIGKILL what is left, check no process started here remains."""
        try:
            self.remember()
            for proc in reversed(list(self.procs.values())):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
            left = wait_gone(self.seen, 15)
            for proc in self.procs.values():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            # A sandbox that a worker started just before a test killed it (SIGKILL) is not always seen by
            # remember(), and can outlive it; its bubblewrap command line names this cluster's folder.
            left |= mentioning(str(self.logs))
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            for proc in self.procs.values():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)
            still = wait_gone(self.seen | left, 10) | mentioning(str(self.logs))
            assert not still, f"expected no Dask process left, got {sorted(still)}"
        finally:
            shutil.rmtree(self.logs, ignore_errors=True)
