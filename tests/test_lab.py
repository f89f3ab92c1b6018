"""``make lab``'s launcher: a working URL with its token, one server per workspace, clean Ctrl-C."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from autograder.config import REPO_ROOT
from autograder.lab import lab_command
from dlbook.distributed import free_port

pytestmark = pytest.mark.slow


def _wait_for(pattern: str, log: Path, proc: subprocess.Popen, seconds: float = 90) -> re.Match:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        match = re.search(pattern, log.read_text())
        if match:
            return match
        assert proc.poll() is None, f"the launcher exited early:\n{log.read_text()[-3000:]}"
        time.sleep(0.5)
    raise AssertionError(f"no {pattern!r} within {seconds} s:\n{log.read_text()[-3000:]}")


def test_lab_command_listens_on_loopback_with_token() -> None:
    cmd = lab_command(Path("/tmp/ws"), 8890, "abc")
    assert "--ServerApp.ip=127.0.0.1" in cmd and "--IdentityProvider.token=abc" in cmd
    assert "--ServerApp.port=8890" in cmd and "--ServerApp.port_retries=0" in cmd


def test_lab_serves_the_workspace_refuses_a_second_server_and_stops_on_ctrl_c(tmp_path) -> None:
    port = free_port()
    dest = tmp_path / "workspace"
    base = [sys.executable, "-m", "autograder", "lab", "--dest", str(dest), "--port", str(port),
            "--course-dir", str(tmp_path / "course")]
    log = tmp_path / "lab.log"
    with log.open("w") as out:
        proc = subprocess.Popen(base, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    try:
        url = _wait_for(rf"http://127\.0\.0\.1:{port}/lab\?token=[0-9a-f]+", log, proc).group(0)
        assert sorted(p.name for p in dest.glob("01_backprop/*.ipynb")), "workspace not built"
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                assert response.status == 200
                assert "JupyterLab" in response.read().decode()
        except urllib.error.URLError as err:  # say what the server printed, not only that it refused
            raise AssertionError(f"{url} refused ({err}); server alive: {proc.poll() is None}; log:\n"
                                 f"{log.read_text()[-4000:]}") from err
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/contents", timeout=30)
        assert denied.value.code == 403, "the server must require its token"

        second = subprocess.run(base, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
        assert second.returncode == 0
        assert "already running" in second.stdout and url in second.stdout, second.stdout + second.stderr

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        assert "JupyterLab stopped" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_learners_jupyterlab_hides_nbgraders_instructor_tools(tmp_path) -> None:
    from autograder.lab import INSTRUCTOR_LAB_PLUGINS, learner_env, write_learner_jupyter_config

    folder = write_learner_jupyter_config(tmp_path / "cfg")
    page = json.loads((folder / "labconfig" / "page_config.json").read_text())
    assert set(page["disabledExtensions"]) == set(page["lockedExtensions"]) == set(INSTRUCTOR_LAB_PLUGINS)
    server = json.loads((folder / "jupyter_server_config.json").read_text())
    assert server["ServerApp"]["jpserver_extensions"] == {"nbgrader.server_extensions.formgrader": False,
                                                          "nbgrader.server_extensions.course_list": False}
    env = learner_env(folder, {"JUPYTER_CONFIG_PATH": "/etc/other", "PATH": "/bin"})
    assert env["JUPYTER_CONFIG_PATH"] == f"{folder}:/etc/other" and env["PATH"] == "/bin"
    assert learner_env(folder, {})["JUPYTER_CONFIG_PATH"] == str(folder)
