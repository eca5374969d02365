"""``m3edge api`` as an operator runs it, for tests that attack it over loopback: its own HOME and port, users made
with ``m3edge users add``, its process id for reading its memory from /proc."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.m3edge_processes import M3edgeProcess
from tests.support.polling import wait_for
from tests.support.ports import free_port

__all__ = ["ApiProcess", "running_api", "m3edge_env", "run_cli", "PASSWORDS", "CSRF_FIELD", "log_in"]

CLI = [sys.executable, "-c", "from service.cli.main import main; main()"]
PASSWORDS = {"ada": "correct horse battery", "rex": "another long secret"}
ROLES = {"ada": "admin", "rex": "reviewer"}
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]*)"')


def m3edge_env(home: Path, **settings: str) -> dict[str, str]:
    """The environment of an m3edge command: nothing from the caller's M3EDGE_* settings, these ones instead."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("M3EDGE_") and k != "FORWARDED_ALLOW_IPS"}
    env.update({"M3EDGE_HOME": str(home), "M3EDGE_DEMO_MODELS_WHEN_EMPTY": "false", "TCP_NODELAY": "1"})
    env.update({f"M3EDGE_{key.upper()}": value for key, value in settings.items()})
    return env


def run_cli(env: dict[str, str], *args: str, input: str | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([*CLI, *args], env=env, input=input, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"m3edge {' '.join(args)}: {result.stderr[-2000:]}"
    return result


@dataclass
class ApiProcess:
    process: M3edgeProcess
    base_url: str
    env: dict[str, str]
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.process.pid

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    def bearer(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[name]}"}

    def audit(self, **params) -> list[dict]:
        response = httpx.get(self.base_url + "/api/v1/admin/audit", params={"limit": 500, **params},
                             headers=self.bearer("ada"), verify=False)
        assert response.status_code == 200, response.text
        return response.json()["items"]


def log_in(client: httpx.Client, name: str, password: str | None = None) -> httpx.Response:
    """Through the log-in form, as a browser does (its CSRF cookie and token first)."""
    page = client.get("/ui/login")
    token = CSRF_FIELD.search(page.text).group(1)
    return client.post("/ui/login", data={"username": name, "password": password or PASSWORDS[name],
                                          "csrf_token": token, "next": "/ui/"})


@contextmanager
def running_api(workdir: Path, *, command: str = "api", scheme: str = "http", **settings: str) -> Iterator[ApiProcess]:
    """``m3edge api`` (or ``serve``) on a free loopback port with an admin ``ada`` (made by ``m3edge users add``) and a
    reviewer ``rex`` (made through the admin API): passwords in PASSWORDS, API tokens in ``tokens``; stopped with
    SIGTERM afterwards."""
    home = workdir / "home"
    port = free_port()
    settings.setdefault("api_port", str(port))
    env = m3edge_env(home, **settings)
    secret = PASSWORDS["ada"]
    created = run_cli(env, "users", "add", "ada", "--role", "admin", "--password", input=f"{secret}\n{secret}\n")
    tokens = {"ada": created.stdout.strip().splitlines()[-1]}
    process = M3edgeProcess(command, [command], env, workdir)
    process.start("Uvicorn running on" if command == "api" else "m3edge serving", timeout=120)
    base = f"{scheme}://127.0.0.1:{settings['api_port']}"

    def answers() -> bool:
        try:
            return httpx.get(base + "/healthz", verify=False, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(answers, timeout=60, interval=0.1, message=f"m3edge {command} never answered /healthz")
        for name, role in ROLES.items():
            if name not in tokens:  # the others through the admin API: one process start less each
                response = httpx.post(base + "/api/v1/admin/users", headers={"Authorization": f"Bearer {tokens['ada']}"},
                                      json={"name": name, "role": role, "password": PASSWORDS[name]}, verify=False)
                assert response.status_code == 201, response.text
                tokens[name] = response.json()["token"]
        yield ApiProcess(process, base, env, tokens)
    finally:
        process.stop()
