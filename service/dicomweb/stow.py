"""STOW-RS: each received Part 10 file takes the C-STORE path: the header walk, the spool (temporary file, fsync, link,
directory fsync), the database recorder (group commit) and, when the request ends, the assembler's 'released' signal,
so a study sent over HTTP is completed and processed exactly like one sent by C-STORE.

The file meta group is rewritten as the node writes it for C-STORE (our implementation UID, no source AE); the data
set bytes are stored as received. Instances are recorded with the calling AE ``STOW-RS``.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from pydicom.uid import UID

from dicom_node.scp.header import UnreadableDataset, encode_file_meta, read_instance_header
from dicom_node.scp.recording import InstanceRecorder, ReceivedInstance
from dicom_node.scp.spool import InstanceLocation, SpoolWriter, StoreOutcome
from dicom_node.scp.statuses import KNOWN_ERRORS, status_for_error
from dicom_node.uids import InvalidUid, validate_uid
from service.dicomweb.dicom_json import attribute

__all__ = ["StowReceiver", "StowResult", "StoredInstance", "FailedInstance", "STOW_CALLING_AE"]

LOGGER = logging.getLogger(__name__)

STOW_CALLING_AE = "STOW-RS"
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"}
FAILURE_PROCESSING = 0x0110
FAILURE_TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
FAILURE_DOES_NOT_MATCH = 0xA900  # also: the instance belongs to another study than the request names
WARNING_CONFLICTING_DUPLICATE = 0x0001  # as the C-STORE path answers: kept beside the first copy


class _Rejected(ValueError):
    def __init__(self, reason: int, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class StoredInstance:
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
    stored: list[StoredInstance] = field(default_factory=list)
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


def _referenced(stored: StoredInstance, base: str) -> dict:
    item = {
        "00081150": attribute("UI", stored.sop_class_uid),
        "00081155": attribute("UI", stored.sop_instance_uid),
        "00081190": attribute("UR", f"{base}/studies/{stored.study_uid}/series/{stored.series_uid}"
                                    f"/instances/{stored.sop_instance_uid}"),
    }
    if stored.warning is not None:
        item["00081196"] = attribute("US", stored.warning)
    return item


def _meta_text(value: bytes) -> str:
    return value.decode("ascii", "replace").rstrip("\x00 ").strip()


def split_part10(data: memoryview) -> tuple[dict[int, str], memoryview]:
    """The file meta elements (by element number) and the data set of a Part 10 file.

    The preamble and ``DICM`` may be missing (pydicom writes none for a data set made in memory); the file meta
    group may not: without it the transfer syntax is unknown.
    """
    if len(data) >= 140 and bytes(data[128:132]) == b"DICM":
        pos = 132
    elif bytes(data[:2]) == b"\x02\x00":
        pos = 0
    else:
        raise UnreadableDataset("not a DICOM file: no file meta group (with or without the 128-byte preamble)")
    meta: dict[int, str] = {}
    while pos + 8 <= len(data):
        group, element = struct.unpack_from("<HH", data, pos)
        if group != 0x0002:
            break
        vr = bytes(data[pos + 4:pos + 6])
        if vr in _LONG_VRS:
            length, size = struct.unpack_from("<I", data, pos + 8)[0], 12
        else:
            length, size = struct.unpack_from("<H", data, pos + 6)[0], 8
        if pos + size + length > len(data):
            raise UnreadableDataset("the file meta group runs past the end of the part")
        meta[element] = _meta_text(bytes(data[pos + size:pos + size + length])) if vr == b"UI" else ""
        pos += size + length
    return meta, data[pos:]


class StowReceiver:
    """Stores STOW-RS parts durably and records them; thread-safe like the C-STORE handler it mirrors."""

    def __init__(self, spool: SpoolWriter, recorder: InstanceRecorder, clock: Callable[[], datetime]) -> None:
        self.spool = spool
        self.recorder = recorder
        self.clock = clock

    def store(self, parts: Sequence[memoryview], study_uid: str | None = None) -> StowResult:
        result = StowResult()
        opened: set[str] = set()  # studies this request has committed into (it counts as one sender each)
        for part in parts:
            sop_class, sop_uid = "", ""
            try:
                meta, data_set = split_part10(part)
                sop_class, sop_uid = meta.get(0x0002, ""), meta.get(0x0003, "")
                result.stored.append(self._store_one(meta, bytes(data_set), study_uid, opened))
                opened.add(result.stored[-1].study_uid)
            except _Rejected as exc:
                result.failed.append(FailedInstance(sop_class, sop_uid, exc.reason, str(exc)))
            except KNOWN_ERRORS as exc:
                LOGGER.warning("STOW-RS instance %r refused: %s", sop_uid[:64], exc)
                result.failed.append(FailedInstance(sop_class, sop_uid, status_for_error(exc), str(exc)))
            except Exception as exc:  # noqa: BLE001 - one bad part fails itself, never its neighbours
                LOGGER.exception("STOW-RS instance %r failed unexpectedly", sop_uid[:64])
                result.failed.append(FailedInstance(sop_class, sop_uid, FAILURE_PROCESSING, exc.__class__.__name__))
        studies = {s.study_uid for s in result.stored}
        if studies:
            try:  # the end of the request is the end of the transfer: the assembler's 'released' signal
                self.recorder.associations_ended(studies, self.clock())
            except Exception:  # noqa: BLE001 - bookkeeping; the idle timer still completes the study
                LOGGER.exception("could not record the end of a STOW-RS request for %d study(ies)", len(studies))
        return result

    def _store_one(
        self, meta: dict[int, str], data_set: bytes, study_uid: str | None, opened: set[str]
    ) -> StoredInstance:
        transfer_syntax = meta.get(0x0010, "")
        try:
            validate_uid(transfer_syntax, "TransferSyntaxUID")
        except InvalidUid as exc:
            raise _Rejected(FAILURE_TRANSFER_SYNTAX_NOT_SUPPORTED, str(exc)) from exc
        if not UID(transfer_syntax).is_transfer_syntax:
            raise _Rejected(FAILURE_TRANSFER_SYNTAX_NOT_SUPPORTED, f"unknown transfer syntax {transfer_syntax}")
        provisional = encode_file_meta(meta.get(0x0002, ""), meta.get(0x0003, ""), transfer_syntax, "")
        header = read_instance_header(provisional, data_set, transfer_syntax)
        if study_uid is not None and header.study_uid != study_uid:
            raise _Rejected(FAILURE_DOES_NOT_MATCH, f"the instance belongs to study {header.study_uid}, "
                                                    f"not to the study {study_uid} this request stores into")
        sop_class = header.sop_class_uid or meta.get(0x0002, "")
        file_meta = encode_file_meta(sop_class, header.sop_instance_uid, transfer_syntax, "")
        location = InstanceLocation(header.study_uid, header.series_uid, header.sop_instance_uid)
        spooled = self.spool.write(location, (file_meta, data_set))
        self.recorder.record(ReceivedInstance(
            study_uid=header.study_uid, series_uid=header.series_uid, sop_instance_uid=header.sop_instance_uid,
            sop_class_uid=sop_class, transfer_syntax_uid=transfer_syntax, relative_path=spooled.relative_path,
            size_bytes=spooled.size_bytes, digest=spooled.digest, conflict=spooled.conflict,
            duplicate=spooled.outcome is StoreOutcome.DUPLICATE, calling_ae=STOW_CALLING_AE, received_at=self.clock(),
            modality=header.modality, study_description=header.study_description, study_date=header.study_date,
            series_description=header.series_description, series_number=header.series_number,
            body_part_examined=header.body_part_examined, opens_association=header.study_uid not in opened,
        ))
        warning = WARNING_CONFLICTING_DUPLICATE if spooled.outcome is StoreOutcome.CONFLICT else None
        return StoredInstance(header.study_uid, header.series_uid, sop_class, header.sop_instance_uid, warning)
