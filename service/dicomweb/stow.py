"""STOW-RS: each part of a request streams into the spool as it arrives and is taken in by the node's own intake.

Nothing is held whole: the multipart body is split as it streams (``MultipartStream``), each part's File Meta is read
from its first bytes, the File Meta the node writes (as for C-STORE: our implementation UID, no source AE) goes into a
pending spool file, and the data set follows it there chunk by chunk, as received. At the end of the part the
intake (``dicom_node.intake``) applies the same limits, header reading, durable step and record as a C-STORE;
the request is one intake session (recorded with calling AE ``STOW-RS``), so its end counts as the end of an
association for study assembly and the study is completed and processed like one sent by C-STORE. The durable step
is the API process's journal (``dicom_node.intake.journal``), as in the DICOM node; the response also waits until
the stored instances have their rows, so a search right after it finds them.

Whole-request refusals are typed (:class:`StowRefused`): a body over ``STOW_MAX_REQUEST_BYTES`` or an instance over
``DICOM_MAX_INSTANCE_BYTES`` / ``DICOM_MAX_INFLATED_BYTES`` stops the reading at once (413; what was stored before
stays stored), a part that is not ``application/dicom`` is 415, a malformed body 400. Any other failure fails its own
instance, with the C-STORE status as Failure Reason, and the next part is read.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from dicom_node.intake import (
    DataSetInSpool,
    InstanceTooLarge,
    Intake,
    IntakeSession,
    PendingFile,
    read_file_meta,
    transfer_syntax_of,
)
from dicom_node.intake.header import MAX_FILE_META_BYTES, encode_file_meta
from dicom_node.intake.statuses import KNOWN_ERRORS, PROCESSING_FAILURE, status_for_error
from service.dicomweb.dicom_json import attribute
from service.dicomweb.multipart import MultipartError, MultipartStream, PartData, PartEnd, PartStart, media_type_parameters

__all__ = ["StowReceiver", "StowResult", "StoredPart", "FailedInstance", "StowRefused", "STOW_CALLING_AE"]

LOGGER = logging.getLogger(__name__)

STOW_CALLING_AE = "STOW-RS"
_META_WINDOW = 132 + MAX_FILE_META_BYTES + 12  # preamble, DICM, the largest File Meta group, one element header


class StowRefused(Exception):
    """The whole request is refused: ``http_status`` and a sentence saying what to do."""

    def __init__(self, http_status: int, title: str, detail: str, stored: int = 0) -> None:
        super().__init__(detail)
        self.http_status = http_status
        self.title = title
        self.detail = detail
        self.stored = stored


@dataclass(frozen=True)
class StoredPart:
    study_uid: str
    series_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    warning: int | None = None


@dataclass(frozen=True)
class FailedInstance:
    sop_class_uid: str
    sop_instance_uid: str
    reason: int
    message: str


@dataclass
class StowResult:
    stored: list[StoredPart] = field(default_factory=list)
    failed: list[FailedInstance] = field(default_factory=list)

    @property
    def http_status(self) -> int:
        """200 all stored, 202 some failed or warned, 409 none stored (PS3.18 10.5.3)."""
        if not self.stored:
            return 409
        if self.failed or any(s.warning is not None for s in self.stored):
            return 202
        return 200

    def to_json(self, base: str, study_uid: str | None) -> dict:
        body: dict = {}
        studies = {s.study_uid for s in self.stored}
        target = study_uid or (next(iter(studies)) if len(studies) == 1 else None)
        if target:
            body["00081190"] = attribute("UR", f"{base}/studies/{target}")
        if self.stored:
            body["00081199"] = {"vr": "SQ", "Value": [_referenced(s, base) for s in self.stored]}
        if self.failed:
            body["00081198"] = {"vr": "SQ", "Value": [
                {"00081150": attribute("UI", f.sop_class_uid), "00081155": attribute("UI", f.sop_instance_uid),
                 "00081197": attribute("US", f.reason)} for f in self.failed]}
        return body


def _referenced(stored: StoredPart, base: str) -> dict:
    item = {
        "00081150": attribute("UI", stored.sop_class_uid),
        "00081155": attribute("UI", stored.sop_instance_uid),
        "00081190": attribute("UR", f"{base}/studies/{stored.study_uid}/series/{stored.series_uid}"
                                    f"/instances/{stored.sop_instance_uid}"),
    }
    if stored.warning is not None:
        item["00081196"] = attribute("US", stored.warning)
    return item


class _Part:
    """One part on its way into the spool: its first bytes until the File Meta is read, then a pending file."""

    def __init__(self, intake: Intake) -> None:
        self._intake = intake
        self._head = bytearray()
        self._pending: PendingFile | None = None
        self._data_set_offset = 0
        self._data_set_bytes = 0
        self.meta = None
        self.failure: BaseException | None = None  # the part is skipped to its end, then reported

    def feed(self, data: bytes) -> None:
        if self.failure is not None:
            return
        try:
            if self._pending is None:
                self._head += data
                if len(self._head) >= _META_WINDOW:
                    self._open()
                return
            self._write(data)
        except InstanceTooLarge:
            self.discard()
            raise
        except KNOWN_ERRORS as exc:
            self.discard()
            self.failure = exc

    def _open(self) -> None:
        head, self._head = bytes(self._head), bytearray()
        self.meta = read_file_meta(head)
        syntax = transfer_syntax_of(self.meta.transfer_syntax_uid)
        self._pending = self._intake.spool.new_file()
        file_meta = encode_file_meta(self.meta.sop_class_uid, self.meta.sop_instance_uid, syntax, "")
        self._data_set_offset = len(file_meta)
        self._pending.write(file_meta)
        self._write(memoryview(head)[self.meta.data_set_offset:])

    def _write(self, data: bytes | memoryview) -> None:
        self._data_set_bytes += len(data)
        self._intake.limits.check_size(self._data_set_bytes)
        self._pending.write(data)

    def finish(self) -> DataSetInSpool:
        """The complete part, for ``IntakeSession.store`` (raises the failure met on the way, if any)."""
        if self.failure is None and self._pending is None:
            try:
                self._open()
            except KNOWN_ERRORS as exc:
                self.discard()
                self.failure = exc
        if self.failure is not None:
            raise self.failure
        return DataSetInSpool(self._pending, self._data_set_offset, self.meta.transfer_syntax_uid,
                              self.meta.sop_class_uid, self.meta.sop_instance_uid)

    def discard(self) -> None:
        if self._pending is not None:
            self._pending.discard()


class StowReceiver:
    """Takes STOW-RS requests in through ``intake``; thread-safe (each request is its own intake session)."""

    def __init__(self, intake: Intake, *, max_request_bytes: int) -> None:
        self.intake = intake
        self.max_request_bytes = max_request_bytes

    def store(self, chunks: Iterable[bytes], boundary: str, study_uid: str | None = None) -> StowResult:
        """Read the request body from ``chunks`` as it arrives and store each part; raise ``StowRefused``."""
        result = StowResult()
        session = self.intake.open_session(STOW_CALLING_AE)
        part: _Part | None = None
        try:
            stream = MultipartStream(boundary)
            received = 0
            for chunk in chunks:
                received += len(chunk)
                if received > self.max_request_bytes:
                    raise StowRefused(413, "request too large", f"send at most {self.max_request_bytes} bytes per "
                                      "request (STOW_MAX_REQUEST_BYTES); larger studies go in several requests")
                for event in stream.feed(chunk):
                    if isinstance(event, PartStart):
                        _check_part_type(event)
                        part = _Part(self.intake)
                    elif isinstance(event, PartData):
                        part.feed(event.data)
                    else:
                        self._store_part(session, part, study_uid, result)
                        part = None
            stream.finish()
        except MultipartError as exc:
            raise StowRefused(400, "malformed multipart body", str(exc), len(result.stored)) from exc
        except InstanceTooLarge as exc:
            raise StowRefused(413, "instance too large", str(exc), len(result.stored)) from exc
        except StowRefused as exc:
            exc.stored = len(result.stored)
            raise
        finally:
            if part is not None:
                part.discard()
            session.end()  # the end of the request is the end of the transfer: the assembler's 'released' signal
        if not result.stored and not result.failed:
            raise StowRefused(400, "no instances", "the multipart body holds no parts")
        wait = getattr(self.intake.store, "wait_until_recorded", None)
        if result.stored and wait is not None:
            # Each stored part is durable (journaled) already; the answer also waits for their rows, so a client
            # that searches right after its STOW-RS finds what it stored (one wait per request, not per part).
            wait()
        return result

    @staticmethod
    def _store_part(session: IntakeSession, part: _Part, study_uid: str | None, result: StowResult) -> None:
        sop_class, sop_uid = "", ""
        try:
            data_set = part.finish()
            sop_class, sop_uid = data_set.sop_class_uid, data_set.sop_instance_uid
            stored = session.store(data_set, expected_study_uid=study_uid)
        except InstanceTooLarge:
            raise
        except KNOWN_ERRORS as exc:
            meta = part.meta
            if meta is not None:
                sop_class, sop_uid = meta.sop_class_uid, meta.sop_instance_uid
            LOGGER.warning("STOW-RS instance %r refused: %s", sop_uid[:64], exc)
            result.failed.append(FailedInstance(sop_class, sop_uid, status_for_error(exc), str(exc)))
            return
        except Exception as exc:  # noqa: BLE001 - one bad part fails itself, never its neighbours
            LOGGER.exception("STOW-RS instance %r failed unexpectedly", sop_uid[:64])
            result.failed.append(FailedInstance(sop_class, sop_uid, PROCESSING_FAILURE, exc.__class__.__name__))
            return
        header = stored.header
        result.stored.append(StoredPart(header.study_uid, header.series_uid, header.sop_class_uid or sop_class,
                                        header.sop_instance_uid, stored.warning))


def _check_part_type(event: PartStart) -> None:
    part_type, _ = media_type_parameters(event.content_type or "application/dicom")
    if part_type != "application/dicom":
        raise StowRefused(415, "unsupported media type", f"a part is {part_type!r}; every part must be application/dicom")

