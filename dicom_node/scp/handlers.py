"""The pynetdicom event handlers of the storage side: C-ECHO, C-STORE, and the end of an association.

``handle_store`` is thin: it hands the data set, as received, to the association's intake session (limits, header,
durable write, record: ``dicom_node.intake``) and answers with the status of what happened. Known errors map to
statuses in ``dicom_node.intake.statuses``; anything else is a processing failure, never an aborted association.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timezone

from pydicom.dataset import Dataset

from dicom_node.intake import DataSetInMemory, Intake, IntakeSession
from dicom_node.intake.statuses import KNOWN_ERRORS, SUCCESS, status_for_error

__all__ = ["handle_echo", "handle_store", "handle_association_end", "OpenSessions", "utc_now"]

LOGGER = logging.getLogger(__name__)


class OpenSessions:
    """The intake session of each open association, opened at its first C-STORE and ended with the association."""

    def __init__(self, intake: Intake) -> None:
        self.intake = intake
        self._sessions: dict[int, IntakeSession] = {}
        self._lock = threading.Lock()

    def of(self, assoc) -> IntakeSession:
        with self._lock:
            session = self._sessions.get(id(assoc))
            if session is None:
                session = self._sessions[id(assoc)] = self.intake.open_session(calling_ae_of(assoc))
            return session

    def end(self, assoc) -> None:
        with self._lock:
            session = self._sessions.pop(id(assoc), None)
        if session is not None:
            session.end()


def calling_ae_of(assoc) -> str:
    return str(assoc.requestor.ae_title or "").strip()


def handle_echo(event) -> int:
    return SUCCESS


def _status(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]
    return status


def handle_store(event, sessions: OpenSessions) -> int | Dataset:
    """Take one C-STORE data set in through the intake and answer; never raises (pynetdicom would abort).

    Success (or the conflicting-duplicate warning) is answered only once the instance's bytes and its record are
    durable (the journal, ``dicom_node.intake.journal``); its file and row are filed right after.
    """
    calling_ae = calling_ae_of(event.assoc)
    sop_uid = str(event.request.AffectedSOPInstanceUID or "")[:64]
    try:
        stored = sessions.of(event.assoc).store(DataSetInMemory(
            event.encoded_dataset(include_meta=False), str(event.context.transfer_syntax),
            str(event.request.AffectedSOPClassUID or "")))
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
    if stored.warning is not None:
        return _status(stored.warning, stored.warning_comment)
    return SUCCESS


def handle_association_end(event, sessions: OpenSessions, on_end: Callable[[object], None] | None = None) -> None:
    """EVT_RELEASED / EVT_ABORTED: end the association's intake session (the studies it sent into hear of it)."""
    sessions.end(event.assoc)
    if on_end is not None:
        on_end(event.assoc)


def utc_now() -> datetime:
    return datetime.now(timezone.utc)
