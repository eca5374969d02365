"""Kill -9 the receiving processes of ``m3edge scp`` (DICOM_RECEIVERS=2), not the node: the node's own process files
what they journaled and acknowledged, starts them again, and a re-send completes the series. (SQLite only: the
database is the node's business, the same on either engine, and ``test_scp_kill`` runs both.)"""

from __future__ import annotations

import os
import signal

import pytest
from pydicom import dcmread
from sqlalchemy import select

from service.db.models import Instance
from tests.conftest import sqlite_only_database
from tests.integration.test_scp_kill import ScpProcess, _children, _successes, sending_until
from tests.support.dcmtk import storescu
from tests.support.dicom_corpus import write_ct_series
from tests.support.polling import wait_for
from tests.support.ports import free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def migrated_database_url(tmp_path_factory) -> str:
    return sqlite_only_database(tmp_path_factory)


def test_receiving_processes_killed_mid_transfer_leave_their_journal_to_the_node(tmp_path, database_url,
                                                                                  session_factory):
    """DICOM_RECEIVERS=2: the receiving processes journal and ship, the node's own process files. Kill -9 them (not
    the node) in the middle of a transfer: the node files what they acknowledged (their segments, unlocked by their
    death), starts them again, and a re-send completes the series with each instance once."""
    series = write_ct_series(tmp_path / "ct", 150, seed=22)
    uid_of = {path: dcmread(path, stop_before_pixels=True).SOPInstanceUID for path in series.paths}
    node = ScpProcess(tmp_path / "home", database_url, free_port())
    node.env["M3EDGE_DICOM_RECEIVERS"] = "2"
    node.start()
    try:
        receivers = wait_for(lambda: len(found := _children(node.process.pid)) >= 2 and found, timeout=30,
                             message="the receiving processes did not start")
        output = tmp_path / "storescu.out"
        sender = sending_until(node.port, series.paths, output, acknowledged=25)
        for pid in receivers:
            os.kill(pid, signal.SIGKILL)
        sender.wait(timeout=60)
        acknowledged = _successes(output)
        assert 25 <= len(acknowledged) < len(series.paths), "the kill did not land mid-transfer"

        spool = node.home / "spool"

        def recorded() -> dict[str, Instance]:
            with session_factory() as session:
                rows = {row.sop_instance_uid: row for row in session.scalars(select(Instance))}
            return rows if {uid_of[path] for path in acknowledged} <= rows.keys() else {}

        rows = wait_for(recorded, timeout=60, message="the node did not file what its dead receivers acknowledged")
        for path in acknowledged:
            assert dcmread(spool / rows[uid_of[path]].path).PixelData == dcmread(path).PixelData
        assert node.process.poll() is None  # the node itself never stopped

        wait_for(lambda: "is accepting again" in node.log.read_text(), timeout=60,
                 message="the receiving processes were not started again")
        resend = storescu(node.port, series.paths, timeout=300)
        assert resend.returncode == 0, resend.output[-2000:]
        rows = wait_for(lambda: len(r := recorded()) >= len(uid_of) and r, timeout=60,
                        message="the re-sent series was never recorded whole")
        assert sorted(rows) == sorted(uid_of.values()) and not any(r.conflict for r in rows.values())
    finally:
        node.stop()
    assert node.process.returncode == 0
    assert not list((spool / ".journal").iterdir())  # stopped: every segment filed and deleted
