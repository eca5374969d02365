"""Kill -9 ``m3edge scp`` in the middle of a transfer, restart it: nothing that got a success status is lost, nothing
half-written is visible as an instance, and a re-send completes the series."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import select

from service.db.models import Instance
from tests.support.dcmtk import StorescuResult, dcmtk_env, storescu, storescu_command
from tests.support.dicom_corpus import write_ct_series
from tests.support.polling import wait_for
from tests.support.ports import free_port

pytestmark = pytest.mark.slow


class ScpProcess:
    """``m3edge scp`` as its own process, with its own HOME and database."""

    def __init__(self, home: Path, database_url: str, port: int) -> None:
        self.home, self.port = home, port
        self.env = {
            **os.environ, "M3EDGE_HOME": str(home), "M3EDGE_DATABASE_URL": database_url,
            "M3EDGE_DICOM_PORT": str(port), "M3EDGE_DICOM_HOST": "127.0.0.1", "M3EDGE_SPOOL_RESERVE_BYTES": "0",
            "M3EDGE_STUDY_IDLE_SECONDS": "3600",
        }
        self.process: subprocess.Popen | None = None
        self.log = home / "scp.log"

    def start(self) -> ScpProcess:
        self.home.mkdir(parents=True, exist_ok=True)
        offset = self.log.stat().st_size if self.log.exists() else 0  # the log is appended to across restarts
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", "from service.cli.main import main; main(['scp'])"], env=self.env, stdout=log,
                stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[2],
            )
        wait_for(lambda: f"listening on 127.0.0.1:{self.port}" in self.log.read_text()[offset:]
                 or self.process.poll() is not None,
                 timeout=60, message="m3edge scp did not start")
        assert self.process.poll() is None, self.log.read_text()[-3000:]
        return self

    def kill9(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)


def _successes(output: Path) -> set[Path]:
    result = StorescuResult(0, output.read_text(errors="replace"))
    return {path for path, status in result.responses().items() if status == "Success"}


def sending_until(port: int, paths, output: Path, acknowledged: int) -> subprocess.Popen:
    """storescu sending ``paths`` over one association (its output in ``output``), once it has ``acknowledged``
    successes (or has ended)."""
    with output.open("w") as sink:
        sender = subprocess.Popen(storescu_command(port, paths), env=dcmtk_env(), stdout=sink,
                                  stderr=subprocess.STDOUT)
    wait_for(lambda: len(_successes(output)) >= acknowledged or sender.poll() is not None, timeout=120,
             message=f"storescu never got {acknowledged} instances through")
    return sender


def _children(pid: int) -> list[int]:
    return [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()]


def test_kill_9_mid_transfer_loses_nothing_acknowledged(tmp_path, database_url, session_factory):
    series = write_ct_series(tmp_path / "ct", 150, seed=21)
    uid_of = {path: dcmread(path, stop_before_pixels=True).SOPInstanceUID for path in series.paths}
    node = ScpProcess(tmp_path / "home", database_url, free_port()).start()
    try:
        output = tmp_path / "storescu.out"
        sender = sending_until(node.port, series.paths, output, acknowledged=25)
        receivers = _children(node.process.pid)
        node.kill9()
        sender.wait(timeout=60)
        acknowledged = _successes(output)
        assert 25 <= len(acknowledged) < len(series.paths), "the kill did not land mid-transfer"
        # its receiving processes end with it (SIGTERM from the kernel, the pipe's end: both at once, no deadlock)
        wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in receivers), timeout=30,
                 message="a receiving process outlived the node it belonged to")

        node.start()  # a restart cleans up what the crash left half-written
        spool = node.home / "spool"
        with session_factory() as session:
            rows = session.scalars(select(Instance)).all()
        recorded = {row.sop_instance_uid: row for row in rows}
        for path in acknowledged:
            row = recorded[uid_of[path]]
            stored = dcmread(spool / row.path)
            assert stored.PixelData == dcmread(path).PixelData
        for row in rows:  # every recorded instance is a complete file under study/series
            assert (spool / row.path).stat().st_size == row.size_bytes
            assert row.path.count("/") == 2 and row.path.endswith(".dcm")
        assert not list((spool / ".incoming").iterdir())  # the half-written temporary file is gone

        resend = storescu(node.port, series.paths, timeout=300)
        assert resend.returncode == 0, resend.output[-2000:]
        assert set(resend.responses().values()) == {"Success"}

        def all_recorded() -> list:  # acknowledged means journaled: the rows follow a moment later
            with session_factory() as session:
                rows = session.scalars(select(Instance)).all()
            return rows if len(rows) >= len(uid_of) else []

        rows = wait_for(all_recorded, timeout=60, message="the re-sent series was never recorded whole")
        assert sorted(r.sop_instance_uid for r in rows) == sorted(uid_of.values())
        assert not any(r.conflict for r in rows)
        on_disk = {str(p.relative_to(spool)) for p in spool.rglob("*.dcm") if ".incoming" not in p.parts}
        assert on_disk == {r.path for r in rows}
    finally:
        node.stop()

