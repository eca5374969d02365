"""What a person sees from the command line: every command's ``--help`` reflowed to the terminal, and no library's
chatter (alembic's INFO lines, Celery's superuser warning) in any command's output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from service.cli.main import app
from tests.support.polling import wait_for

CLI = [sys.executable, "-c", "from service.cli.main import main; main()"]
WIDTH = 100


def _commands(command, path=()):
    yield list(path)
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))


def _description(output: str) -> list[str]:
    """The lines between the usage line and the first panel."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("Usage:")) + 1
    end = next((i for i, line in enumerate(lines) if line.lstrip().startswith("╭")), len(lines))
    return [line.rstrip() for line in lines[start:end]]


def test_every_commands_help_renders_with_its_paragraphs_reflowed():
    commands = list(_commands(typer.main.get_command(app)))
    assert len(commands) > 25
    runner = CliRunner()
    for path in commands:
        result = runner.invoke(app, [*path, "--help"], terminal_width=WIDTH)
        assert result.exit_code == 0 and "Traceback" not in result.output, (path, result.output)
        description = _description(result.output)
        for line, following in zip(description, description[1:]):
            # a line broken where the docstring's source was broken, not where the terminal ends
            assert not (following.strip() and len(line.strip()) < WIDTH // 2 and line.strip()[-1:] not in ".:)"), (
                path, line, following)


@pytest.fixture
def cli_env(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("M3EDGE_")}
    env["M3EDGE_HOME"] = str(tmp_path / "home")
    return env


def test_commands_that_touch_the_database_print_no_alembic_lines(cli_env):
    upgraded = subprocess.run([*CLI, "db", "upgrade"], capture_output=True, text=True, env=cli_env, timeout=120)
    doctor = subprocess.run([*CLI, "doctor"], capture_output=True, text=True, env=cli_env, timeout=120)
    assert "database at revision" in upgraded.stdout
    for result in (upgraded, doctor):
        output = result.stdout + result.stderr
        assert "alembic" not in output and "Context impl" not in output and "Traceback" not in output, output


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="Celery warns only when the worker runs as root")
def test_a_worker_started_as_root_prints_no_celery_superuser_warning(cli_env, tmp_path):
    log = tmp_path / "worker.log"
    with log.open("w") as sink:
        worker = subprocess.Popen([*CLI, "worker", "--queues", "io"], stdout=sink, stderr=subprocess.STDOUT,
                                  env=cli_env)
    try:
        wait_for(lambda: "ready" in log.read_text(), timeout=60, message="the worker never became ready")
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
    output = log.read_text()
    assert "superuser privileges" not in output and "SecurityWarning" not in output, output
    assert "alembic" not in output
