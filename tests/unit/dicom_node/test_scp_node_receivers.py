"""With several receiving processes, what only works inside this process is refused, not silently ignored."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from dicom_node.intake.spool import SpoolWriter
from dicom_node.scp import DicomNode
from tests.support.scp_node import node_settings


class _NoRecorder:
    def record(self, instance) -> None:
        raise AssertionError("nothing is received in this test")

    def associations_ended(self, *args) -> None:
        pass


@pytest.mark.parametrize("given", ["spool", "clock", "query_retrieve"])
def test_in_process_parts_need_a_single_receiving_process(tmp_path, given):
    settings = node_settings(tmp_path, dicom_receivers=2)
    extra = {"spool": {"spool": SpoolWriter(tmp_path / "spool")},
             "clock": {"clock": lambda: datetime(2026, 1, 1, tzinfo=timezone.utc)},
             "query_retrieve": {"query_retrieve": object()}}[given]
    with pytest.raises(ValueError, match="DICOM_RECEIVERS=1"):
        DicomNode(settings, _NoRecorder(), **extra)
    DicomNode(node_settings(tmp_path, dicom_receivers=1), _NoRecorder(), **extra)  # one process: fine
    DicomNode(settings, _NoRecorder())  # several, with nothing in-process: fine
