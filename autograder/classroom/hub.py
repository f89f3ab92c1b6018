"""The classroom hub's JupyterHub configuration (read by the hub process through its generated config file).

Learners log in with the password the instructor hands them (nativeauthenticator, signup off); each
learner's JupyterLab runs as their system user in their home, with nbgrader's instructor tools off; the
instructor's runs as the user who started the hub, on the course directory, with the formgrader.
"""

from __future__ import annotations

import pwd
import sys
from pathlib import Path
from typing import Any

from jupyterhub.spawner import LocalProcessSpawner

from . import INSTRUCTOR, PROXY, Classroom

BIN = Path(sys.executable).parent  # the course's environment (not resolved: the venv's own bin)


class ClassroomSpawner(LocalProcessSpawner):
    """LocalProcessSpawner whose ``instructor`` account runs as the hub's own user, on the course directory."""

    room: Classroom

    def system_user(self) -> str:
        return self.room.instructor_user if self.user.name == INSTRUCTOR else self.user.name

    def make_preexec_fn(self, name: str):
        return super().make_preexec_fn(self.system_user())

    def user_env(self, env: dict) -> dict:
        entry = pwd.getpwnam(self.system_user())
        env.update(USER=entry.pw_name, HOME=entry.pw_dir, SHELL=entry.pw_shell or "/bin/bash")
        return env

    def get_env(self) -> dict:
        env = super().get_env()
        role = "instructor" if self.user.name == INSTRUCTOR else "learner"
        # Extra configuration beside the user's own ~/.jupyter (which keeps their settings, writable).
        env["JUPYTER_CONFIG_PATH"] = str(self.room.config_dir(role))
        env["PATH"] = f"{BIN}:/usr/local/bin:/usr/bin:/bin"
        return env

    def get_args(self) -> list[str]:
        args = super().get_args()
        if self.user.name == INSTRUCTOR:
            args += [f"--ServerApp.root_dir={self.room.course_dir}"]
            if self.system_user() == "root":
                args.append("--allow-root")
        return args


def configure(c: Any, folder: str) -> Any:
    """Fill the JupyterHub config ``c`` for the classroom kept in ``folder``; return it."""
    room = Classroom.load(Path(folder))
    private = room.private
    c.JupyterHub.ip = room.ip
    c.JupyterHub.port = room.port
    c.JupyterHub.hub_ip = "127.0.0.1"
    c.JupyterHub.hub_port = room.hub_port
    c.JupyterHub.db_url = f"sqlite:///{private / 'jupyterhub.sqlite'}"
    c.JupyterHub.cookie_secret_file = str(private / "jupyterhub_cookie_secret")
    c.JupyterHub.pid_file = str(private / "jupyterhub.pid")
    c.ConfigurableHTTPProxy.command = [str(PROXY)]
    c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{room.proxy_api_port}"
    c.ConfigurableHTTPProxy.auth_token = (private / "proxy_token").read_text().strip()
    c.ConfigurableHTTPProxy.pid_file = str(private / "proxy.pid")

    c.JupyterHub.authenticator_class = "nativeauthenticator.NativeAuthenticator"
    c.NativeAuthenticator.enable_signup = False  # accounts come from the roster only
    c.NativeAuthenticator.open_signup = False
    c.NativeAuthenticator.allowed_failed_logins = 10
    c.NativeAuthenticator.seconds_before_next_try = 60
    learners = {s.student_id for s in room.students()}
    c.Authenticator.allowed_users = learners | {INSTRUCTOR}
    c.Authenticator.admin_users = {INSTRUCTOR}

    ClassroomSpawner.room = room
    c.JupyterHub.spawner_class = ClassroomSpawner
    c.Spawner.cmd = [str(BIN / "jupyterhub-singleuser")]
    c.Spawner.default_url = "/lab"
    c.Spawner.env_keep = ["LANG", "LC_ALL", "DLBOOK_FAST", "OMP_NUM_THREADS", "DLBOOK_DEVICE"]
    c.Spawner.start_timeout = 120
    c.Spawner.http_timeout = 120
    c.JupyterHub.cleanup_servers = True  # stopping the hub stops every learner's server
    return c
