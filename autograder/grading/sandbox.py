"""A confined IPython kernel for learner code: bubblewrap where it runs, rlimits and a process group always.

Threat model: the code in a submission is hostile and has read this module. It must not read or change
the host, the course, the hidden tests or other submissions, run before the grader's guard (at the
first start or at a restart), make the grader (root) act on paths it controls, or stop other learners'
kernels from starting and running. What is enforced depends on the mode (``bwrap_available()`` says
which; each report records it).

**bubblewrap, grader running as root** (the production setup). The kernel runs in new PID, network,
IPC and UTS namespaces (``Limits.network`` keeps the network), in a file system built from read-only
system directories (``/usr``, ``/etc``, ...; world-readable files there are readable), Python, the
dlbook package and its data, plus:

- ``/grade``, its working directory: a tmpfs of ``Limits.disk_bytes`` (a write past it fails with
  ``OSError(ENOSPC)``; one file past ``Limits.file_bytes`` with ``EFBIG``), filled at each (re)start
  from the submission: the grader copies the folder into a root-owned host directory, taking regular
  files and directories only (symbolic links, FIFOs, sockets and devices are left out, never followed
  or opened; at most ``disk_bytes``, each entry counting at least 4 KiB; ``Kernel.skipped`` lists what
  was left out), binds that copy read-only at ``/submission``, and the kernel's user copies it into
  ``/grade`` before Python starts. What learner code wrote is gone after a restart (the grader replays
  the cells that ran). ``/tmp`` is a private tmpfs of the same size, also new at each start. Both are
  memory: a kernel may fill ``2 * disk_bytes`` of RAM there; the number of files is bounded only by
  tmpfs's default. (bubblewrap before 0.7 has no ``--size``: then neither has a quota.)
- ``/home/learner``: HOME, IPYTHONDIR, XDG_CONFIG_HOME, JUPYTER_CONFIG_DIR and JUPYTER_DATA_DIR, a
  root-owned directory bound read-only (IPython, finding its directory read-only, makes a fresh one in
  ``/tmp``); MPLCONFIGDIR (seeded with the host's font list), XDG_CACHE_HOME and JUPYTER_RUNTIME_DIR
  are in the new ``/tmp``. With ``PYTHONSAFEPATH=1``, ``PYTHONNOUSERSITE=1`` and IPython's
  ``ignore_cwd``, no file of the submission (``.ipython/profile_default/startup/*.py`` or config,
  ``.config/matplotlib/matplotlibrc``, ``sitecustomize.py``, ``usercustomize.py``, ``.pth`` files,
  ``ipykernel_launcher.py``, ``_dlbook_guard.py``, a module named like an installed one) is run or read
  as configuration before the guard is installed, nor anything learner code wrote in an earlier
  session. The working directory is then appended to the *end* of ``sys.path``: the learner's own
  modules import, and never shadow an installed one. Not covered: a ``matplotlibrc`` at the top of
  the submission is read by matplotlib (its lookup in the working directory) when first imported; it
  is data only (ipykernel fixes the backend), like rcParams a cell sets.
- ``/ipc``: the kernel's ZMQ sockets, in a new host directory ``run_dir/ipc-<n>`` for each start,
  owned by the kernel's uid. The grader opens each socket with ``O_PATH | O_NOFOLLOW`` (it must be a
  socket directly in that directory) and connects through ``/proc/self/fd``, so whatever the kernel
  later puts there, the grader reaches no other path. ``/grader`` (the guard, the connection file)
  and ``/judge`` (the judge's socket) are read-only.
- Its own uid and gid from ``UID_RANGE`` (no passwd entry, no supplementary groups, no capabilities),
  claimed with an exclusive ``flock`` on ``UID_LOCK_DIR/<uid>.lock`` (a root-owned 0700 directory;
  refused when it is a link or not root's) for the kernel's whole life and only when no process runs
  as it, so concurrent graders never share one. RLIMIT_NPROC counts per uid, so ``Limits.processes``
  is each learner's own: a thread or fork bomb starves only its own kernel.
- rlimits per process: address space, CPU time, file size, no core dumps. Memory is not limited per
  kernel (no cgroup): ``processes * memory_bytes`` at most. Killing the sandbox kills every process the
  learner started, daemons included (the PID namespace ends with its first process).

Root touches learner-writable space only to remove it (``shutil.rmtree``, which follows no link):
every other path it uses is in its own 0700 run directory. ``Kernel.start`` tries three times (a
short back-off between) before it raises.

**Kernels from a zygote** (root with bubblewrap, ``Kernel(zygote=True)``; the batch grader uses it when
each worker grades several notebooks): the sandbox is built by bubblewrap exactly as above, but with a
placeholder inside instead of Python; a fork of a per-worker template that has already imported
ipykernel, torch, matplotlib and dlbook joins the placeholder's namespaces and root, drops to the
kernel's uid with no capabilities and ``no_new_privs``, and becomes the kernel. The file system, uid,
limits and namespaces are the same; the isolation argument is in :mod:`.zygote`. A kernel the zygote
cannot start is started the ordinary way.

**bubblewrap, grader not root** (a user namespace): the same file system, quota and sockets, but the
kernel runs as the grader's own uid. **Not enforced**: a uid per kernel. RLIMIT_NPROC is then counted
over the grader and all its kernels (each kernel's limit is what ran at its start plus
``Limits.processes``), so one learner's thread bomb can keep other learners' kernels from starting or
from creating threads. Run the grader as root to isolate learners from each other.

**No bubblewrap** (macOS, containers without namespaces): the kernel runs in its own process group
with the same rlimits, as the grader's own user (root included: then RLIMIT_NPROC does not apply), in
a host copy of the submission made as above, with HOME and the configuration directories outside it
and a new scratch directory (TMPDIR, MPLCONFIGDIR, ...) per start. **Not enforced**: any confinement
on disk or network (learner code can do whatever the grader's user can, including changing those
directories), a quota (only RLIMIT_FSIZE per file), a uid per kernel; a process that calls ``setsid``
can outlive grading.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import json
import os
import queue
import random
import resource
import secrets
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

NOBODY = 65534  # no longer used by the sandbox (each kernel has its own uid); kept for older imports
UID_RANGE = range(200000, 201000)  # one uid (and gid) per kernel when the grader is root
UID_LOCK_DIR = Path("/tmp/dlbook-grader-uids")  # root-owned 0700: <uid>.lock files, flock'ed while in use
SANDBOX_WORK = "/grade"
SANDBOX_SUBMISSION = "/submission"  # read-only: the grader's copy of the submission, copied into /grade
SANDBOX_HOME = "/home/learner"  # read-only: HOME and the configuration directories
SANDBOX_IPC = "/ipc"
SANDBOX_TMP = "/tmp"
SANDBOX_GRADER = "/grader"
SANDBOX_JUDGE = "/judge"  # read-only for the kernel: the judge's socket lives here
SOCKETS = 5  # shell, iopub, stdin, control, heartbeat: /ipc/k-1 ... k-5
ENTRY_BYTES = 4096  # what each copied file or directory counts against Limits.disk_bytes at least
MAX_DEPTH = 64  # deeper folders of a submission are not copied
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class Limits:
    """Resource limits of one learner kernel (defaults documented in the README)."""

    memory_bytes: int = 4 << 30  # RLIMIT_AS: virtual memory of each process
    cpu_seconds: int = 1800  # RLIMIT_CPU: CPU time of each process
    processes: int = 128  # RLIMIT_NPROC: processes and threads of the sandbox user
    file_bytes: int = 64 << 20  # RLIMIT_FSIZE: size of any file written
    disk_bytes: int = 512 << 20  # size of /grade and of /tmp (each a tmpfs; bubblewrap only)
    network: bool = False  # True keeps the host network (never needed by the course)

    def as_dict(self) -> dict:
        return asdict(self)


def course_env(threads: int = 1, fast: bool = True, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The course's environment variables for a kernel (``Kernel`` adds the protected ones itself)."""
    env = {"PATH": os.pathsep.join([str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"]),
           "LANG": "C.UTF-8", "DLBOOK_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1",
           "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    if fast:
        env["DLBOOK_FAST"] = "1"
    if os.environ.get("DLBOOK_DATA"):
        env["DLBOOK_DATA"] = str(Path(os.environ["DLBOOK_DATA"]).resolve())
    return {**env, **(extra or {})}


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


@functools.lru_cache(maxsize=1)
def _bwrap_has_size() -> bool:
    """Return True when bubblewrap can size a tmpfs (``--size``, bubblewrap 0.7 and later)."""
    try:
        return "--size" in subprocess.run(["bwrap", "--help"], capture_output=True, text=True, timeout=30).stdout
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


def _uid_in_use(uid: int) -> bool:
    """Return True when a process has ``uid`` as its real, effective, saved or file-system uid."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/status", "rb") as f:
                    for line in f:
                        if line.startswith(b"Uid:"):
                            if str(uid).encode() in line.split()[1:]:
                                return True
                            break
            except OSError:
                continue
    return False


def _lock_dir_fd() -> int:
    """Open ``UID_LOCK_DIR``, creating it root-owned 0700; refuse a link, a non-directory or a foreign owner."""
    try:
        os.mkdir(UID_LOCK_DIR, 0o700)
    except FileExistsError:
        pass
    try:
        fd = os.open(UID_LOCK_DIR, _O_DIR)
    except OSError as err:  # ELOOP: a symbolic link; ENOTDIR: something else
        raise RuntimeError(f"{UID_LOCK_DIR} is not a plain directory: {err}") from err
    st = os.fstat(fd)
    if st.st_uid != 0 or st.st_mode & 0o022:
        os.close(fd)
        raise RuntimeError(f"{UID_LOCK_DIR} must be owned by root and writable only by it: refusing to use it")
    return fd


def claim_uid() -> tuple[int, int]:
    """Claim a free uid of ``UID_RANGE`` (root only); return ``(uid, fd)``: the uid is ours while fd is open."""
    dir_fd = _lock_dir_fd()
    try:
        first = random.randrange(len(UID_RANGE))  # spread the claims: a just-released uid is tried last
        for i in range(len(UID_RANGE)):
            uid = UID_RANGE[(first + i) % len(UID_RANGE)]
            fd = os.open(f"{uid}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise OSError(errno.EINVAL, "not a regular file")
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            if _uid_in_use(uid):  # a leftover of a grader that died: leave that uid alone
                os.close(fd)
                continue
            return uid, fd
    finally:
        os.close(dir_fd)
    raise RuntimeError(f"no free sandbox uid in {UID_RANGE.start}-{UID_RANGE.stop - 1}")


def copy_submission(src: Path, dest: Path, budget: int) -> list[str]:
    """Copy the regular files and directories of ``src`` into the new directory ``dest``; return what was left out.

    Symbolic links, FIFOs, sockets and devices are left out and never followed or opened (every entry is
    opened relative to its parent with ``O_NOFOLLOW``); so are files past ``budget`` bytes (each entry
    counting at least ``ENTRY_BYTES``) and folders deeper than ``MAX_DEPTH``. ``dest`` gets modes 0755/0644
    (0755 for executables): readable by the kernel's user, writable only by the grader.
    """
    skipped: list[str] = []
    used = 0

    def walk(src_fd: int, dest_dir: Path, rel: str, depth: int) -> None:
        nonlocal used
        with os.scandir(src_fd) as it:
            names = sorted(e.name for e in it)
        for name in names:
            where = f"{rel}{name}"
            try:
                st = os.stat(name, dir_fd=src_fd, follow_symlinks=False)
            except OSError:
                skipped.append(f"{where} (unreadable)")
                continue
            if stat.S_ISDIR(st.st_mode):
                if depth >= MAX_DEPTH or used + ENTRY_BYTES > budget:
                    skipped.append(f"{where}/ (too deep or over the size limit)")
                    continue
                try:
                    child = os.open(name, _O_DIR, dir_fd=src_fd)
                except OSError:
                    skipped.append(f"{where}/ (unreadable)")
                    continue
                try:
                    os.mkdir(dest_dir / name)
                    os.chmod(dest_dir / name, 0o755)  # not narrowed by the umask
                    used += ENTRY_BYTES
                    walk(child, dest_dir / name, where + "/", depth + 1)
                finally:
                    os.close(child)
            elif stat.S_ISREG(st.st_mode):
                size = max(st.st_size, ENTRY_BYTES)
                if used + size > budget:
                    skipped.append(f"{where} (over the size limit)")
                    continue
                if not _copy_file(src_fd, name, dest_dir / name, budget - used):
                    skipped.append(f"{where} (changed or unreadable while copying)")
                    continue
                used += size
            else:
                kind = "symbolic link" if stat.S_ISLNK(st.st_mode) else "special file"
                skipped.append(f"{where} ({kind})")

    dest.mkdir()
    dest.chmod(0o755)
    top = os.open(src, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # the folder itself is the grader's choice
    try:
        walk(top, dest, "", 0)
    finally:
        os.close(top)
    return skipped


def _copy_file(src_fd: int, name: str, dest: Path, limit: int) -> bool:
    """Copy the regular file ``name`` (in directory ``src_fd``) to the new file ``dest``, at most ``limit`` bytes."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=src_fd)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # replaced between the stat and the open
            return False
        mode = 0o755 if st.st_mode & 0o111 else 0o644
        out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        try:
            copied = 0
            while chunk := os.read(fd, 1 << 20):
                copied += len(chunk)
                if copied > limit:
                    break
                os.write(out, chunk)
            os.fchmod(out, mode)  # not narrowed by the umask
        finally:
            os.close(out)
        if copied > limit:
            os.unlink(dest)
            return False
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _font_caches() -> list[Path]:
    """The host's matplotlib font lists (a kernel without one rebuilds it, which takes seconds)."""
    try:
        import matplotlib

        return sorted(Path(matplotlib.get_cachedir()).glob("fontlist-*.json"))
    except Exception:  # noqa: BLE001 - only a speed-up
        return []


def dirs_with_parents(path: Path) -> list[str]:
    """bwrap arguments creating each missing parent of ``path`` world-readable (bwrap's default is 0700)."""
    args: list[str] = []
    for parent in reversed(path.parents):
        if str(parent) != "/":
            args += ["--perms", "0755", "--dir", str(parent)]
    return args


# the kernel's own directories: a zygote (which runs outside the sandbox) keeps the grader's
_PROTECTED_ONLY_IN_KERNEL = {"HOME", "IPYTHONDIR", "XDG_CONFIG_HOME", "JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR",
                             "MPLCONFIGDIR", "XDG_CACHE_HOME", "JUPYTER_RUNTIME_DIR", "TMPDIR", "PYTHONPATH"}


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
    """One confined ipykernel for one submission notebook; ``start``, ``client``, ``alive``, ``stop``, ``cleanup``.

    ``env``: the course's environment variables (see :func:`course_env`); :meth:`environment` adds the
    protected ones. ``work``: the grader's copy of the submission (``/grade`` in the kernel; with
    bubblewrap the kernel works on its own copy in a tmpfs and this one stays unchanged).
    """

    def __init__(self, workdir_src: Path | None, limits: Limits, env: dict[str, str], use_bwrap: bool | None = None,
                 zygote: bool = False):
        self.limits = limits
        self.use_bwrap = bwrap_available() if use_bwrap is None else use_bwrap
        # a fork of a warm template joins the sandbox instead of a new Python starting in it (see zygote.py)
        from .zygote import zygote_available

        self.zygote = zygote and zygote_available(self.use_bwrap)
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.client = None
        self.key = secrets.token_hex(16)
        self.uid: int | None = None  # the kernel's own uid (bubblewrap as root), else None: the grader's
        self._uid_lock: int | None = None
        self._socket_fds: list[int] = []
        self._starts = 0
        self.run_dir = Path(tempfile.mkdtemp(prefix="ag-"))  # 0700; short: Unix socket paths are limited
        try:
            self.work = self.run_dir / "work"
            self.grader_dir = self.run_dir / "grader"
            self.judge_dir = self.run_dir / "judge"
            self.home_dir = self.run_dir / "home"
            if workdir_src is not None and workdir_src.is_dir():
                self.skipped = copy_submission(workdir_src, self.work, limits.disk_bytes)
                if self.skipped:
                    (self.run_dir / "kernel.log").write_text("left out of the submission's copy: "
                                                             + ", ".join(self.skipped) + "\n")
            else:
                self.work.mkdir()
                self.work.chmod(0o755)
                self.skipped = []
            for d in (self.grader_dir, self.judge_dir):
                d.mkdir()
                d.chmod(0o755)
            shutil.copyfile(Path(__file__).with_name("kernel_guard.py"), self.grader_dir / "_dlbook_guard.py")
            (self.grader_dir / "_dlbook_guard.py").chmod(0o644)  # readable by the kernel's user, whatever the umask
            self._make_home()
            if self.use_bwrap and os.geteuid() == 0:
                self.uid, self._uid_lock = claim_uid()
        except BaseException:
            self.cleanup()
            raise

    def _make_home(self) -> None:
        """HOME and the configuration directories: empty but for matplotlib's font list (bound read-only)."""
        for sub in (".ipython/profile_default/startup", ".config", ".jupyter", ".local/share/jupyter",
                    ".cache/matplotlib"):
            (self.home_dir / sub).mkdir(parents=True, exist_ok=True)
        for font_list in _font_caches():
            shutil.copyfile(font_list, self.home_dir / ".cache" / "matplotlib" / font_list.name)
        for root, _, files in os.walk(self.home_dir):  # bound read-only; readable by the kernel's user
            os.chmod(root, 0o755)
            for name in files:
                os.chmod(os.path.join(root, name), 0o644)

    @property
    def scratch(self) -> str:
        """The kernel's per-start scratch directory, as it sees it (``/tmp`` with bubblewrap)."""
        return SANDBOX_TMP if self.use_bwrap else str(self.run_dir / f"scratch-{self._starts}")

    def environment(self) -> dict[str, str]:
        """The kernel's environment: the course's variables, then the protected ones (which always win)."""
        home = self.inside(self.home_dir)
        scratch = self.scratch
        protected = {
            "HOME": home, "IPYTHONDIR": f"{home}/.ipython", "XDG_CONFIG_HOME": f"{home}/.config",
            "JUPYTER_CONFIG_DIR": f"{home}/.jupyter", "JUPYTER_DATA_DIR": f"{home}/.local/share/jupyter",
            "MPLCONFIGDIR": f"{scratch}/matplotlib", "XDG_CACHE_HOME": f"{scratch}/cache",
            "JUPYTER_RUNTIME_DIR": f"{scratch}/jupyter-runtime", "TMPDIR": scratch,
            "PYTHONSAFEPATH": "1", "PYTHONNOUSERSITE": "1",
            # The kernel imports the same dlbook as the grader (its directory is bound read-only), even when
            # the venv's editable install points at another checkout.
            "PYTHONPATH": os.pathsep.join([self.inside(self.grader_dir), str(_dlbook_dir().parent)]),
        }
        return {**self.env, **protected}

    def inside(self, host_path: Path) -> str:
        """Return the path the kernel sees for ``host_path`` (under the work, home, grader or judge directory)."""
        if not self.use_bwrap:
            return str(host_path)
        for host, inner in ((self.work, SANDBOX_WORK), (self.home_dir, SANDBOX_HOME),
                            (self.grader_dir, SANDBOX_GRADER), (self.judge_dir, SANDBOX_JUDGE)):
            if host_path == host or host in host_path.parents:
                return inner + "/" + str(host_path.relative_to(host)) if host_path != host else inner
        raise ValueError(f"{host_path} is not visible in the sandbox")

    def _connection(self, ip: str) -> dict:
        return {"transport": "ipc", "ip": ip, "shell_port": 1, "iopub_port": 2, "stdin_port": 3,
                "control_port": 4, "hb_port": 5, "key": self.key, "signature_scheme": "hmac-sha256",
                "kernel_name": "python3"}

    def _prlimit(self) -> list[str]:
        """``prlimit`` setting RLIMIT_FSIZE after the submission is copied (the copy may hold bigger files)."""
        exe = shutil.which("prlimit") if self.use_bwrap else None
        return [exe, f"--fsize={self.limits.file_bytes}:{self.limits.file_bytes}", "--"] if exe else []

    def _preexec(self) -> None:
        lim = self.limits
        limits = [(resource.RLIMIT_AS, lim.memory_bytes), (resource.RLIMIT_CPU, lim.cpu_seconds),
                  (resource.RLIMIT_CORE, 0)]
        if not self._fsize_in_wrapper:
            limits.append((resource.RLIMIT_FSIZE, lim.file_bytes))
        for which, value in limits:
            resource.setrlimit(which, (value, value))
        nproc = lim.processes if self.uid is not None else self._nproc_base + lim.processes
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))

    def kernel_args(self) -> list[str]:
        """ipykernel's arguments: the connection file, the guard first, the working directory last on sys.path."""
        exec_lines = ["import _dlbook_guard; _dlbook_guard.install()",
                      "__import__('sys').path.append(__import__('os').getcwd())"]  # last: never shadows a library
        return ["-f", self.inside(self.grader_dir / "kernel.json"), f"--IPKernelApp.exec_lines={exec_lines!r}",
                "--InteractiveShellApp.ignore_cwd=True"]

    def command(self, info_fd: int | None = None) -> list[str]:
        """The command that starts the kernel; with a zygote, a placeholder that fills /grade, says so, and waits."""
        python = [sys.executable, "-m", "ipykernel_launcher", *self.kernel_args()]
        if not self.use_bwrap:
            return python
        sized = ["--perms", "01777", *(["--size", str(self.limits.disk_bytes)] if _bwrap_has_size() else []),
                 "--tmpfs"]
        # The private /tmp comes first: a venv or course that itself lives under /tmp is bound on top of it.
        info = ["--info-fd", str(info_fd)] if info_fd is not None else []
        args = ["bwrap", *info, *_namespace_args(self.limits.network), *sized, SANDBOX_TMP]
        for path in _readonly_paths():
            args += [*dirs_with_parents(path), "--ro-bind", str(path), str(path)]
        args += [*sized, SANDBOX_WORK,
                 "--ro-bind", str(self.work), SANDBOX_SUBMISSION,
                 *dirs_with_parents(Path(SANDBOX_HOME)), "--ro-bind", str(self.home_dir), SANDBOX_HOME,
                 "--bind", str(self._ipc_dir), SANDBOX_IPC,
                 "--ro-bind", str(self.grader_dir), SANDBOX_GRADER, "--ro-bind", str(self.judge_dir), SANDBOX_JUDGE,
                 "--proc", "/proc", "--dev", "/dev", "--chdir", SANDBOX_WORK]
        if self.uid is not None:
            args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "setpriv", "--reuid", str(self.uid),
                     "--regid", str(self.uid), "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"]
        # Run as the kernel's user, before Python: fill /grade from the read-only copy, seed matplotlib's
        # font list in the new /tmp, then set the file-size limit (the copy may hold bigger files).
        q = shlex.quote
        script = (f"cp -R {SANDBOX_SUBMISSION}/. {SANDBOX_WORK}/ 2>/dev/null || echo 'dlbook grader: the submission "
                  f"did not fit in {SANDBOX_WORK}' >&2; mkdir -p {q(self.scratch)}/matplotlib && "
                  f"cp {SANDBOX_HOME}/.cache/matplotlib/fontlist-*.json {q(self.scratch)}/matplotlib/ 2>/dev/null; "
                  'exec "$@"')
        if self.zygote:  # the kernel joins later (zygote.py); the placeholder keeps the sandbox alive until then
            script = script.replace('exec "$@"', "echo ready; exec sleep 2147483647 >/dev/null")
            return args + ["sh", "-c", script, "dlbook-kernel"]
        return args + ["sh", "-c", script, "dlbook-kernel", *self._prlimit(), *python]

    def start(self, timeout: float = 120, tries: int = 3) -> None:
        """Start the kernel and wait until it answers; try ``tries`` times, then raise RuntimeError."""
        errors = []
        for attempt in range(tries):
            try:
                self._start_once(timeout)
                return
            except (RuntimeError, OSError) as err:  # OSError: the socket directory was not as expected
                errors.append(str(err))
                self.stop()
                if self.zygote:  # never a kernel lost to the zygote: the next try starts Python the ordinary way
                    self.zygote = False
                    errors[-1] += " (from the zygote; trying without it)"
                if attempt + 1 < tries:
                    time.sleep(0.5 * 2 ** attempt)
        raise RuntimeError(f"the kernel did not start ({tries} tries): " + " | ".join(errors))

    def _start_once(self, timeout: float) -> None:
        self.stop()
        self._starts += 1
        n = self._starts
        self._ipc_dir = self.run_dir / f"ipc-{n}"  # new for each start: nothing the last kernel left is used
        self._ipc_dir.mkdir(mode=0o700)
        if self.uid is not None:
            os.chown(self._ipc_dir, self.uid, self.uid)  # a directory we just made in our own 0700 run_dir
        if not self.use_bwrap:
            scratch = Path(self.scratch)
            (scratch / "matplotlib").mkdir(parents=True)
            for font_list in _font_caches():
                shutil.copyfile(font_list, scratch / "matplotlib" / font_list.name)
        inner_ipc = f"{SANDBOX_IPC}/k" if self.use_bwrap else str(self._ipc_dir / "k")
        (self.grader_dir / "kernel.json").write_text(json.dumps(self._connection(inner_ipc)))
        (self.grader_dir / "kernel.json").chmod(0o644)
        self._nproc_base = _user_task_count(os.getuid())
        self._fsize_in_wrapper = bool(self._prlimit())
        self.log = open(self.run_dir / "kernel.log", "ab")  # noqa: SIM115 - closed in stop()
        deadline = time.monotonic() + timeout
        if self.zygote:
            self._start_from_zygote(deadline, timeout)
        else:
            try:
                self.proc = subprocess.Popen(self.command(), cwd=self.work, env=self.environment(),
                                             stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
                                             start_new_session=True, preexec_fn=self._preexec)
            except BaseException:
                self.log.close()
                raise
        self._connect(self._open_sockets(deadline, timeout, n), n, deadline, timeout)

    def _connect(self, conn_dir: Path, n: int, deadline: float, timeout: float) -> None:
        """A client on the kernel's sockets, once it answers ``kernel_info`` (its start-up output dropped)."""
        from jupyter_client import BlockingKernelClient

        host_conn = self.run_dir / f"host-{n}.json"
        host_conn.write_text(json.dumps(self._connection(str(conn_dir / "k"))))
        client = BlockingKernelClient()
        client.load_connection_file(str(host_conn))
        client.start_channels(hb=False)  # liveness is the process itself, not heartbeats
        self.client = client
        while True:  # jupyter_client's wait_for_ready mistakes a slow start for a dead kernel
            self._check_running(deadline, timeout)
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

    def _start_from_zygote(self, deadline: float, timeout: float) -> None:
        """Start the sandbox with its placeholder, wait until /grade is filled, then have a zygote fork join it."""
        import select

        from .zygote import get_zygote

        info_r, info_w = os.pipe()
        try:
            self.proc = subprocess.Popen(self.command(info_fd=info_w), cwd=self.work, env=self.environment(),
                                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.log,
                                         start_new_session=True, preexec_fn=self._preexec, pass_fds=(info_w,))
        except BaseException:
            os.close(info_r)
            self.log.close()
            raise
        finally:
            os.close(info_w)
        try:
            ready, info, waiting = b"", b"", [self.proc.stdout, info_r]
            while b"\n" not in ready:  # the placeholder prints "ready" once /grade is filled
                self._check_running(deadline, timeout)
                for fd in select.select(waiting, [], [], 0.2)[0]:
                    if fd is info_r:
                        chunk = os.read(info_r, 4096)
                        info += chunk
                        if not chunk:  # bubblewrap is done with it (or gone): stop watching it
                            waiting.remove(info_r)
                    else:
                        ready += os.read(self.proc.stdout.fileno(), 64) or b"\n"
            while True:  # bubblewrap has written the sandbox's pid before it ran the placeholder
                try:
                    holder = int(json.loads(info)["child-pid"])
                    break
                except (ValueError, KeyError):
                    chunk = os.read(info_r, 4096) if info_r in waiting and select.select([info_r], [], [], 1.0)[0] \
                        else b""
                    if not chunk:
                        raise RuntimeError(f"bubblewrap did not say the sandbox's pid: {info[:200]!r}; "
                                           f"log: {self.log_tail()}") from None
                    info += chunk
        finally:
            os.close(info_r)
            self.proc.stdout.close()
        if ready.strip() != b"ready":
            raise RuntimeError(f"the sandbox did not get ready: {ready[:200]!r}; log: {self.log_tail()}")
        lim = self.limits
        rlimits = {"RLIMIT_AS": lim.memory_bytes, "RLIMIT_CPU": lim.cpu_seconds, "RLIMIT_CORE": 0,
                   "RLIMIT_FSIZE": lim.file_bytes, "RLIMIT_NPROC": lim.processes}
        env = self.environment()
        # The zygote's environment is what every kernel's /proc/self/environ shows: the course's variables only.
        zygote_env = {**{k: v for k, v in env.items() if k not in _PROTECTED_ONLY_IN_KERNEL},
                      "HOME": str(Path.home()), "PYTHONPATH": str(_dlbook_dir().parent)}
        get_zygote(zygote_env).spawn({
            "holder": holder, "bwrap": self.proc.pid, "uid": self.uid, "log": str(self.run_dir / "kernel.log"),
            "cwd": SANDBOX_WORK, "rlimits": rlimits, "env": env, "argv": self.kernel_args(),
            "sys_path_prefix": env["PYTHONPATH"].split(os.pathsep),
            "threads": int(env.get("OMP_NUM_THREADS", "1"))})

    def _check_running(self, deadline: float, timeout: float) -> None:
        if not self.alive():
            raise RuntimeError(f"the kernel exited while starting; log: {self.log_tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the kernel did not answer within {timeout:.0f} s; log: {self.log_tail()}")

    def _open_sockets(self, deadline: float, timeout: float, n: int) -> Path:
        """Wait for the kernel's sockets; open each without following links; return a directory of links to them.

        The links point at ``/proc/self/fd/<fd>`` of ``O_PATH`` descriptors of the sockets themselves, so the
        client reaches these sockets and nothing else, whatever the kernel later does in its directory.
        """
        dir_fd = os.open(self._ipc_dir, _O_DIR)
        try:
            names = [f"k-{i}" for i in range(1, SOCKETS + 1)]
            while True:
                if all(_lexists(name, dir_fd) for name in names):
                    break
                self._check_running(deadline, timeout)
                time.sleep(0.05)
            if not (hasattr(os, "O_PATH") and os.path.isdir("/proc/self/fd")):
                return self._ipc_dir  # not Linux, so no bubblewrap: the kernel runs as the grader anyway
            owner = self.uid if self.uid is not None else os.geteuid()
            for name in names:
                fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
                self._socket_fds.append(fd)
                st = os.fstat(fd)
                if not stat.S_ISSOCK(st.st_mode) or (os.geteuid() == 0 and st.st_uid != owner):
                    raise RuntimeError(f"{name} in the kernel's socket directory is not the kernel's socket")
        finally:
            os.close(dir_fd)
        conn_dir = self.run_dir / f"conn-{n}"
        conn_dir.mkdir(mode=0o700)
        for name, fd in zip(names, self._socket_fds, strict=True):
            os.symlink(f"/proc/self/fd/{fd}", conn_dir / name)
        return conn_dir

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
        for fd in self._socket_fds:
            os.close(fd)
        self._socket_fds = []
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
            self.proc = None
            self.log.close()

    def cleanup(self) -> None:
        """Stop the kernel, remove every file of it (``rmtree`` follows no link), give its uid back."""
        self.stop()
        shutil.rmtree(self.run_dir, ignore_errors=True)
        if self._uid_lock is not None:
            os.close(self._uid_lock)  # releases the flock: the uid may serve another kernel
            self._uid_lock = None


def _lexists(name: str, dir_fd: int) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False
