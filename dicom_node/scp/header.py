"""The few attributes the node needs from a received data set, read without touching the pixel data."""

from __future__ import annotations

from dataclasses import dataclass
import struct
from io import BytesIO

from pydicom import dcmread
from pydicom.uid import UID

from dicom_node.uids import InvalidUid, validate_uid

__all__ = ["InstanceHeader", "UnreadableDataset", "MissingAttribute", "read_instance_header", "encode_file_meta"]

_PREAMBLE = b"\x00" * 128 + b"DICM"
_TAGS = [
    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "Modality", "StudyDescription",
    "StudyDate", "SeriesDescription", "SeriesNumber", "BodyPartExamined",
]
IMPLEMENTATION_CLASS_UID = UID("2.25.165469126619185460132657717278804599253")  # m3edge: a UUID-derived UID (PS3.5 B.2)
IMPLEMENTATION_VERSION_NAME = "M3EDGE_010"


class UnreadableDataset(ValueError):
    """The data set cannot be parsed in the negotiated transfer syntax."""


class MissingAttribute(ValueError):
    """A Type 1 attribute the node needs (Study, Series or SOP Instance UID) is absent or empty."""

    def __init__(self, attribute: str) -> None:
        super().__init__(f"{attribute} is missing")
        self.attribute = attribute


@dataclass(frozen=True)
class InstanceHeader:
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    modality: str
    study_description: str
    study_date: str
    series_description: str
    series_number: int | None
    body_part_examined: str


def _element(element: int, vr: bytes, value: bytes, pad: bytes) -> bytes:
    if len(value) % 2:
        value += pad
    if vr == b"OB":
        return struct.pack("<HH2s2xI", 0x0002, element, vr, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def encode_file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, calling_ae: str) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information group (PS3.10 7.1) for a received data set."""

    def ascii_(text: str) -> bytes:
        return text.encode("ascii", "replace")

    body = b"".join(
        [
            _element(0x0001, b"OB", b"\x00\x01", b"\x00"),
            _element(0x0002, b"UI", ascii_(sop_class_uid), b"\x00"),
            _element(0x0003, b"UI", ascii_(sop_instance_uid), b"\x00"),
            _element(0x0010, b"UI", ascii_(transfer_syntax_uid), b"\x00"),
            _element(0x0012, b"UI", ascii_(IMPLEMENTATION_CLASS_UID), b"\x00"),
            _element(0x0013, b"SH", ascii_(IMPLEMENTATION_VERSION_NAME), b" "),
            _element(0x0016, b"AE", ascii_(calling_ae), b" ") if calling_ae else b"",
        ]
    )
    return _PREAMBLE + _element(0x0000, b"UL", struct.pack("<I", len(body)), b"") + body


def _text(dataset, keyword: str, limit: int) -> str:
    value = dataset.get(keyword)
    if value is None:
        return ""
    return str(value).strip()[:limit]


def _uid(dataset, keyword: str) -> str:
    value = dataset.get(keyword)
    if value is None or not str(value).strip("\x00 "):
        raise MissingAttribute(keyword)
    return validate_uid(str(value), keyword)


def read_instance_header(file_meta: bytes, data_set: bytes) -> InstanceHeader:
    """Parse the identifying attributes of ``file_meta + data_set``; pixel data is not read.

    Raises ``UnreadableDataset``, ``MissingAttribute`` or ``InvalidUid`` (a crafted or malformed UID).
    """
    try:
        dataset = dcmread(BytesIO(file_meta + data_set), stop_before_pixels=True, specific_tags=_TAGS)
        values = {keyword: dataset.get(keyword) for keyword in _TAGS}  # forces the deferred value conversions
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for corrupt input; all mean "cannot parse"
        raise UnreadableDataset(f"cannot parse the data set: {exc.__class__.__name__}") from exc
    del values
    series_number = dataset.get("SeriesNumber")
    try:
        number = int(series_number) if series_number not in (None, "") else None
    except (TypeError, ValueError):
        number = None
    return InstanceHeader(
        study_uid=_uid(dataset, "StudyInstanceUID"),
        series_uid=_uid(dataset, "SeriesInstanceUID"),
        sop_instance_uid=_uid(dataset, "SOPInstanceUID"),
        sop_class_uid=str(dataset.get("SOPClassUID") or "").strip("\x00 "),
        modality=_text(dataset, "Modality", 16),
        study_description=_text(dataset, "StudyDescription", 64),
        study_date=_text(dataset, "StudyDate", 8),
        series_description=_text(dataset, "SeriesDescription", 64),
        series_number=number,
        body_part_examined=_text(dataset, "BodyPartExamined", 16),
    )


__all__ += ["InvalidUid", "IMPLEMENTATION_CLASS_UID", "IMPLEMENTATION_VERSION_NAME"]
