"""``handle_store`` through the intake's plain durable step (``SpoolAndRecorder``, no journal): the success status
comes only after the file, its name and its database row are all durable, in that order (the row's commit starts
only once the name is durable), and a failure of either is never answered with success. The journal's order is
tested in ``test_journal.py``."""

from __future__ import annotations

from pathlib import Path

from datetime import datetime, timezone
from types import SimpleNamespace

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

import dicom_node.intake.spool as spool_module
from dicom_node.intake import DiskAdmission, Intake, IntakeLimits
from dicom_node.intake.recording import RecorderError
from dicom_node.intake.spool import SpoolWriter
from dicom_node.intake.statuses import PROCESSING_FAILURE, SUCCESS
from dicom_node.scp.handlers import OpenSessions, handle_store

SOP_UID = "1.2.3.4.5"


def _store_event() -> SimpleNamespace:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = SOP_UID
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = "1.2.3.4"
    ds.Modality = "CT"
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    request = SimpleNamespace(AffectedSOPClassUID=CTImageStorage, AffectedSOPInstanceUID=SOP_UID)
    data_set = buffer.getvalue()
    return SimpleNamespace(
        request=request,
        assoc=SimpleNamespace(requestor=SimpleNamespace(ae_title="CT01")),
        context=SimpleNamespace(transfer_syntax=ExplicitVRLittleEndian),
        encoded_dataset=lambda include_meta=True: data_set,  # pynetdicom's Event.encoded_dataset, as received
    )


class _OrderedRecorder:
    """begin_record/wait logged in ``events``; ``fail`` makes the commit fail."""

    def __init__(self, events: list[str], fail: bool = False) -> None:
        self.events = events
        self.fail = fail

    def begin_record(self, instance):
        self.events.append(f"commit started {instance.relative_path}")

        def wait() -> None:
            self.events.append("commit done")
            if self.fail:
                raise RecorderError("the database refused the row")

        return wait

    def record(self, instance) -> None:
        raise AssertionError("begin_record is used when the recorder has it")

    def associations_ended(self, study_uids, ended_at) -> None:
        pass


@pytest.fixture
def spool(tmp_path, monkeypatch) -> tuple[SpoolWriter, list[str]]:
    events: list[str] = []
    real = spool_module._fsync_dir

    def fsync_dir(path) -> None:
        real(path)
        events.append(f"fsync {Path(path).name}")

    monkeypatch.setattr(spool_module, "_fsync_dir", fsync_dir)
    writer = SpoolWriter(tmp_path / "spool")
    writer.prepare()
    return writer, events


def _clock() -> datetime:
    return datetime(2026, 3, 1, tzinfo=timezone.utc)


def _sessions(writer: SpoolWriter, recorder) -> OpenSessions:
    admission = DiskAdmission(writer.root, 100, 0)
    return OpenSessions(Intake(writer, recorder, admission=admission, limits=IntakeLimits(), clock=_clock))


def test_success_is_answered_after_the_directory_fsync_and_the_commit(spool):
    writer, events = spool
    status = handle_store(_store_event(), _sessions(writer, _OrderedRecorder(events)))
    events.append("answered")
    assert status == SUCCESS
    path = f"1.2.3/1.2.3.4/{SOP_UID}.dcm"
    assert writer.path_of(path).is_file()
    start = events.index("fsync 1.2.3.4")
    assert events[start:] == ["fsync 1.2.3.4", "commit started " + path, "commit done", "answered"]


def test_a_failed_commit_is_not_answered_with_success(spool):
    writer, events = spool
    status = handle_store(_store_event(), _sessions(writer, _OrderedRecorder(events, fail=True)))
    assert status != SUCCESS and status.Status == PROCESSING_FAILURE  # the sender retries


def test_a_failed_directory_fsync_fails_the_instance_before_any_commit(spool, monkeypatch):
    writer, events = spool
    real = spool_module._fsync_dir

    def broken_fsync(path) -> None:
        if Path(path).name == "1.2.3.4":  # the series directory, synced after the link
            raise OSError(5, "Input/output error")
        real(path)

    monkeypatch.setattr(spool_module, "_fsync_dir", broken_fsync)
    status = handle_store(_store_event(), _sessions(writer, _OrderedRecorder(events)))
    assert status != SUCCESS
    assert not [event for event in events if event.startswith("commit")]  # never a row whose name may not survive
