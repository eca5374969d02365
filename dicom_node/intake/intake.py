"""The one way in: every instance the node receives, by C-STORE or STOW-RS, is taken in by :meth:`IntakeSession.store`.

In order, each in one place:

1. **limits**: the data set's size (``DICOM_MAX_INSTANCE_BYTES``) and, for the deflated syntax, its inflated size
   (``DICOM_MAX_INFLATED_BYTES``), counted in bounded chunks (``dicom_node.intake.deflate``);
2. **header**: the identity (study, series, SOP instance) and the descriptive attributes the catalogue keeps, read
   from the data set's first bytes (``dicom_node.intake.header``); a STOW-RS part whose File Meta names another SOP
   Instance than its data set, or another study than the request's URL, is refused;
3. **the durable step** (:class:`DurableStore`): the instance's bytes and its database record, both durable before
   ``store`` returns. The node and STOW-RS use :class:`~dicom_node.intake.journal.JournalStore` (one group-committed
   fdatasync of the process's journal; the file and row follow in the background, the row only once the file and
   its name are durable). :class:`SpoolAndRecorder` is the plain way, for callers without a journal: the file
   (fdatasync, link, directory fsync), then the row;
4. **senders**: each session (an association, or a STOW-RS request) counts once as an open sender of every study it
   stored into, until :meth:`IntakeSession.end` (study assembly's "released" signal).

Admission by disk (:meth:`Intake.admission_refusal`) is asked when a session starts: at A-ASSOCIATE-RQ for C-STORE,
before the body is read for STOW-RS.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from pydicom.uid import UID

from dicom_node.intake.admission import DiskAdmission
from dicom_node.intake.deflate import check_inflated_size, inflated_prefix
from dicom_node.intake.header import (
    HEADER_REGION_BYTES,
    InstanceHeader,
    encode_file_meta,
    read_instance_header,
)
from dicom_node.intake.journal import MemoryFile
from dicom_node.intake.limits import IntakeLimits
from dicom_node.intake.recording import InstanceRecorder, ReceivedInstance, begin_recording
from dicom_node.intake.spool import InstanceLocation, PendingFile, SpooledFile, SpoolWriter, StoreOutcome
from dicom_node.intake.statuses import (
    CONFLICTING_DUPLICATE_COMMENT,
    WARNING_CONFLICTING_DUPLICATE,
    DataSetMismatch,
    TransferSyntaxNotSupported,
)
from dicom_node.uids import InvalidUid, validate_uid

__all__ = [
    "Intake", "IntakeSession", "DataSetInMemory", "DataSetInSpool", "StoredInstance", "DurableStore",
    "SpoolAndRecorder", "transfer_syntax_of",
]

LOGGER = logging.getLogger(__name__)


def transfer_syntax_of(value: str) -> UID:
    """``value`` as a transfer syntax the intake can read (any pydicom knows), else ``TransferSyntaxNotSupported``."""
    try:
        uid = UID(validate_uid(value, "TransferSyntaxUID"))
    except InvalidUid as exc:
        raise TransferSyntaxNotSupported(str(exc)) from exc
    if not uid.is_transfer_syntax:
        raise TransferSyntaxNotSupported(f"transfer syntax {uid} is not one the node can read")
    return uid


@dataclass(frozen=True)
class DataSetInMemory:
    """A C-STORE data set as pynetdicom received it (no File Meta), in its negotiated transfer syntax."""

    data: bytes
    transfer_syntax_uid: str
    sop_class_uid: str = ""  # the request's Affected SOP Class UID, used when the data set has none


@dataclass
class DataSetInSpool:
    """A STOW-RS part streamed into ``pending``: the File Meta the intake wrote from ``meta`` (what the part's own
    File Meta declared), then the data set as received, from ``data_set_offset`` on."""

    pending: PendingFile
    data_set_offset: int
    transfer_syntax_uid: str
    sop_class_uid: str
    sop_instance_uid: str


ReceivedDataSet = DataSetInMemory | DataSetInSpool


@dataclass(frozen=True)
class StoredInstance:
    header: InstanceHeader
    spooled: SpooledFile

    @property
    def warning(self) -> int | None:
        """The C-STORE warning status (PS3.4 B.2.3) for this instance, or None for a plain success."""
        return WARNING_CONFLICTING_DUPLICATE if self.spooled.outcome is StoreOutcome.CONFLICT else None

    @property
    def warning_comment(self) -> str:
        return CONFLICTING_DUPLICATE_COMMENT if self.warning is not None else ""


class DurableStore(Protocol):
    """The durable step: make the instance's file and its record durable, both, before returning."""

    def new_file(self) -> PendingFile | MemoryFile:
        """Where a C-STORE data set is put (with its File Meta) before ``persist``."""

    def ended(self, study_uids: Collection[str], ended_at: datetime) -> None:
        """A sender that stored into ``study_uids`` ended (after the records of what it stored)."""

    def persist(
        self, pending: PendingFile, location: InstanceLocation, describe: Callable[[SpooledFile], ReceivedInstance],
        recorded: Callable[[ReceivedInstance], None],
    ) -> SpooledFile:
        """``describe`` builds the record once the file's outcome is known; ``recorded`` is called once the record
        is committed (also when the file's last sync then fails, so the caller's bookkeeping matches the database)."""


class SpoolAndRecorder:
    """The plain durable step, without a journal: the file in the spool (fdatasync, link, directory fsync), then the
    row by the recorder (its group commit). Three syncs in series per instance; the row is committed only once the
    file's name is durable, so no crash leaves a recorded instance without its file."""

    def __init__(self, spool: SpoolWriter, recorder: InstanceRecorder) -> None:
        self.spool = spool
        self.recorder = recorder

    def new_file(self) -> PendingFile:
        return self.spool.new_file()

    def ended(self, study_uids: Collection[str], ended_at: datetime) -> None:
        self.recorder.associations_ended(study_uids, ended_at)

    def persist(
        self, pending: PendingFile, location: InstanceLocation, describe: Callable[[SpooledFile], ReceivedInstance],
        recorded: Callable[[ReceivedInstance], None],
    ) -> SpooledFile:
        spooled = self.spool.publish(pending, location)
        instance = describe(spooled)
        begin_recording(self.recorder, instance)()
        recorded(instance)
        return spooled


class IntakeSession:
    """One sender's visit: a C-STORE association, or a STOW-RS request. Its ``store`` calls come one at a time."""

    def __init__(self, intake: Intake, calling_ae: str) -> None:
        self._intake = intake
        self.calling_ae = calling_ae
        self._studies: set[str] = set()  # committed into: this session is one open sender of each until it ends
        self._lock = threading.Lock()
        self._ended = False

    @property
    def studies(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._studies)

    def store(self, data_set: ReceivedDataSet, *, expected_study_uid: str | None = None) -> StoredInstance:
        """Take one instance in, durably; raise one of ``statuses.KNOWN_ERRORS`` (or anything, unexpectedly)."""
        syntax = transfer_syntax_of(data_set.transfer_syntax_uid)
        if isinstance(data_set, DataSetInMemory):
            header, pending = self._spool_from_memory(data_set, syntax)
            sop_class = header.sop_class_uid or data_set.sop_class_uid
        else:
            header = self._check_spooled(data_set, syntax)
            pending = data_set.pending
            sop_class = header.sop_class_uid or data_set.sop_class_uid
        if expected_study_uid is not None and header.study_uid != expected_study_uid:
            pending.discard()
            raise DataSetMismatch(f"the instance belongs to study {header.study_uid}, not to the study "
                                  f"{expected_study_uid} this request stores into")
        stored = self._persist(pending, header, syntax, sop_class)
        if stored.warning is not None:
            LOGGER.warning("SOP Instance UID %s from %s was already stored with different content; kept both (%s)",
                           header.sop_instance_uid, self.calling_ae, stored.spooled.relative_path)
        return stored

    def _spool_from_memory(self, data_set: DataSetInMemory, syntax: UID,
                           ) -> tuple[InstanceHeader, PendingFile | MemoryFile]:
        data = memoryview(data_set.data)
        header = self._intake.read_header(syntax, len(data), lambda offset, size: data[offset:offset + size],
                                          lambda: (data,))
        pending = self._intake.store.new_file()
        try:
            pending.write(encode_file_meta(header.sop_class_uid or data_set.sop_class_uid, header.sop_instance_uid,
                                           syntax, self.calling_ae))
            pending.write(data)
        except BaseException:
            pending.discard()
            raise
        return header, pending

    def _check_spooled(self, data_set: DataSetInSpool, syntax: UID) -> InstanceHeader:
        pending, offset = data_set.pending, data_set.data_set_offset
        try:
            header = self._intake.read_header(syntax, pending.size - offset,
                                              lambda start, size: pending.read(offset + start, size),
                                              lambda: pending.chunks(offset))
            if header.sop_instance_uid != data_set.sop_instance_uid:
                raise DataSetMismatch(f"the File Meta names SOP Instance {data_set.sop_instance_uid!r}, the data set "
                                      f"{header.sop_instance_uid}")
        except BaseException:
            pending.discard()
            raise
        return header

    def _persist(self, pending: PendingFile | MemoryFile, header: InstanceHeader, syntax: UID, sop_class_uid: str) -> StoredInstance:
        location = InstanceLocation(header.study_uid, header.series_uid, header.sop_instance_uid)
        received_at = self._intake.clock()
        with self._lock:
            opens = header.study_uid not in self._studies

        def describe(spooled: SpooledFile) -> ReceivedInstance:
            return ReceivedInstance(
                study_uid=header.study_uid, series_uid=header.series_uid, sop_instance_uid=header.sop_instance_uid,
                sop_class_uid=sop_class_uid, transfer_syntax_uid=str(syntax), relative_path=spooled.relative_path,
                size_bytes=spooled.size_bytes, digest=spooled.digest, conflict=spooled.conflict,
                duplicate=spooled.outcome is StoreOutcome.DUPLICATE, calling_ae=self.calling_ae,
                received_at=received_at, modality=header.modality, study_description=header.study_description,
                study_date=header.study_date, series_description=header.series_description,
                series_number=header.series_number, body_part_examined=header.body_part_examined,
                patient_name=header.patient_name, patient_id=header.patient_id,
                accession_number=header.accession_number, opens_association=opens,
            )

        def recorded(instance: ReceivedInstance) -> None:
            with self._lock:
                self._studies.add(instance.study_uid)

        return StoredInstance(header, self._intake.store.persist(pending, location, describe, recorded))

    def end(self) -> None:
        """The sender is done (association released or aborted, request answered): tell the recorder which studies
        it stored into. Never raises: the idle timer still completes the studies if this bookkeeping fails."""
        with self._lock:
            if self._ended:
                return
            self._ended = True
            studies = set(self._studies)
        if not studies:
            return
        try:
            self._intake.store.ended(studies, self._intake.clock())
        except Exception:  # noqa: BLE001 - bookkeeping must never break the DICOM path
            LOGGER.exception("could not record the end of a sender for %d study(ies)", len(studies))


class Intake:
    """Limits, header, admission, the durable step and the senders' bookkeeping, for C-STORE and STOW-RS alike."""

    def __init__(
        self, spool: SpoolWriter, recorder: InstanceRecorder, *, admission: DiskAdmission, limits: IntakeLimits,
        clock: Callable[[], datetime], store: DurableStore | None = None,
    ) -> None:
        self.spool = spool
        self.recorder = recorder
        self.admission = admission
        self.limits = limits
        self.clock = clock
        self.store = store or SpoolAndRecorder(spool, recorder)

    def admission_refusal(self) -> str | None:
        """Why no new sender may start now (the spool's disk is too full, or cannot be checked), or None."""
        try:
            return self.admission.refusal()
        except OSError as exc:
            return f"cannot check the spool's disk: {exc}"

    def open_session(self, calling_ae: str) -> IntakeSession:
        return IntakeSession(self, calling_ae)

    def read_header(
        self, syntax: UID, size: int, read: Callable[[int, int], bytes | memoryview],
        raw_chunks: Callable[[], Iterable[bytes | memoryview]],
    ) -> InstanceHeader:
        """Check the limits and read the identity of a data set of ``size`` bytes (``read(offset, size)``)."""
        self.limits.check_size(size)
        if syntax.is_deflated:
            check_inflated_size(raw_chunks(), self.limits.max_inflated_bytes)
            region = inflated_prefix(raw_chunks(), HEADER_REGION_BYTES)
        else:
            region = read(0, HEADER_REGION_BYTES)
        return read_instance_header(region, str(syntax))
