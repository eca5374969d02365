"""The few attributes the node needs from a received data set, read without touching the pixel data."""

from __future__ import annotations

from dataclasses import dataclass
import struct
import zlib
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


_UID_TAGS = {
    0x0020000D: "StudyInstanceUID", 0x0020000E: "SeriesInstanceUID", 0x00080018: "SOPInstanceUID",
}
_WANTED = {
    0x00080016: "SOPClassUID", 0x00080018: "SOPInstanceUID", 0x00080020: "StudyDate", 0x00080060: "Modality",
    0x00081030: "StudyDescription", 0x0008103E: "SeriesDescription", 0x00180015: "BodyPartExamined",
    0x0020000D: "StudyInstanceUID", 0x0020000E: "SeriesInstanceUID", 0x00200011: "SeriesNumber",
}
_LAST_WANTED = max(_WANTED)
_VRS = {
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"OB", b"OD", b"OF", b"OL",
    b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM", b"UC", b"UI", b"UL", b"UN", b"UR", b"US",
    b"UT", b"UV",
}
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_IMPLICIT = "1.2.840.10008.1.2"
_DEFLATED = "1.2.840.10008.1.2.1.99"
_BIG_ENDIAN = "1.2.840.10008.1.2.2"


class _Walker:
    """A strict little-endian element walker: enough of PS3.5 7 to find top-level attributes and skip the rest."""

    def __init__(self, data: bytes, implicit: bool) -> None:
        self.data = data
        self.implicit = implicit

    def _header(self, pos: int) -> tuple[int, int, int, bool]:
        """(tag, value length, header size, is a sequence) of the element at ``pos``."""
        data = self.data
        if pos + 8 > len(data):
            raise UnreadableDataset("cannot parse the data set: it ends inside an element header")
        group, element, length = struct.unpack_from("<HHI", data, pos)
        tag = group << 16 | element
        if self.implicit or group == 0xFFFE:
            return tag, length, 8, length == _UNDEFINED
        vr = data[pos + 4 : pos + 6]
        if vr not in _VRS:
            raise UnreadableDataset(f"cannot parse the data set: invalid VR at ({group:04X},{element:04X})")
        if vr in _LONG_VRS:
            if pos + 12 > len(data):
                raise UnreadableDataset("cannot parse the data set: it ends inside an element header")
            return tag, struct.unpack_from("<I", data, pos + 8)[0], 12, vr == b"SQ"
        return tag, struct.unpack_from("<H", data, pos + 6)[0], 8, False

    def _skip_undefined(self, pos: int) -> int:
        """Skip the items of an undefined-length sequence (or encapsulated value) starting at ``pos``; return its end."""
        while True:
            tag, length, size, _ = self._header(pos)
            pos += size
            if tag == _SEQUENCE_END:
                return pos
            if tag != _ITEM:
                raise UnreadableDataset("cannot parse the data set: a sequence holds something other than items")
            if length == _UNDEFINED:
                pos = self.walk(pos, until=_ITEM_END)
            else:
                pos += length
                if pos > len(self.data):
                    raise UnreadableDataset("cannot parse the data set: an item is longer than the data set")

    def walk(self, pos: int, until: int | None = None, found: dict[int, bytes] | None = None) -> int:
        """Walk elements from ``pos`` in ascending tag order; collect wanted top-level values into ``found``."""
        previous = -1
        while pos < len(self.data):
            tag, length, size, _sequence = self._header(pos)
            if tag == until:
                return pos + size
            if until is None and tag > _LAST_WANTED:
                return pos
            if tag <= previous:
                raise UnreadableDataset(f"cannot parse the data set: element ({tag >> 16:04X},{tag & 0xFFFF:04X}) out of order")
            previous = tag
            start = pos + size
            if length == _UNDEFINED:
                pos = self._skip_undefined(start)
                continue
            pos = start + length
            if pos > len(self.data):
                raise UnreadableDataset(
                    f"cannot parse the data set: element ({tag >> 16:04X},{tag & 0xFFFF:04X}) runs past its end"
                )
            if found is not None and tag in _WANTED:
                found[tag] = self.data[start:pos]
        if until is not None:
            raise UnreadableDataset("cannot parse the data set: an item has no end")
        return pos


def _inflate(data: bytes) -> bytes:
    try:
        return zlib.decompress(data, -zlib.MAX_WBITS)
    except zlib.error as exc:
        raise UnreadableDataset("cannot parse the data set: the deflated stream is corrupt") from exc


def _decoded(raw: dict[int, bytes], keyword: str) -> str:
    tag = next(t for t, k in _WANTED.items() if k == keyword)
    value = raw.get(tag)
    if value is None:
        return ""
    return value.decode("latin-1").rstrip("\x00 ").strip()


def _uid_of(raw: dict[int, bytes], keyword: str) -> str:
    value = _decoded(raw, keyword)
    if not value:
        raise MissingAttribute(keyword)
    return validate_uid(value, keyword)


def read_instance_header(file_meta: bytes, data_set: bytes, transfer_syntax_uid: str | None = None) -> InstanceHeader:
    """Read the identifying attributes of ``data_set`` without touching its pixel data.

    Little-endian syntaxes (all but the retired big endian) are walked strictly by this module, so malformed input
    fails loudly; big endian goes through pydicom. Raises ``UnreadableDataset``, ``MissingAttribute`` or
    ``InvalidUid`` (a crafted or malformed UID).
    """
    if transfer_syntax_uid is None or transfer_syntax_uid == _BIG_ENDIAN:
        return _read_with_pydicom(file_meta, data_set)
    data = _inflate(data_set) if transfer_syntax_uid == _DEFLATED else data_set
    raw: dict[int, bytes] = {}
    try:
        _Walker(data, implicit=transfer_syntax_uid == _IMPLICIT).walk(0, found=raw)
    except UnreadableDataset:
        # Some real data sets are walkable only with pydicom's tolerance (e.g. an explicit-VR UN sequence holding
        # implicit-VR items); accept them when pydicom finds the UIDs, else report what the strict walk found.
        try:
            return _read_with_pydicom(file_meta, data_set)
        except (UnreadableDataset, MissingAttribute, InvalidUid):
            pass
        raise
    number_text = _decoded(raw, "SeriesNumber")
    try:
        number = int(number_text) if number_text else None
    except ValueError:
        number = None
    return InstanceHeader(
        study_uid=_uid_of(raw, "StudyInstanceUID"),
        series_uid=_uid_of(raw, "SeriesInstanceUID"),
        sop_instance_uid=_uid_of(raw, "SOPInstanceUID"),
        sop_class_uid=_decoded(raw, "SOPClassUID")[:64],
        modality=_decoded(raw, "Modality")[:16],
        study_description=_decoded(raw, "StudyDescription")[:64],
        study_date=_decoded(raw, "StudyDate")[:8],
        series_description=_decoded(raw, "SeriesDescription")[:64],
        series_number=number,
        body_part_examined=_decoded(raw, "BodyPartExamined")[:16],
    )


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


def _read_with_pydicom(file_meta: bytes, data_set: bytes) -> InstanceHeader:
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
