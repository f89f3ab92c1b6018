"""A warm template for learner kernels: libraries imported once per grading worker, one fork per kernel.

Starting a learner kernel the ordinary way costs seconds before the first cell runs: Python, ipykernel,
torch (which the guard snapshots), matplotlib and dlbook are imported anew for every notebook. Here a
*zygote* imports them once; each kernel is a fork of it that joins its own bubblewrap sandbox and only
then becomes the learner's kernel (PrairieLearn's Python grader forks question code from a zygote in
the same way).

Isolation argument (read it before changing anything here):

1. **The zygote holds nothing of anyone.** It is a fresh interpreter started by the grading worker
   with ``exec`` (never a fork of the worker, which holds the reference notebook and the judge), run
   as a script so that not even the grader's own package is imported. It imports libraries from the
   read-only paths the sandbox binds, never reads a submission, never runs learner code and keeps
   no state per kernel. What a kernel inherits is the libraries' import-time state, the same for
   every learner; a learner's changes to it are private to their copy-on-write process.
2. **The sandbox is bubblewrap's, unchanged.** For each kernel the grader starts bubblewrap exactly as
   without the zygote (read-only system, tmpfs ``/grade`` and ``/tmp`` of the kernel's own, new PID,
   network, IPC, UTS and cgroup namespaces, the kernel's own uid); inside it a placeholder running as
   that uid copies the submission into ``/grade`` (as before) and then sleeps.
3. **Join, then drop, then run.** The fork (``_become_kernel``) opens the placeholder's namespaces
   and root before anything else, joins them (``setns``; the PID namespace through an intermediate
   process, since it applies to children), ``chroot``s to the sandbox's root, closes every inherited
   descriptor but its log, and drops to the kernel's uid and gid with no supplementary groups, an
   empty capability bounding set and ``no_new_privs``, with the same rlimits, before it imports or
   runs anything of the learner's. From then on it is a process inside the sandbox like the
   ordinary kernel; it sees the sandbox's ``/proc`` and file system only.
4. **Lifetimes are tied.** The kernel dies with its supervisor (``PR_SET_PDEATHSIG``, set after the
   uid change, which clears it), the supervisor with the zygote, the zygote with the worker. When the
   kernel exits the supervisor kills the placeholder (through a pidfd, so never a recycled pid),
   which ends the sandbox's PID namespace; when the grader stops the sandbox, the kernel dies with it.
5. **Root only.** ``setns`` needs ``CAP_SYS_ADMIN``; without root bubblewrap works in a user
   namespace and kernels start the ordinary way (``zygote_available``).

The worker talks to the zygote over a socket pair: one JSON line per kernel, answered with the
supervisor's pid.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

# What the chapters import. torch._dynamo (which loads torch._inductor.config): 800 modules and 1.3 s of CPU
# that every kernel would pay at its first torch.optim optimizer, whose methods torch wraps in
# torch._disable_dynamo, which imports it on first call. Paid once here.
PRELOAD = ["numpy", "torch", "torch._dynamo", "matplotlib", "matplotlib.pyplot",
           "matplotlib_inline.backend_inline", "ipywidgets", "tqdm.auto", "ipykernel.kernelapp", "ipykernel.ipkernel",
           "IPython", "sklearn.datasets", "sklearn.model_selection", "gymnasium", "names", "pooch", "cloudpickle",
           "dlbook"]
CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS = 0x00020000, 0x02000000, 0x04000000
CLONE_NEWIPC, CLONE_NEWPID, CLONE_NEWNET = 0x08000000, 0x20000000, 0x40000000
NAMESPACES = [("ipc", CLONE_NEWIPC), ("uts", CLONE_NEWUTS), ("net", CLONE_NEWNET), ("cgroup", CLONE_NEWCGROUP),
              ("mnt", CLONE_NEWNS)]  # the mount namespace last: /proc/<pid>/... is the host's until then
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 4, 24, 38
READY = b"zygote ready\n"


# --- in the zygote and its forks (run as a script: nothing of the grader's package is imported) ----------

def _libc():
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        import ctypes

        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _preload() -> None:
    """Import the libraries every kernel needs, and every dlbook module (import errors are the kernel's)."""
    import importlib
    import pkgutil

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the kernel imports it itself, and reports the error there
            pass
    dlbook = sys.modules.get("dlbook")
    for info in pkgutil.iter_modules(getattr(dlbook, "__path__", [])):
        try:
            importlib.import_module(f"dlbook.{info.name}")
        except Exception:  # noqa: BLE001
            pass


def _become_kernel(req: dict, ns_fds: dict[str, int], root_fd: int) -> None:
    """In the sandbox's PID namespace: join the rest of the sandbox, drop privileges, run ipykernel."""
    libc = _libc()
    log = os.open(req["log"], os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    null = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    for name, flag in NAMESPACES:
        _check(libc.setns(ns_fds[name], flag), f"setns({name})")
    os.fchdir(root_fd)
    os.chroot(".")
    os.chdir(req["cwd"])
    os.closerange(3, os.sysconf("SC_OPEN_MAX") if os.sysconf("SC_OPEN_MAX") > 0 else 65536)
    os.setsid()
    import resource

    for name, value in req["rlimits"].items():
        resource.setrlimit(getattr(resource, name), (value, value))
    last_cap = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    for cap in range(last_cap + 1):
        _check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), "PR_CAPBSET_DROP")
    uid = req["uid"]
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")
    _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "PR_SET_PDEATHSIG")  # cleared by setresuid
    # The uid change made the process non-dumpable (its /proc/self root's); an exec would have reset that, as
    # it does for the ordinary kernel: its own /proc/self is readable again, by its own uid only.
    _check(libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), "PR_SET_DUMPABLE")
    if os.getppid() != 0:  # the supervisor (outside this PID namespace) is already gone
        os._exit(1)
    os.umask(0o022)
    os.environ.clear()
    os.environ.update(req["env"])
    prefix = req["sys_path_prefix"]  # /grader (the guard and the agent) first, as PYTHONPATH does for a new Python
    sys.path[:] = [*prefix, *(p for p in sys.path if p not in prefix)]
    sys.argv = ["ipykernel_launcher", *req["argv"]]
    import types

    sys.modules["__main__"] = types.ModuleType("__main__")  # not the zygote's script
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(int(req["threads"]))
    from ipykernel.kernelapp import IPKernelApp

    app = IPKernelApp.instance()
    app.initialize(req["argv"])
    app.start()


def _supervise(req: dict) -> None:
    """The forked supervisor: check the placeholder, fork the kernel into its sandbox, end the sandbox after."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    libc = _libc()
    _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "PR_SET_PDEATHSIG")
    holder = int(req["holder"])
    pidfd = os.pidfd_open(holder)

    def parent_of(pid: int) -> int:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("PPid:"):
                return int(line.split()[1])
        return -1

    if parent_of(holder) != int(req["bwrap"]):
        raise RuntimeError(f"process {holder} is not the sandbox of bubblewrap {req['bwrap']}")
    ns_fds = {name: os.open(f"/proc/{holder}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC) for name, _ in NAMESPACES}
    pid_ns = os.open(f"/proc/{holder}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    root_fd = os.open(f"/proc/{holder}/root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        signal.pidfd_send_signal(pidfd, 0)  # still alive after the opens, so they are its namespaces
        if parent_of(holder) != int(req["bwrap"]):
            raise RuntimeError(f"process {holder} changed while the kernel joined it")
        _check(libc.setns(pid_ns, CLONE_NEWPID), "setns(pid)")
        kernel = os.fork()
        if kernel == 0:
            try:
                _become_kernel(req, ns_fds, root_fd)
            except BaseException:  # noqa: BLE001 - into the kernel's log (stderr is the log by now)
                import traceback

                traceback.print_exc()
            finally:
                os._exit(1)
        os.waitpid(kernel, 0)
    finally:
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)  # the kernel is gone (or never came): end its sandbox
        except ProcessLookupError:
            pass


def main(fd: int) -> None:
    """The zygote: import the libraries once, then fork a supervisor for each request."""
    libc = _libc()
    _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "PR_SET_PDEATHSIG")
    conn = socket.socket(fileno=fd)
    _preload()
    if threading.active_count() != 1 or len(os.listdir("/proc/self/task")) != 1:
        raise SystemExit("the zygote must be single-threaded to fork (set OPENBLAS_NUM_THREADS=1)")
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # supervisors are reaped by the system
    stream = conn.makefile("rwb")
    stream.write(READY)
    stream.flush()
    for line in stream:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                stream.close()
                conn.close()
                _supervise(req)
            except BaseException as err:  # noqa: BLE001 - reported in the kernel's log, then the child ends
                code = 1
                try:
                    with open(req["log"], "a") as log:
                        log.write(f"dlbook grader: the kernel could not join its sandbox: {err!r}\n")
                except OSError:
                    pass
            os._exit(code)
        stream.write(json.dumps({"pid": pid}).encode() + b"\n")
        stream.flush()


# --- in the grading worker ---------------------------------------------------------------------------------

def zygote_available(use_bwrap: bool) -> bool:
    """Kernels can come from a zygote: bubblewrap, root (for setns), Linux with pidfds."""
    return use_bwrap and os.geteuid() == 0 and hasattr(os, "pidfd_open") and hasattr(signal, "pidfd_send_signal")


class Zygote:
    """The worker's handle on its zygote process (started on first use; one per grading worker)."""

    def __init__(self, env: dict[str, str], timeout: float = 300.0):
        ours, theirs = socket.socketpair()
        # the kernels' libraries, single-threaded (a fork keeps only the forking thread)
        env = {**env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
               "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
        self.proc = subprocess.Popen([sys.executable, "-P", str(Path(__file__).resolve()), str(theirs.fileno())],
                                     pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        theirs.close()
        self._conn = ours
        ours.settimeout(timeout)
        self._stream = ours.makefile("rwb")
        self._lock = threading.Lock()
        try:
            ready = self._stream.readline()
        except OSError:
            ready = b""
        if ready != READY:
            self.close()
            err = self.proc.stderr.read().decode(errors="replace")[-2000:] if self.proc.stderr else ""
            raise RuntimeError(f"the kernel zygote did not start: {err or 'no output'}")
        self.proc.stderr.close()
        ours.settimeout(30.0)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def spawn(self, request: dict) -> int:
        """Fork a kernel into the sandbox described by ``request``; return its supervisor's pid."""
        with self._lock:
            self._stream.write(json.dumps(request).encode() + b"\n")
            self._stream.flush()
            reply = self._stream.readline()
        if not reply:
            raise RuntimeError("the kernel zygote exited")
        return int(json.loads(reply)["pid"])

    def close(self) -> None:
        try:
            self._stream.close()
            self._conn.close()
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()


_ZYGOTE: Zygote | None = None


def get_zygote(env: dict[str, str]) -> Zygote:
    """This worker's zygote, started (again) when there is none or it died."""
    global _ZYGOTE
    if _ZYGOTE is None or not _ZYGOTE.alive():
        _ZYGOTE = Zygote(env)
    return _ZYGOTE


if __name__ == "__main__":
    main(int(sys.argv[1]))
