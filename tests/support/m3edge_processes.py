"""m3edge commands as real processes (``serve``, ``scp``, ``worker``) and a private Redis server for a test.

Each process logs to its own file (appended across restarts); ``start`` waits for a line that says it is up. The Redis
server is the test's own (a free port, no persistence), never the machine's shared one, so a test may stop it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import redis

from tests.support.polling import wait_for
from tests.support.ports import free_port

__all__ = ["M3edgeProcess", "RedisServer", "ROOT"]

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-c", "from service.cli.main import main; main()"]


class M3edgeProcess:
    """``new_session``: the process leads its own session, so :meth:`kill9` kills it and every process it started
    (receiving processes) at once, as a power cut would."""

    def __init__(self, name: str, args: Sequence[str], env: dict[str, str], log_dir: Path, *,
                 new_session: bool = False) -> None:
        self.name = name
        self.args = list(args)
        self.env = env
        self.log = Path(log_dir) / f"{name}.log"
        self.new_session = new_session
        self.process: subprocess.Popen | None = None

    def start(self, ready_text: str, timeout: float = 90) -> M3edgeProcess:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([*CLI, *self.args], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, cwd=ROOT, start_new_session=self.new_session)
        wait_for(lambda: ready_text in self.text(offset) or self.process.poll() is not None, timeout=timeout,
                 interval=0.1, message=f"m3edge {self.name} did not log {ready_text!r}")
        assert self.process.poll() is None, f"m3edge {self.name} exited:\n{self.text()[-4000:]}"
        return self

    def text(self, offset: int = 0) -> str:
        if not self.log.exists():
            return ""
        with self.log.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode(errors="replace")

    def kill9(self) -> None:
        if self.new_session:
            os.killpg(self.process.pid, signal.SIGKILL)
        else:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self, timeout: float = 60) -> int | None:
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)
        return process.returncode


class RedisServer:
    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        executable = shutil.which("redis-server")
        assert executable is not None, "redis-server is not installed: run scripts/test, which installs it"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)],
            stdout=(self.workdir / "redis.log").open("ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1)

        def answers() -> bool:
            assert self.process.poll() is None, (self.workdir / "redis.log").read_text()[-2000:]
            try:
                return bool(client.ping())
            except redis.exceptions.ConnectionError:
                return False

        wait_for(answers, timeout=30, interval=0.05, message="redis-server did not answer PING")
        client.close()
        return self

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            process.wait(timeout=30)
