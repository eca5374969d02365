"""``m3edge serve`` as an operator runs it: a subprocess with its own HOME and free ports, fed by dcmtk, stopped by
SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from service.cli.context import CliError
from service.cli.serve import RunningService, ServicePart, prepare_database
from service.config import Settings
from tests.conftest import require_tool
from tests.support.databases import create_postgres_database, drop_postgres_database
from tests.support.dicom_corpus import FAKE_PATIENT, write_ct_series
from tests.support.polling import wait_for
from tests.support.ports import free_port

CLI = [sys.executable, "-c", "from service.cli.main import main; main()"]


def _environment(home: Path, dicom_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("M3EDGE_")}
    env.update(
        M3EDGE_HOME=str(home), M3EDGE_DICOM_PORT=str(dicom_port), M3EDGE_API_PORT=str(free_port()),
        M3EDGE_STUDY_IDLE_SECONDS="1", M3EDGE_STUDY_RELEASE_GRACE_SECONDS="0.5", TCP_NODELAY="1",
        M3EDGE_DEMO_MODELS_WHEN_EMPTY="false",
    )
    return env


def _studies(env: dict[str, str]) -> list[dict]:
    result = subprocess.run([*CLI, "studies", "list", "--json"], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _echo(env: dict[str, str], port: int) -> bool:
    result = subprocess.run(
        [require_tool("echoscu"), "-aec", "M3EDGE", "-aet", "MODALITY", "127.0.0.1", str(port)],
        capture_output=True, env=env, timeout=30,
    )
    return result.returncode == 0


@pytest.mark.slow
def test_serve_receives_a_study_completes_it_and_stops_on_sigterm(tmp_path):
    storescu = require_tool("storescu")
    home, port = tmp_path / "home", free_port()
    env = _environment(home, port)
    series = write_ct_series(tmp_path / "study", 3, rows=64, columns=64)
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([*CLI, "serve"], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        wait_for(lambda: process.poll() is not None or _echo(env, port), timeout=60, interval=0.2,
                 message="m3edge serve never answered C-ECHO")
        assert process.poll() is None, log_path.read_text()
        sent = subprocess.run(
            [storescu, "-aec", "M3EDGE", "-aet", "MODALITY", "127.0.0.1", str(port), *map(str, series.paths)],
            capture_output=True, text=True, env=env, timeout=60,
        )
        assert sent.returncode == 0, sent.stderr
        rows = wait_for(
            lambda: [r for r in _studies(env) if r["study_uid"] == series.study_uid and r["status"] != "receiving"],
            timeout=60, interval=0.3, message="the study never became complete",
        )
        assert (rows[0]["series_count"], rows[0]["instance_count"]) == (1, 3)
        # Query/Retrieve answers on the same port (over the results it produced: none yet for this study).
        found = subprocess.run(
            [require_tool("findscu"), "-S", "-aec", "M3EDGE", "-aet", "MODALITY", "-k", "QueryRetrieveLevel=STUDY",
             "-k", f"StudyInstanceUID={series.study_uid}", "-k", "ModalitiesInStudy", "127.0.0.1", str(port)],
            capture_output=True, text=True, env=env, timeout=60,
        )
        assert found.returncode == 0, found.stderr
        assert "No Acceptable Presentation Contexts" not in found.stderr + found.stdout
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log = log_path.read_text()
    assert f"listening on 0.0.0.0:{port}" in log and "loopback" in log
    assert f"study {series.study_uid} complete (released)" in log
    assert "SIGTERM received" in log and "m3edge stopped" in log
    assert (home / "m3edge.db").is_file()
    assert len(list((home / "spool" / series.study_uid).rglob("*.dcm"))) == 3
    for value in FAKE_PATIENT.values():
        assert value not in log


def test_serve_on_a_busy_port_exits_with_a_clear_error(tmp_path):
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([*CLI, "serve"], capture_output=True, text=True, env=_environment(tmp_path, port),
                                timeout=60)
    assert result.returncode == 2
    assert f"m3edge: error: cannot listen on 0.0.0.0:{port}" in result.stderr
    assert "set M3EDGE_DICOM_PORT" in result.stderr


@pytest.mark.postgres
def test_serve_refuses_a_server_database_that_was_not_upgraded(tmp_path):
    name = f"m3edge_serve_{uuid.uuid4().hex[:10]}"
    url = create_postgres_database(name)
    try:
        with pytest.raises(CliError, match=r"database is at revision none, not \w+: run `m3edge db upgrade` first"):
            prepare_database(Settings(home=tmp_path, database_url=url))
    finally:
        drop_postgres_database(name)


class Part:
    def __init__(self, name: str, journal: list[str], fail: bool = False) -> None:
        self.name, self.journal, self.fail = name, journal, fail

    def start(self) -> None:
        if self.fail:
            raise OSError(f"{self.name} cannot start")
        self.journal.append(f"start {self.name}")

    def stop(self) -> None:
        self.journal.append(f"stop {self.name}")


def _parts(journal: list[str], failing: str = "") -> list[ServicePart]:
    parts = [Part(name, journal, fail=name == failing) for name in ("recorder", "assembler", "node")]
    return [ServicePart(p.name, p.start, p.stop) for p in parts]


def test_service_parts_start_in_order_and_stop_in_reverse():
    journal: list[str] = []
    service = RunningService(_parts(journal))
    service.start()
    service.stop()
    service.stop()  # a second stop does nothing
    assert journal == [
        "start recorder", "start assembler", "start node", "stop node", "stop assembler", "stop recorder",
    ]


def test_a_part_that_fails_to_start_stops_the_ones_already_running():
    journal: list[str] = []
    with pytest.raises(OSError, match="node cannot start"):
        RunningService(_parts(journal, failing="node")).start()
    assert journal == ["start recorder", "start assembler", "stop assembler", "stop recorder"]
