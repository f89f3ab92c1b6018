"""A confined IPython kernel for learner code: bubblewrap where it runs, rlimits and a process group always.

With bubblewrap (Linux, Debian package ``bubblewrap``) the kernel runs in new PID, network, IPC and UTS
namespaces with a file system built from read-only system and Python directories, the dlbook
package, and one writable directory ``/grade`` holding a copy of the learner's submission folder
(its scratch space; ``/tmp`` is a private tmpfs). The course source, the hidden tests, the gradebook
and other submissions are simply not in that file system. When the grader runs as root, the kernel
drops to user ``nobody`` (so that the process-count limit applies). Killing the sandbox kills every
process the learner started, daemons included (the PID namespace ends with its first process).

Without bubblewrap (macOS, containers without namespaces) the kernel runs in its own process group
with the same rlimits, in a temporary copy of the submission folder; it is **not** confined on disk
or on the network, and a process that calls ``setsid`` can outlive grading. ``bwrap_available()``
says which mode is in use; the report records it.

The kernel talks to the grader over Unix sockets in ``/grade/.ipc`` (no network needed).
"""

from __future__ import annotations

import functools
import json
import os
import queue
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

NOBODY = 65534
SANDBOX_WORK = "/grade"
SANDBOX_GRADER = "/grader"
SANDBOX_JUDGE = "/judge"  # read-only for the kernel: the judge's socket lives here


@dataclass
class Limits:
    """Resource limits of one learner kernel (defaults documented in the README)."""

    memory_bytes: int = 4 << 30  # RLIMIT_AS: virtual memory of each process
    cpu_seconds: int = 1800  # RLIMIT_CPU: CPU time of each process
    processes: int = 128  # RLIMIT_NPROC: processes and threads of the sandbox user
    file_bytes: int = 64 << 20  # RLIMIT_FSIZE: size of any file written
    network: bool = False  # True keeps the host network (never needed by the course)

    def as_dict(self) -> dict:
        return asdict(self)


@functools.lru_cache(maxsize=1)
def bwrap_available() -> bool:
    """Return True when bubblewrap is installed and can create the namespaces the sandbox needs."""
    exe = shutil.which("bwrap")
    if not exe or sys.platform != "linux":
        return False
    cmd = [exe, *_namespace_args(), "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "true"]
    try:
        return subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _namespace_args(network: bool = False) -> list[str]:
    args = ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try", "--die-with-parent",
            "--new-session"]
    if not network:
        args.append("--unshare-net")
    if os.geteuid() != 0:
        args.append("--unshare-user")  # unprivileged bubblewrap needs a user namespace
    return args


def _user_task_count(uid: int) -> int:
    """Return how many tasks (processes and threads) ``uid`` runs now (RLIMIT_NPROC counts them all)."""
    count = 0
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    count += len(os.listdir(f"/proc/{entry}/task"))
            except OSError:
                continue
    return count


def _dirs_with_parents(path: Path) -> list[str]:
    """bwrap arguments creating each missing parent of ``path`` world-readable (bwrap's default is 0700)."""
    args: list[str] = []
    for parent in reversed(path.parents):
        if str(parent) != "/":
            args += ["--perms", "0755", "--dir", str(parent)]
    return args


def _dlbook_dir() -> Path:
    """Return the folder of the dlbook package the grader itself imports."""
    import dlbook

    return Path(dlbook.__file__).resolve().parent


def _readonly_paths() -> list[Path]:
    """System and Python directories the kernel needs to run (read-only)."""
    paths = [Path(p) for p in ("/usr", "/bin", "/lib", "/lib64", "/lib32", "/sbin", "/etc") if Path(p).exists()]
    paths += [Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve(), Path(sys.prefix)]
    paths.append(_dlbook_dir())  # editable installs live outside the venv
    data = Path(os.environ.get("DLBOOK_DATA", Path.home() / ".cache" / "dlbook"))
    if data.is_dir():
        paths.append(data.resolve())
    unique: list[Path] = []
    for p in paths:
        if p.exists() and not any(p == u or u in p.parents and str(u) != "/" for u in unique):
            unique.append(p)
    return unique


class Kernel:
    """One confined ipykernel for one submission notebook; ``start``, ``client``, ``alive``, ``stop``."""

    def __init__(self, workdir_src: Path | None, limits: Limits, env: dict[str, str], use_bwrap: bool | None = None):
        self.limits = limits
        self.use_bwrap = bwrap_available() if use_bwrap is None else use_bwrap
        self.run_dir = Path(tempfile.mkdtemp(prefix="ag-"))  # short: Unix socket paths are limited
        self.work = self.run_dir / "work"
        self.grader_dir = self.run_dir / "grader"
        if workdir_src is not None and workdir_src.is_dir():
            shutil.copytree(workdir_src, self.work, symlinks=True)
        else:
            self.work.mkdir()
        self.grader_dir.mkdir()
        self.judge_dir = self.run_dir / "judge"
        self.judge_dir.mkdir()
        shutil.copyfile(Path(__file__).with_name("kernel_guard.py"), self.grader_dir / "_dlbook_guard.py")
        (self.work / ".ipc").mkdir()
        self.drop_to_nobody = self.use_bwrap and os.geteuid() == 0
        if self.drop_to_nobody:
            for root, dirs, files in os.walk(self.work):
                for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                    os.lchown(name, NOBODY, NOBODY)
        for d in (self.run_dir, self.grader_dir, self.judge_dir):
            d.chmod(0o755)
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.client = None
        self.key = secrets.token_hex(16)

    def inside(self, host_path: Path) -> str:
        """Return the path the kernel sees for ``host_path`` (under the work or grader directory)."""
        if not self.use_bwrap:
            return str(host_path)
        for host, inner in ((self.work, SANDBOX_WORK), (self.grader_dir, SANDBOX_GRADER),
                            (self.judge_dir, SANDBOX_JUDGE)):
            if host_path == host or host in host_path.parents:
                return inner + "/" + str(host_path.relative_to(host)) if host_path != host else inner
        raise ValueError(f"{host_path} is not visible in the sandbox")

    def _connection(self, ip: str) -> dict:
        return {"transport": "ipc", "ip": ip, "shell_port": 1, "iopub_port": 2, "stdin_port": 3,
                "control_port": 4, "hb_port": 5, "key": self.key, "signature_scheme": "hmac-sha256",
                "kernel_name": "python3"}

    def _preexec(self) -> None:
        lim = self.limits
        for which, value in ((resource.RLIMIT_AS, lim.memory_bytes), (resource.RLIMIT_CPU, lim.cpu_seconds),
                             (resource.RLIMIT_FSIZE, lim.file_bytes), (resource.RLIMIT_CORE, 0)):
            resource.setrlimit(which, (value, value))
        nproc = lim.processes if self.drop_to_nobody else self._nproc_base + lim.processes
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))

    def command(self) -> list[str]:
        inner_conn = self.inside(self.grader_dir / "kernel.json")
        python = [sys.executable, "-m", "ipykernel_launcher", "-f", inner_conn,
                  "--IPKernelApp.exec_lines=['import _dlbook_guard; _dlbook_guard.install()']"]
        if not self.use_bwrap:
            return python
        # The private /tmp comes first: a venv or course that itself lives under /tmp is bound on top of it.
        args = ["bwrap", *_namespace_args(self.limits.network), "--tmpfs", "/tmp"]
        for path in _readonly_paths():
            args += [*_dirs_with_parents(path), "--ro-bind", str(path), str(path)]
        args += ["--bind", str(self.work), SANDBOX_WORK, "--ro-bind", str(self.grader_dir), SANDBOX_GRADER,
                 "--ro-bind", str(self.judge_dir), SANDBOX_JUDGE,
                 "--proc", "/proc", "--dev", "/dev", "--chdir", SANDBOX_WORK]
        if self.drop_to_nobody:
            args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "setpriv", "--reuid", str(NOBODY),
                     "--regid", str(NOBODY), "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"]
        return args + python

    def start(self, timeout: float = 120) -> None:
        """Start the kernel and wait until it answers; raise RuntimeError when it does not."""
        from jupyter_client import BlockingKernelClient

        self.stop()
        inner_ipc = self.inside(self.work / ".ipc") + "/k"
        (self.grader_dir / "kernel.json").write_text(json.dumps(self._connection(inner_ipc)))
        (self.grader_dir / "kernel.json").chmod(0o644)
        host_conn = self.run_dir / "host.json"
        host_conn.write_text(json.dumps(self._connection(str(self.work / ".ipc" / "k"))))
        for sock in (self.work / ".ipc").glob("k-*"):
            sock.unlink()
        self._nproc_base = _user_task_count(os.getuid())
        # The kernel imports the same dlbook as the grader (its directory is bound read-only), even when
        # the venv's editable install points at another checkout.
        env = {**self.env, "PYTHONPATH": os.pathsep.join([self.inside(self.grader_dir), str(_dlbook_dir().parent)]),
               "HOME": self.inside(self.work)}
        self.log = open(self.run_dir / "kernel.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.command(), cwd=self.work, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=self.log, start_new_session=True,
                                     preexec_fn=self._preexec)
        client = BlockingKernelClient()
        client.load_connection_file(str(host_conn))
        client.start_channels(hb=False)  # liveness is the process itself, not heartbeats
        self.client = client
        deadline = time.monotonic() + timeout
        while True:  # jupyter_client's wait_for_ready mistakes a slow start for a dead kernel
            if not self.alive():
                raise RuntimeError(f"the kernel exited while starting; log: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the kernel did not answer within {timeout:.0f} s; log: {self.log_tail()}")
            msg_id = client.kernel_info()
            try:
                while client.get_shell_msg(timeout=1.0)["parent_header"].get("msg_id") != msg_id:
                    pass
                break
            except queue.Empty:
                continue
        while True:  # drop the start-up iopub messages that are already here (the rest are not ours)
            try:
                client.get_iopub_msg(timeout=0)
            except queue.Empty:
                break

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 800) -> str:
        try:
            return (self.run_dir / "kernel.log").read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """Kill the kernel and everything it started (its process group; with bwrap, its PID namespace)."""
        if self.client is not None:
            self.client.stop_channels()
            self.client = None
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
            self.proc = None
            self.log.close()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.run_dir, ignore_errors=True)
