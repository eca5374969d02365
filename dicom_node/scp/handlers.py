"""The pynetdicom event handlers: C-ECHO, C-STORE, and the association bookkeeping around them.

``handle_store`` is thin: read the identifying attributes, write the received bytes to the spool (no decoding, no
recompression), record the instance, answer. Errors map to statuses in ``statuses``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timezone

from pydicom.dataset import Dataset

from dicom_node.scp.header import encode_file_meta, read_instance_header
from dicom_node.scp.recording import InstanceRecorder, ReceivedInstance, begin_recording
from dicom_node.scp.spool import InstanceLocation, SpooledFile, SpoolWriter, StoreOutcome
from dicom_node.scp.statuses import (
    KNOWN_ERRORS,
    SUCCESS,
    WARNING_CONFLICTING_DUPLICATE,
    status_for_error,
)

__all__ = ["handle_echo", "handle_store", "AssociationStudies"]

LOGGER = logging.getLogger(__name__)


class AssociationStudies:
    """Which studies each open association stored into, so release/abort can be reported per study."""

    def __init__(self) -> None:
        self._studies: dict[int, set[str]] = {}
        self._lock = threading.Lock()

    def add(self, assoc, study_uid: str) -> None:
        with self._lock:
            self._studies.setdefault(id(assoc), set()).add(study_uid)

    def holds(self, assoc, study_uid: str) -> bool:
        """Whether ``assoc`` has already committed an instance into ``study_uid``."""
        with self._lock:
            return study_uid in self._studies.get(id(assoc), ())

    def pop(self, assoc) -> set[str]:
        with self._lock:
            return self._studies.pop(id(assoc), set())


def handle_echo(event) -> int:
    return SUCCESS


def _status(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]
    return status


def handle_store(
    event, spool: SpoolWriter, recorder: InstanceRecorder, studies: AssociationStudies, clock: Callable[[], datetime]
) -> int | Dataset:
    """Store one C-STORE data set durably, record it, and answer; never raises (pynetdicom would abort).

    Success is answered only after the file's data, its name (directory fsync) and its database row are all durable;
    the row's commit runs while the directory is synced (see ``SpoolWriter.write``'s ``on_linked``).
    """
    request = event.request
    calling_ae = (event.assoc.requestor.ae_title or "").strip()
    transfer_syntax = str(event.context.transfer_syntax)
    sop_uid = str(request.AffectedSOPInstanceUID or "")[:64]
    try:
        data_set = request.DataSet.getvalue()
        file_meta = encode_file_meta(
            str(request.AffectedSOPClassUID), str(request.AffectedSOPInstanceUID), transfer_syntax, calling_ae
        )
        header = read_instance_header(file_meta, data_set, transfer_syntax)
        location = InstanceLocation(header.study_uid, header.series_uid, header.sop_instance_uid)
        received_at = clock()
        opens_association = not studies.holds(event.assoc, header.study_uid)
        commit: list = []

        def start_recording(spooled: SpooledFile) -> None:
            """The file is durable under its final name: commit its row while the spool syncs the directory."""
            commit.append(begin_recording(recorder, ReceivedInstance(
                study_uid=header.study_uid,
                series_uid=header.series_uid,
                sop_instance_uid=header.sop_instance_uid,
                sop_class_uid=header.sop_class_uid or str(request.AffectedSOPClassUID),
                transfer_syntax_uid=transfer_syntax,
                relative_path=spooled.relative_path,
                size_bytes=spooled.size_bytes,
                digest=spooled.digest,
                conflict=spooled.conflict,
                duplicate=spooled.outcome is StoreOutcome.DUPLICATE,
                calling_ae=calling_ae,
                received_at=received_at,
                modality=header.modality,
                study_description=header.study_description,
                study_date=header.study_date,
                series_description=header.series_description,
                series_number=header.series_number,
                body_part_examined=header.body_part_examined,
                opens_association=opens_association,
            )))

        try:
            spooled = spool.write(location, (file_meta, data_set), on_linked=start_recording)
        finally:
            for wait_for_commit in commit:  # also when the directory sync failed: never leave a commit behind
                wait_for_commit()
                # Committed: the study counts this association as a sender until it ends (even if the sync failed).
                studies.add(event.assoc, header.study_uid)
    except KNOWN_ERRORS as exc:
        code = status_for_error(exc)
        LOGGER.warning(
            "C-STORE from %s refused with status 0x%04X: %s (affected SOP Instance UID %r)", calling_ae, code, exc, sop_uid
        )
        return _status(code, str(exc))
    except Exception as exc:  # noqa: BLE001 - an unexpected error fails this instance, never the association
        code = status_for_error(exc)
        LOGGER.exception("C-STORE from %s failed unexpectedly (affected SOP Instance UID %r)", calling_ae, sop_uid)
        return _status(code, f"processing failure: {exc.__class__.__name__}")
    if spooled.outcome is StoreOutcome.CONFLICT:
        LOGGER.warning(
            "SOP Instance UID %s from %s was already stored with different content; kept both (%s)",
            header.sop_instance_uid, calling_ae, spooled.relative_path,
        )
        return _status(WARNING_CONFLICTING_DUPLICATE, "SOP Instance UID held with other content: kept both")
    return SUCCESS


def handle_association_end(event, recorder: InstanceRecorder, studies: AssociationStudies, clock) -> None:
    """EVT_RELEASED / EVT_ABORTED: tell the recorder which studies this association stored into."""
    study_uids = studies.pop(event.assoc)
    if not study_uids:
        return
    try:
        recorder.associations_ended(study_uids, clock())
    except Exception:  # noqa: BLE001 - bookkeeping must never break the DICOM path; the idle timer still completes
        LOGGER.exception("could not record the end of an association for %d study(ies)", len(study_uids))


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


__all__ += ["handle_association_end", "utc_now"]
