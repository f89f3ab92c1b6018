"""Kernels forked from the zygote (autograder/grading/zygote.py): as confined as kernels started the ordinary
way (tests/test_grader_sandbox_hardening.py runs every attack on both), and nothing passes between them."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from autograder.grading import zygote as zygote_mod
from autograder.grading.run import execute
from autograder.grading.sandbox import Kernel, Limits, bwrap_available

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (os.geteuid() == 0 and bwrap_available()),
                                 reason="kernels come from the zygote only with a root grader and bubblewrap")]
SECRET = "dlbook-grader-secret-" + os.urandom(6).hex()


def _kernel(src: Path | None = None) -> Kernel:
    env = {"PATH": os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"]), "LANG": "C.UTF-8",
           "OMP_NUM_THREADS": "1"}
    kernel = Kernel(src, Limits(memory_bytes=2 << 30), env, True, zygote=True)
    assert kernel.zygote
    return kernel


def _run(kernel: Kernel, code: str) -> str:
    res = execute(kernel, code, 90, 1 << 16)
    assert res["status"] == "ok", (res, kernel.log_tail(3000))
    return "".join(o.get("text", "") for o in res["outputs"] if o.get("output_type") == "stream")


def _processes_of(uid: int) -> list[int]:
    pids = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{entry}").st_uid == uid:
                pids.append(int(entry))
        except OSError:
            continue
    return pids


@pytest.fixture(scope="module", autouse=True)
def grader_secret():
    """A secret in the grader's environment: no kernel may see it, even though the zygote is the grader's child."""
    os.environ["DLBOOK_TEST_SECRET"] = SECRET
    yield
    del os.environ["DLBOOK_TEST_SECRET"]


def test_a_forked_kernel_has_no_privileges_and_sees_only_its_sandbox(tmp_path) -> None:
    (tmp_path / "mine.txt").write_text("learner file")
    kernel = _kernel(tmp_path)
    try:
        kernel.start(timeout=300)
        out = _run(kernel, r'''
import os, json
status = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\t" in line)
fds = {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
       if os.path.exists(f"/proc/self/fd/{fd}")}
print(json.dumps({"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(), "cwd": os.getcwd(),
                  "files": sorted(os.listdir(".")), "nnp": status["NoNewPrivs"].strip(),
                  "caps": [status[k].strip() for k in ("CapEff", "CapPrm", "CapBnd")],
                  "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
                  "environ": open("/proc/self/environ", "rb").read().decode(errors="replace"),
                  "fds": sorted(set(fds.values())), "root": os.path.exists("/root/.bashrc")}))
''')
        import json

        seen = json.loads(out)
        assert seen["uid"] == kernel.uid and seen["gid"] == kernel.uid and seen["groups"] == []
        assert seen["cwd"] == "/grade" and seen["files"] == ["mine.txt"]
        assert seen["caps"] == ["0000000000000000"] * 3 and seen["nnp"] == "1"
        # bubblewrap's init, the placeholder and the kernel: neither the zygote nor its supervisor is visible
        assert len(seen["pids"]) == 3, seen["pids"]
        assert SECRET not in seen["environ"] and "DLBOOK_TEST_SECRET" not in seen["environ"]
        # open files: its own log (stdout and stderr) and IPython's history in the sandbox's /tmp, nothing else
        files = [f for f in seen["fds"] if f.startswith("/") and f != "/dev/null"]
        assert all(f == str(kernel.run_dir / "kernel.log") or f.endswith("/history.sqlite") for f in files), files
        assert not seen["root"]
    finally:
        kernel.cleanup()


def test_one_learners_changes_to_preloaded_libraries_never_reach_the_next_kernel(tmp_path) -> None:
    first, second = _kernel(), _kernel()
    try:
        first.start(timeout=300)
        _run(first, "import numpy, torch, dlbook.check\nnumpy.sum = lambda *a, **k: 42\n"
                    "torch.Tensor.sum = lambda self, *a, **k: 42\ndlbook.check.assert_close = lambda *a, **k: None\n"
                    "open('/tmp/left-behind', 'w').write('x')")
        second.start(timeout=300)
        out = _run(second, "import numpy, torch, os, dlbook.check\nprint(numpy.sum([1, 2]), float(torch.ones(3).sum()),"
                           " dlbook.check.assert_close.__module__, os.path.exists('/tmp/left-behind'))")
        assert out.split() == ["3", "3.0", "dlbook.check", "False"]
        assert first.uid != second.uid
    finally:
        first.cleanup()
        second.cleanup()


def test_the_zygote_holds_nothing_of_the_grader() -> None:
    kernel = _kernel()
    try:
        kernel.start(timeout=300)
        out = _run(kernel, "import sys\nprint(sorted(m for m in sys.modules if m.startswith('autograder')))")
        assert out.strip() == "[]", "the zygote must not import the grader's package (the judge, the references)"
        z = zygote_mod._ZYGOTE
        assert z is not None and z.alive()
        environ = Path(f"/proc/{z.proc.pid}/environ").read_bytes().decode(errors="replace")
        assert SECRET not in environ
    finally:
        kernel.cleanup()


def test_the_kernel_and_its_sandbox_end_together() -> None:
    kernel = _kernel()
    try:
        kernel.start(timeout=300)
        uid = kernel.uid
        execute(kernel, "import os; os._exit(3)", 30, 1 << 16)
        deadline = time.monotonic() + 30
        while kernel.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not kernel.alive(), "the kernel exited, so its sandbox must end"
        kernel.start(timeout=300)  # a restart forks a new kernel into a new sandbox
        assert _run(kernel, "print(6 * 7)").strip() == "42"
        _run(kernel, "import subprocess; subprocess.Popen(['sleep', '1000'], start_new_session=True)")
        kernel.stop()
        deadline = time.monotonic() + 30
        while _processes_of(uid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _processes_of(uid), "stopping the sandbox kills the kernel and everything it started"
    finally:
        kernel.cleanup()
