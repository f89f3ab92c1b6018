"""Attacks on the confined kernel itself: links in the submission, startup files, the socket directory,
shared uids, the disk. Each test starts real kernels (``Kernel``) and checks the host afterwards."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import socket
import stat
import sys
from pathlib import Path

import pytest

from autograder.grading.run import execute
from autograder.grading.sandbox import Kernel, Limits, bwrap_available

pytestmark = pytest.mark.slow

ROOT = os.geteuid() == 0
NEEDS_BWRAP = pytest.mark.skipif(not bwrap_available(), reason="bubblewrap cannot run here (not installed, or no "
                                 "namespaces): the kernel is not confined on disk, nothing to attack")
NEEDS_ROOT_BWRAP = pytest.mark.skipif(not (ROOT and bwrap_available()),
                                      reason="a uid per kernel needs a root grader and bubblewrap")
BOTH_MODES = pytest.mark.parametrize("use_bwrap", [
    pytest.param(True, marks=NEEDS_BWRAP, id="bwrap"), pytest.param(False, id="rlimits-only")])
SECRET = "dlbook-secret-" + os.urandom(6).hex()


def _env() -> dict[str, str]:
    """The course variables a kernel needs (the sandbox adds HOME and the rest itself)."""
    return {"PATH": os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"]), "LANG": "C.UTF-8",
            "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}


ZYGOTE = [False]  # how _kernel starts kernels in the current test
NO_KERNEL = {"test_uid_claims_are_exclusive_across_processes_and_the_lock_dir_is_checked",
             "test_environment_keeps_configuration_outside_the_submission"}


@pytest.fixture(autouse=True, params=[False, True], ids=["python", "zygote"])
def zygote(request):
    """Every attack runs on a kernel started the ordinary way and on one forked from the zygote."""
    if request.param and request.function.__name__ in NO_KERNEL:
        pytest.skip("this test starts no kernel through _kernel")
    if request.param and not (ROOT and bwrap_available()):
        pytest.skip("kernels come from the zygote only with a root grader and bubblewrap")
    if request.param and "use_bwrap" in request.fixturenames and not request.getfixturevalue("use_bwrap"):
        pytest.skip("without bubblewrap there is no zygote")
    ZYGOTE[0] = request.param
    yield request.param
    ZYGOTE[0] = False


def _kernel(src: Path | None, limits: Limits | None = None, use_bwrap: bool = True) -> Kernel:
    return Kernel(src, limits or Limits(memory_bytes=2 << 30), _env(), use_bwrap, zygote=ZYGOTE[0])


def _run(kernel: Kernel, code: str, timeout: float = 90) -> str:
    """Run ``code`` in ``kernel``; return its stdout (the cell must succeed)."""
    res = execute(kernel, code, timeout, 1 << 16)
    assert res["status"] == "ok", (res, kernel.log_tail(3000))
    return "".join(o.get("text", "") for o in res["outputs"] if o.get("output_type") == "stream")


def _tree(folder: Path) -> dict[str, tuple]:
    """Every entry under ``folder`` (links not followed): kind, mode, owner and content digest."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = Path(root, name)
            st = p.lstat()
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else None
            out[str(p.relative_to(folder))] = (stat.S_IFMT(st.st_mode), st.st_mode, st.st_uid, st.st_gid, digest)
    return out


@BOTH_MODES
def test_links_and_special_files_in_the_submission_are_not_copied(tmp_path, use_bwrap) -> None:
    secret = tmp_path / "host" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text(SECRET)
    (tmp_path / "host" / "dir").mkdir()
    (tmp_path / "host" / "dir" / "inner.txt").write_text(SECRET)
    sub = tmp_path / "sub"
    (sub / "data").mkdir(parents=True)
    (sub / "data" / "table.csv").write_text("a,b\n1,2\n")
    (sub / "run.sh").write_text("#!/bin/sh\n")
    (sub / "run.sh").chmod(0o755)
    (sub / "link_file").symlink_to(secret)
    (sub / "link_dir").symlink_to(secret.parent / "dir")
    (sub / "data" / "relative").symlink_to("../../host/secret.txt")
    os.mkfifo(sub / "fifo")  # opening it would block a copy that reads everything
    before = _tree(tmp_path / "host")
    kernel = _kernel(sub, use_bwrap=use_bwrap)
    try:
        copied = _tree(kernel.work)
        assert set(copied) == {"data", "data/table.csv", "run.sh"}, copied
        assert all(SECRET not in Path(kernel.work, p).read_text() for p in copied if copied[p][4])
        assert copied["run.sh"][1] & 0o111, "the executable bit is kept"
        if use_bwrap:
            kernel.start()
            out = _run(kernel, (
                "import os\nfound = []\nfor root, dirs, files in os.walk('/grade'):\n"
                "    for n in dirs + files:\n        p = os.path.join(root, n)\n"
                "        if os.path.islink(p):\n            found.append('link ' + p)\n"
                "        elif os.path.isfile(p) and " + repr(SECRET) + " in open(p, errors='replace').read():\n"
                "            found.append('secret ' + p)\n"
                f"try:\n    open({str(secret)!r}).read()\n    found.append('host file readable')\n"
                "except OSError:\n    pass\n"
                "print(sorted(os.listdir('/grade')), found)\n"))
            assert out.strip() == "['data', 'run.sh'] []", out
    finally:
        kernel.cleanup()
    assert _tree(tmp_path / "host") == before


@NEEDS_BWRAP
def test_startup_and_config_files_in_the_submission_do_not_run(tmp_path) -> None:
    sub = tmp_path / "sub"
    mark = "import builtins; builtins.DLBOOK_MARK_{} = True\n"
    files = {
        ".ipython/profile_default/startup/00.py": mark.format("STARTUP"),
        ".ipython/profile_default/ipython_config.py": mark.format("IPYTHON_CONFIG"),
        ".ipython/profile_default/ipython_kernel_config.py": mark.format("KERNEL_CONFIG"),
        ".config/matplotlib/matplotlibrc": "lines.linewidth: 7.25\n",
        ".matplotlib/matplotlibrc": "lines.linewidth: 7.25\n",
        ".jupyter/jupyter_config.py": mark.format("JUPYTER_CONFIG"),
        f".local/lib/python{sys.version_info[0]}.{sys.version_info[1]}/site-packages/mark.pth": mark.format("PTH"),
        f".local/lib/python{sys.version_info[0]}.{sys.version_info[1]}/site-packages/usercustomize.py":
            mark.format("USERCUSTOMIZE"),
        "sitecustomize.py": mark.format("SITECUSTOMIZE"),
        # Run instead of the real one when the working directory comes first on sys.path (python -m):
        "ipykernel_launcher.py": mark.format("LAUNCHER") + "from ipykernel import kernelapp\n"
                                 "kernelapp.launch_new_instance()\n",
    }
    for name, text in files.items():
        (sub / name).parent.mkdir(parents=True, exist_ok=True)
        (sub / name).write_text(text)
    check = ("import builtins, matplotlib\n"
             "print(sorted(n for n in dir(builtins) if n.startswith('DLBOOK_MARK')))\n"
             "print(matplotlib.rcParams['lines.linewidth'])\n"
             "print(__import__('_dlbook_guard').__file__)\n")
    # During the session the learner plants startup files wherever this kernel reads them from.
    plant = ("import os\nip = get_ipython()\n"
             "for d in (ip.profile_dir.startup_dir, '/grade/.ipython/profile_default/startup',\n"
             "          os.path.join(os.environ['HOME'], '.ipython/profile_default/startup')):\n"
             "    try:\n        os.makedirs(d, exist_ok=True)\n"
             "        open(os.path.join(d, '99.py'), 'w').write(" + repr(mark.format("RESTART")) + ")\n"
             "        print('planted', d)\n"
             "    except OSError as e:\n        print(d, e.strerror)\n")
    kernel = _kernel(sub)
    try:
        kernel.start()
        for attempt in range(2):  # the second time after a restart, with files planted during the session
            out = _run(kernel, check)
            marks, width, guard = out.split("\n")[:3]
            assert marks == "[]" and width != "7.25", out
            assert guard == "/grader/_dlbook_guard.py"
            if attempt == 0:
                assert "planted" in _run(kernel, plant)
                kernel.stop()
                kernel.start()
    finally:
        kernel.cleanup()


@BOTH_MODES
def test_modules_in_the_submission_do_not_shadow_installed_ones(tmp_path, use_bwrap) -> None:
    sub = tmp_path / "sub"
    sub.mkdir()
    for name in ("numpy", "scipy", "json", "_dlbook_guard"):  # preloaded, installed, stdlib, the grader's
        (sub / f"{name}.py").write_text("FAKE = True\ndef install():\n    pass\n")
    (sub / "helper_mod.py").write_text("VALUE = 42\n")  # a learner's own module still imports
    kernel = _kernel(sub, use_bwrap=use_bwrap)
    try:
        kernel.start()
        out = _run(kernel, (
            "import os, sys, numpy, scipy, json, _dlbook_guard, helper_mod\n"
            "fakes = [m.__name__ for m in (numpy, scipy, json, _dlbook_guard) if hasattr(m, 'FAKE')]\n"
            "print(fakes, helper_mod.VALUE, sys.path[-1] == os.getcwd(), '' in sys.path)\n"))
        assert out.strip() == "[] 42 True False", out
    finally:
        kernel.cleanup()


@NEEDS_BWRAP
def test_socket_directory_tampering_never_reaches_the_host(tmp_path) -> None:
    canary = tmp_path / "canary"
    canary.mkdir()
    for i in range(1, 6):
        (canary / f"k-{i}").write_text(f"canary {i}")
    (canary / "keep").mkdir()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(canary / "sock"))
    listener.listen(5)
    listener.setblocking(False)
    before = _tree(canary)
    attack = (
        "import os\nreport = []\n"
        f"canary = {str(canary)!r}\n"
        "for d in ('/ipc', '/grade/.ipc'):\n"
        "    if not os.path.isdir(d):\n        continue\n"
        "    for name in sorted(os.listdir(d)):\n"
        "        p = os.path.join(d, name)\n"
        "        try:\n            os.unlink(p)\n"
        "            os.symlink(os.path.join(canary, 'sock' if name == 'k-1' else name), p)\n"
        "            report.append('replaced ' + p)\n"
        "        except OSError as e:\n            report.append(f'{p}: {e.strerror}')\n"
        "    try:\n        os.rename(d, d + '.old')\n        os.symlink(canary, d)\n"
        "        report.append('moved ' + d)\n"
        "    except OSError as e:\n        report.append(f'{d}: {e.strerror}')\n"
        "print(report)\n")
    kernel = _kernel(None)
    try:
        kernel.start()
        assert "replaced" in _run(kernel, attack), "the attack did not run: the test proves nothing"
        assert _run(kernel, "print(6 * 7)").strip() == "42"  # the live connections are untouched
        kernel.stop()
        kernel.start()
        assert _run(kernel, "print(6 * 7)").strip() == "42"
        _run(kernel, attack)
        kernel.stop()
        kernel.start()
        assert _run(kernel, "print(7 * 7)").strip() == "49"
    finally:
        kernel.cleanup()
        try:
            listener.accept()
            connected = True
        except BlockingIOError:
            connected = False
        listener.close()
    assert not connected, "the grader connected to a socket the kernel linked to"
    assert _tree(canary) == before, "the grader changed a host directory the kernel linked to"


def _hog_threads() -> str:
    return ("import os, threading\nstop = threading.Event()\nthreads = []\ntry:\n"
            "    while len(threads) < 100000:\n"
            "        t = threading.Thread(target=stop.wait, daemon=True)\n"
            "        t.start()\n        threads.append(t)\n"
            "except RuntimeError:\n    pass\nprint(len(threads), os.getuid())\n")


@NEEDS_ROOT_BWRAP
def test_kernels_have_their_own_uid_and_a_thread_bomb_starves_only_its_own(tmp_path) -> None:
    limits = Limits(memory_bytes=2 << 30, processes=40)
    hog = _kernel(None, limits)
    other = None
    try:
        hog.start()
        spawned, hog_uid = _run(hog, _hog_threads()).split()
        assert 0 < int(spawned) < 40, "RLIMIT_NPROC stopped the bomb"
        other = _kernel(None, limits)
        other.start(timeout=60)  # while every task the hog's uid may have is taken
        out = _run(other, "import os, threading\nts = [threading.Thread(target=lambda: None) for _ in range(8)]\n"
                          "[t.start() for t in ts]\n[t.join() for t in ts]\nprint(os.getuid(), os.getgid())\n")
        uid, gid = out.split()
        assert uid != hog_uid and uid == gid
        assert all(200000 <= int(u) < 201000 for u in (uid, hog_uid)), (uid, hog_uid)
    finally:
        hog.cleanup()
        if other is not None:
            other.cleanup()


def _claim_and_hold(lock_dir, uids, barrier, results) -> None:
    from autograder.grading import sandbox

    sandbox.UID_LOCK_DIR, sandbox.UID_RANGE = lock_dir, uids
    uid, fd = sandbox.claim_uid()
    barrier.wait(30)  # all hold theirs at once
    results.put(uid)
    barrier.wait(30)
    os.close(fd)


@pytest.mark.skipif(not ROOT, reason="the uid lock directory must be owned by root")
def test_uid_claims_are_exclusive_across_processes_and_the_lock_dir_is_checked(tmp_path, monkeypatch) -> None:
    from autograder.grading import sandbox

    lock_dir, uids = tmp_path / "uids", range(200990, 200994)  # a private lock dir: real graders may run now
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_claim_and_hold, args=(lock_dir, uids, barrier, results)) for _ in uids]
    for p in procs:
        p.start()
    claimed = sorted(results.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(30)
    assert claimed == list(uids), claimed
    assert stat.S_IMODE(lock_dir.stat().st_mode) == 0o700 and lock_dir.stat().st_uid == 0
    monkeypatch.setattr(sandbox, "UID_LOCK_DIR", lock_dir)
    monkeypatch.setattr(sandbox, "UID_RANGE", uids)
    held = [sandbox.claim_uid() for _ in uids]
    with pytest.raises(RuntimeError, match="no free sandbox uid"):
        sandbox.claim_uid()
    for _, fd in held:
        os.close(fd)
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    monkeypatch.setattr(sandbox, "UID_LOCK_DIR", tmp_path / "link")
    with pytest.raises(RuntimeError, match="not a plain directory"):
        sandbox.claim_uid()
    os.chown(tmp_path / "elsewhere", 1000, 1000)
    monkeypatch.setattr(sandbox, "UID_LOCK_DIR", tmp_path / "elsewhere")
    with pytest.raises(RuntimeError, match="owned by root"):
        sandbox.claim_uid()
    assert os.listdir(tmp_path / "elsewhere") == []


@NEEDS_BWRAP
def test_grade_and_tmp_are_size_limited_and_the_host_disk_is_untouched(tmp_path) -> None:
    kernel = _kernel(None)  # default limits: 512 MiB each
    try:
        kernel.start()
        out = _run(kernel, (
            "import errno, os\nchunk = bytes(16 << 20)\n"
            "def fill(folder):\n    written = 0\n    try:\n"
            "        for i in range(32):  # 1 GiB in files of 32 MiB (under the file-size limit)\n"
            "            with open(os.path.join(folder, f'fill-{i}'), 'wb') as f:\n"
            "                for _ in range(2):\n                    f.write(chunk)\n"
            "                    written += len(chunk)\n"
            "    except OSError as e:\n        return written >> 20, errno.errorcode.get(e.errno)\n"
            "    return written >> 20, None\n"
            "print(*fill('/grade'), *fill('/tmp'))\n"
            "for folder in ('/grade', '/tmp'):\n"
            "    for n in os.listdir(folder):\n        if n.startswith('fill-'):\n"
            "            os.remove(os.path.join(folder, n))\n"
            "open('/grade/after.txt', 'w').write('room again')\nprint(open('/grade/after.txt').read())\n"),
            timeout=120)
        first, second = out.strip().split("\n")
        grade_mib, grade_err, tmp_mib, tmp_err = first.split()
        assert grade_err == tmp_err == "ENOSPC", out
        assert 400 <= int(grade_mib) <= 512 and 400 <= int(tmp_mib) <= 512, out
        assert second == "room again"
        host_bytes = sum(os.lstat(os.path.join(r, n)).st_size for r, _, fs in os.walk(kernel.run_dir) for n in fs)
        assert host_bytes < 16 << 20, f"{host_bytes} bytes written under the host's run_dir"
    finally:
        kernel.cleanup()


def test_environment_keeps_configuration_outside_the_submission(tmp_path) -> None:
    kernel = Kernel(None, Limits(), {**_env(), "HOME": "/grade", "MPLCONFIGDIR": "/grade/.config", "X": "1"}, False)
    try:
        env = kernel.environment()
        work = kernel.inside(kernel.work)
        for key in ("HOME", "IPYTHONDIR", "MPLCONFIGDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "JUPYTER_CONFIG_DIR",
                    "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR"):
            assert not env[key].startswith(work), (key, env[key])
        assert env["PYTHONSAFEPATH"] == "1" and env["PYTHONNOUSERSITE"] == "1" and env["X"] == "1"
    finally:
        kernel.cleanup()


@NEEDS_BWRAP
def test_a_failed_start_is_tried_again(tmp_path, monkeypatch) -> None:
    real, calls = Kernel.command, []

    def flaky(self, **kwargs):
        calls.append(1)
        return ["false"] if len(calls) == 1 else real(self, **kwargs)

    monkeypatch.setattr(Kernel, "command", flaky)
    kernel = _kernel(None)
    try:
        kernel.start(timeout=60)
        assert _run(kernel, "print(2 + 2)").strip() == "4"
        assert len(calls) == 2
    finally:
        kernel.cleanup()
