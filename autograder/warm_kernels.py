"""Warm kernels for plain nbgrader: ``make autograde`` forks each notebook's kernel from a template.

nbgrader starts a new Python for every notebook it autogrades, and each pays seconds before its first
cell does any work: Python and ipykernel, then torch (1.3 s), ``torch._dynamo`` at the first
``torch.optim`` optimizer (1.3 s), scikit-learn, matplotlib and dlbook. Here one *fork server* per
``nbgrader autograde`` command imports them once (the list of the confined grader's zygote,
``autograder/grading/zygote.py``), and each kernel is a fork of it that becomes an ordinary ipykernel
with the connection file, arguments, environment and working directory nbgrader gave it.

What a warm kernel has that a new process would not: the template's imported modules (the same for
every learner; nothing of a notebook was run in the template). What is made as in a new process: a new
session and process group, stdin from ``/dev/null``, no inherited descriptor but stdout and stderr,
default signal handling, the kernel's own environment and working directory (first on ``sys.path``, as
``python -m`` puts it), fresh seeds for ``random``, NumPy and torch, and torch's thread count from the
kernel's ``OMP_NUM_THREADS`` (else the number of cores). NumPy's BLAS keeps the template's one thread.
A notebook that uses a submodule it never imported (``sklearn.datasets`` after ``import sklearn``) works
in a warm kernel and fails in a new one: the test suite runs each chapter's honest notebooks in new
kernels for that reason, and grades the others in warm ones.

Trust: this is plain nbgrader, which runs the learner's code as the instructor's user with the tests in
the same process; the learner's kernel can already read and change whatever that user can (other
submissions, the gradebook). A warm kernel could also reach the fork server (same user) and so later
kernels of the same command: the same class of attack, no new one. ``make grade`` is the grader for work
that must be confined (README, "Threat model"); its kernels come from its own zygote, inside bubblewrap.

Kernels started any other way (another kernelspec, another interpreter), and every kernel where the
fork server cannot run (not Linux, no pidfds, a template that is not single-threaded), start the ordinary
way. ``python -m autograder autograde --fresh-kernels`` (``course.autograde(warm_kernels=False)``) turns
warm kernels off; the benchmark's baseline is plain nbgrader with new kernels.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

READY = b"warm kernels ready\n"
ENV = "DLBOOK_WARM_KERNELS"  # "1": nbgrader's Execute starts its kernels here (set by course.run_nbgrader)


# --- the fork server (run as a script: ``python -P warm_kernels.py FD``) ----------------------------------

def _become_kernel(req: dict) -> None:
    """In the fork: make the process what a new ``python -m ipykernel_launcher ARGS`` would be, then run it."""
    os.setsid()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.closerange(3, os.sysconf("SC_OPEN_MAX") if os.sysconf("SC_OPEN_MAX") > 0 else 65536)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the server's SIG_IGN would break the kernel's subprocesses
    import ctypes

    # the kernel ends with the server, which ends when nbgrader's process does (PR_SET_PDEATHSIG = 1)
    if ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0) != 0 or os.getppid() != req["server"]:
        os._exit(1)
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    sys.path[:] = [req["cwd"], *(p for p in sys.path if p != req["cwd"])]
    sys.argv = ["ipykernel_launcher", *req["args"]]
    import random
    import types

    sys.modules["__main__"] = types.ModuleType("__main__")  # not the server's script
    random.seed()
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.seed()
        torch.set_num_threads(int(req["env"].get("OMP_NUM_THREADS") or os.cpu_count() or 1))
    from ipykernel.kernelapp import IPKernelApp

    app = IPKernelApp.instance()
    app.initialize(req["args"])
    app.start()


def _serve(conn: socket.socket) -> None:
    """Answer each request line with the kernel's pid and a pidfd for it; return when the client is gone."""
    reader = conn.makefile("rb")
    for line in reader:
        req = {**json.loads(line), "server": os.getpid()}
        pid = os.fork()
        if pid == 0:
            try:
                reader.close()
                conn.close()
                _become_kernel(req)
            except BaseException:  # noqa: BLE001 - into the kernel's stderr, like a failing new process
                import traceback

                traceback.print_exc()
            finally:
                os._exit(1)
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as err:  # it ended (and was reaped) already
            conn.sendall(json.dumps({"error": f"the kernel ended at once ({err})"}).encode() + b"\n")
            continue
        socket.send_fds(conn, [json.dumps({"pid": pid}).encode() + b"\n"], [pidfd])
        os.close(pidfd)


def main(fd: int) -> None:
    """The fork server: import what the chapters use, then fork a kernel per request until the client goes."""
    conn = socket.socket(fileno=fd)
    sys.path.insert(0, str(Path(__file__).resolve().parent / "grading"))
    from zygote import _preload  # the same list as the confined grader's template

    sys.path.pop(0)
    del sys.modules["zygote"]
    _preload()
    if threading.active_count() != 1 or len(os.listdir("/proc/self/task")) != 1:
        raise SystemExit("the warm-kernel template must be single-threaded to fork (set OPENBLAS_NUM_THREADS=1)")
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # kernels are reaped by the system
    conn.sendall(READY)
    _serve(conn)


# --- in nbgrader's process -----------------------------------------------------------------------------

def available() -> bool:
    """Warm kernels need Linux with pidfds (Python 3.9+, Linux 5.3+) and descriptor passing."""
    return sys.platform == "linux" and hasattr(os, "pidfd_open") and hasattr(socket, "send_fds")


class _ForkServer:
    """This process's fork server, started on first use and stopped at exit."""

    def __init__(self, timeout: float = 120.0):
        ours, theirs = socket.socketpair()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        # stdout and stderr are this process's, as a new kernel's would be (the kernels inherit them)
        self.proc = subprocess.Popen([sys.executable, "-P", str(Path(__file__).resolve()), str(theirs.fileno())],
                                     pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL)
        theirs.close()
        self.sock = ours
        self.lock = threading.Lock()
        ours.settimeout(timeout)
        try:
            ready = self._readline()
        except OSError:
            ready = b""
        if ready != READY:
            self.close()
            raise RuntimeError(f"the warm-kernel server did not start (exit {self.proc.returncode}; its error "
                               "is above)")
        ours.settimeout(30.0)

    def _readline(self, fds: list | None = None) -> bytes:
        data = b""
        while not data.endswith(b"\n"):
            chunk, got, _, _ = socket.recv_fds(self.sock, 4096, 1)
            if not chunk:
                break
            if fds is not None:
                fds.extend(got)
            else:
                for fd in got:
                    os.close(fd)
            data += chunk
        return data

    def alive(self) -> bool:
        return self.proc.poll() is None

    def spawn(self, args: list[str], env: dict[str, str], cwd: str) -> tuple[int, int]:
        """Fork a kernel; return its pid and a pidfd for it."""
        with self.lock:
            self.sock.sendall(json.dumps({"args": args, "env": env, "cwd": cwd}).encode() + b"\n")
            fds: list[int] = []
            reply = json.loads(self._readline(fds) or b'{"error": "the warm-kernel server exited"}')
        if "error" in reply:
            for fd in fds:
                os.close(fd)
            raise RuntimeError(reply["error"])
        return int(reply["pid"]), fds[0]

    def close(self) -> None:
        try:
            self.sock.close()
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()


_SERVER: _ForkServer | None = None
_SERVER_LOCK = threading.Lock()


def _server() -> _ForkServer:
    global _SERVER
    with _SERVER_LOCK:
        if _SERVER is None or not _SERVER.alive():
            _SERVER = _ForkServer()
            atexit.register(_SERVER.close)
        return _SERVER


class ForkedProcess:
    """What jupyter_client's provisioner needs of a ``Popen``, for a kernel that is the fork server's child.

    It is followed through a pidfd, so a signal never reaches a recycled pid. The fork server reaps its
    kernels, so an exit status is not passed on: ``returncode`` is 0 once the kernel has ended, or minus
    the signal that this object sent to end it.
    """

    stdin = stdout = stderr = None

    def __init__(self, pid: int, pidfd: int):
        self.pid, self.pidfd = pid, pidfd
        self.returncode: int | None = None
        self._sent: int | None = None

    def poll(self) -> int | None:
        return self.wait(0)

    def wait(self, timeout: float | None = None) -> int | None:
        if self.returncode is None:
            ready, _, _ = select.select([self.pidfd], [], [], timeout)
            if not ready:
                if timeout is None or timeout > 0:
                    raise subprocess.TimeoutExpired("warm kernel", timeout)
                return None
            self.returncode = -self._sent if self._sent in (signal.SIGKILL, signal.SIGTERM) else 0
            os.close(self.pidfd)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            signal.pidfd_send_signal(self.pidfd, sig)
            if sig in (signal.SIGKILL, signal.SIGTERM):
                self._sent = sig

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


def warm_args(cmd: list[str]) -> list[str] | None:
    """The kernel's own arguments if ``cmd`` starts ipykernel with this interpreter, else None."""
    if len(cmd) >= 3 and cmd[1:3] == ["-m", "ipykernel_launcher"]:
        try:
            same = os.path.samefile(cmd[0], sys.executable)
        except OSError:
            same = False
        if same:
            return list(cmd[3:])
    return None


def _provisioner_class():
    from jupyter_client.provisioning import LocalProvisioner

    class WarmProvisioner(LocalProvisioner):
        """LocalProvisioner, except that an ipykernel of this interpreter is forked from the warm template."""

        async def launch_kernel(self, cmd: list[str], **kwargs):
            args = warm_args(cmd)
            if args is None or not available():
                return await super().launch_kernel(cmd, **kwargs)
            try:
                server = _server()
                env = {str(k): str(v) for k, v in (kwargs.get("env") or os.environ).items()}
                cwd = str(Path(kwargs.get("cwd") or os.getcwd()).resolve())
                pid, pidfd = server.spawn(args, env, cwd)
            except (OSError, RuntimeError, ValueError) as err:
                self.log.warning("warm kernel unavailable (%s); starting a new process", err)
                return await super().launch_kernel(cmd, **kwargs)
            self.process = ForkedProcess(pid, pidfd)
            self.pid, self.pgid, self.cwd = pid, pid, cwd  # the fork made its own session and process group
            return self.connection_info

    return WarmProvisioner


def kernel_manager_class():
    """An ``AsyncKernelManager`` whose kernels are warm (see the module's docstring)."""
    import uuid

    from jupyter_client.manager import AsyncKernelManager

    provisioner = _provisioner_class()

    class WarmKernelManager(AsyncKernelManager):
        async def _async_pre_start_kernel(self, **kw):
            self.kernel_id = self.kernel_id or kw.pop("kernel_id", str(uuid.uuid4()))
            if self.provisioner is None:
                self.provisioner = provisioner(kernel_id=self.kernel_id, kernel_spec=self.kernel_spec, parent=self)
            return await super()._async_pre_start_kernel(**kw)

    return WarmKernelManager


def execute_preprocessor():
    """nbgrader's ``Execute`` preprocessor with warm kernels (its configuration, ``c.Execute``, applies)."""
    from nbgrader.preprocessors import Execute

    class WarmExecute(Execute):
        def __init__(self, *args, **kwargs):
            kwargs.setdefault("kernel_manager_class", kernel_manager_class())
            super().__init__(*args, **kwargs)

    return WarmExecute


if __name__ == "__main__":
    main(int(sys.argv[1]))
