"""Warm kernels for plain nbgrader (autograder/warm_kernels.py): forks of a template that behave like new kernels."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from autograder import warm_kernels

from .servers import wait_gone

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not warm_kernels.available(), reason="warm kernels need Linux with pidfds")]


def _run(kc, code: str, timeout: float = 60.0) -> tuple[str, dict]:
    """Execute ``code``; return its stdout and the execute reply's content."""
    msg_id = kc.execute(code)
    out = []
    while True:
        msg = kc.get_iopub_msg(timeout=timeout)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    reply = kc.get_shell_msg(timeout=timeout)
    return "".join(out), reply["content"]


def _gone(*pids: int) -> bool:
    return not wait_gone(set(pids), timeout=10.0)


@pytest.fixture(scope="module")
def manager_class():
    yield warm_kernels.kernel_manager_class()
    if warm_kernels._SERVER is not None:  # this process's fork server, as nbgrader's ends with nbgrader
        server = warm_kernels._SERVER
        server.close()
        assert _gone(server.proc.pid)


def _start(manager_class, tmp_path: Path, **env):
    km = manager_class(kernel_name="python3")
    asyncio.run(km.start_kernel(cwd=str(tmp_path), env={**os.environ, **env}))
    kc = km.blocking_client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    return km, kc


def _stop(km, kc) -> None:
    kc.stop_channels()
    asyncio.run(km.shutdown_kernel(now=True))


def test_a_warm_kernel_is_a_fork_that_looks_like_a_new_kernel(manager_class, tmp_path) -> None:
    (tmp_path / "helper_module.py").write_text("VALUE = 41 + 1\n")
    km, kc = _start(manager_class, tmp_path, DLBOOK_WARM_TEST="from-nbgrader")
    try:
        pid = km.provisioner.pid
        assert isinstance(km.provisioner.process, warm_kernels.ForkedProcess)
        out, reply = _run(kc, (
            "import os, sys, subprocess\n"
            "print('torch' in sys.modules, 'torch._dynamo' in sys.modules)\n"  # imported by the template, not here
            "print(os.getpid(), os.getppid(), os.getpgid(0), os.getsid(0))\n"
            "print(os.getcwd()); print(sys.path[0])\n"
            "print(os.environ.get('DLBOOK_WARM_TEST'))\n"
            "import helper_module; print(helper_module.VALUE)\n"  # the notebook's folder is importable
            "print(subprocess.run([sys.executable, '-c', 'print(7)'], capture_output=True, text=True).stdout.strip())\n"
            "print(sys.stdin.read() == '', sorted(int(f) for f in os.listdir('/proc/self/fd'))[:3])\n"
            "print(__name__, sys.argv[0])\n"))
        assert reply["status"] == "ok", reply
        lines = out.splitlines()
        assert lines[0] == "True True"
        kernel_pid, parent, pgid, sid = map(int, lines[1].split())
        assert kernel_pid == pid and parent != os.getpid() and pgid == sid == pid  # its own session and group
        assert lines[2] == lines[3] == str(tmp_path.resolve())
        assert lines[4] == "from-nbgrader"
        assert lines[5] == "42"
        assert lines[6] == "7"  # the kernel's subprocesses are waited for (SIGCHLD is not ignored)
        assert lines[7] == "True [0, 1, 2]"
        assert lines[8] == "__main__ ipykernel_launcher"
        assert not any(str(Path(warm_kernels.__file__).name) in line for line in lines)
    finally:
        _stop(km, kc)
    assert _gone(pid)


def test_each_warm_kernel_has_fresh_seeds(manager_class, tmp_path) -> None:
    code = "import random, numpy, torch\nprint(random.random(), numpy.random.rand(), torch.rand(1).item())\n"
    draws = []
    for _ in range(2):
        km, kc = _start(manager_class, tmp_path)
        try:
            out, reply = _run(kc, code)
            assert reply["status"] == "ok", reply
            draws.append(out.split())
        finally:
            _stop(km, kc)
    assert len(draws[0]) == 3 and all(a != b for a, b in zip(*draws, strict=True)), draws


def test_interrupt_and_shutdown_reach_a_warm_kernel(manager_class, tmp_path) -> None:
    km, kc = _start(manager_class, tmp_path)
    try:
        pid = km.provisioner.pid
        msg_id = kc.execute("import time\ntime.sleep(60)", stop_on_error=False)  # the next request is not aborted
        time.sleep(1.0)
        asyncio.run(km.interrupt_kernel())
        while True:
            reply = kc.get_shell_msg(timeout=30)
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt"
        # a process the kernel started is in its process group, and goes with it
        out, rep = _run(kc, "import subprocess\np = subprocess.Popen(['sleep', '300'])\nprint(p.pid)")
        assert rep["status"] == "ok", rep
        child = int(out.strip())
        assert asyncio.run(km.is_alive())
    finally:
        _stop(km, kc)
    assert _gone(pid, child)
    assert km.provisioner is None or not km.provisioner.has_process


def test_a_killed_warm_kernel_is_seen_dead(manager_class, tmp_path) -> None:
    km, kc = _start(manager_class, tmp_path)
    try:
        process = km.provisioner.process
        os.kill(process.pid, signal.SIGKILL)
        assert _gone(process.pid)
        deadline = time.monotonic() + 10
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert process.poll() == 0 and not asyncio.run(km.is_alive())
        process.kill()  # nothing happens: the pidfd is closed and no recycled pid can be hit
    finally:
        _stop(km, kc)


def test_only_ipykernel_of_this_interpreter_is_forked(tmp_path) -> None:
    assert warm_kernels.warm_args([sys.executable, "-m", "ipykernel_launcher", "-f", "c.json"]) == ["-f", "c.json"]
    assert warm_kernels.warm_args(["/usr/bin/env", "-m", "ipykernel_launcher", "-f", "c.json"]) is None
    assert warm_kernels.warm_args([sys.executable, "-m", "other_kernel", "-f", "c.json"]) is None
    assert warm_kernels.warm_args([str(tmp_path / "no-such-python"), "-m", "ipykernel_launcher"]) is None


def test_without_the_fork_server_kernels_start_the_ordinary_way(manager_class, tmp_path, monkeypatch) -> None:
    def broken():
        raise RuntimeError("the warm-kernel server did not start")

    monkeypatch.setattr(warm_kernels, "_server", broken)
    km, kc = _start(manager_class, tmp_path)
    try:
        assert not isinstance(km.provisioner.process, warm_kernels.ForkedProcess)
        out, reply = _run(kc, "import os, sys\nprint(os.getppid(), 'torch' in sys.modules)")
        assert reply["status"] == "ok" and out.split() == [str(os.getpid()), "False"]
    finally:
        _stop(km, kc)
