"""The few attributes the node needs from a received data set, and the File Meta Information it writes before it.

Both ways in (C-STORE and STOW-RS) read a data set's identity here, from its *header region*: the data set's first
bytes (inflated first for the deflated syntax, see ``dicom_node.intake.deflate``), at most ``HEADER_REGION_BYTES``.

The little-endian syntaxes (all but the retired big endian) are walked by :class:`_Walker`, a strict element walker
that stops after the last wanted top-level tag and never decodes a value it does not need. It is kept, beside
pydicom's public ``read_dataset`` (which reads everything else here), for a measured reason: on the 512 x 512 CT slice
of ``bench.ingest`` the walker reads the identity in 50 us and pydicom's ``read_dataset`` (``stop_when``,
``defer_size``) in 377 us, with ``specific_tags`` 588 us; at 8 concurrent senders on two cores that difference is
about 5% of the node's CPU per instance. Whatever the walker cannot read (big endian, the tolerant cases real archives
need, such as an explicit-VR UN sequence holding implicit-VR items) goes to ``read_dataset`` on the same bounded
region. ``encode_file_meta`` writes the File Meta group by hand for the same kind of reason: 3 us against 386 us
for pydicom's ``write_file_meta_info`` (``tests/unit/dicom_node/test_intake_header.py`` checks that pydicom reads it
back). The one VR table of the node (``VRS``) is here; the STOW-RS reader of a part's File Meta walks with it too.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from io import BytesIO

from pydicom.charset import convert_encodings, decode_bytes
from pydicom.filereader import read_dataset
from pydicom.uid import UID

from dicom_node.uids import InvalidUid, validate_uid

__all__ = [
    "InstanceHeader", "UnreadableDataset", "MissingAttribute", "read_instance_header", "read_file_meta",
    "encode_file_meta", "FileMeta", "HEADER_REGION_BYTES", "IMPLEMENTATION_CLASS_UID", "IMPLEMENTATION_VERSION_NAME",
    "InvalidUid", "VRS", "LONG_VRS",
]

# How far into a data set its identifying attributes may be: they sit in groups 0008-0020, near the start.
HEADER_REGION_BYTES = 16 * 1024 * 1024
MAX_FILE_META_BYTES = 64 * 1024  # a File Meta group is a few hundred bytes

_PREAMBLE = b"\x00" * 128 + b"DICM"
IMPLEMENTATION_CLASS_UID = UID("2.25.165469126619185460132657717278804599253")  # m3edge: a UUID-derived UID (PS3.5 B.2)
IMPLEMENTATION_VERSION_NAME = "M3EDGE_010"

VRS = frozenset({
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"OB", b"OD", b"OF", b"OL",
    b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM", b"UC", b"UI", b"UL", b"UN", b"UR", b"US",
    b"UT", b"UV",
})
# VRs whose explicit-VR header has two reserved bytes and a 32-bit length (PS3.5 7.1.2).
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})

_WANTED = {
    0x00080005: "SpecificCharacterSet", 0x00080050: "AccessionNumber", 0x00100010: "PatientName",
    0x00100020: "PatientID",
    0x00080016: "SOPClassUID", 0x00080018: "SOPInstanceUID", 0x00080020: "StudyDate", 0x00080060: "Modality",
    0x00081030: "StudyDescription", 0x0008103E: "SeriesDescription", 0x00180015: "BodyPartExamined",
    0x0020000D: "StudyInstanceUID", 0x0020000E: "SeriesInstanceUID", 0x00200011: "SeriesNumber",
}
_LAST_WANTED = max(_WANTED)
_TAG_OF = {keyword: tag for tag, keyword in _WANTED.items()}
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_IMPLICIT = "1.2.840.10008.1.2"
_BIG_ENDIAN = "1.2.840.10008.1.2.2"
_LENGTHS = struct.Struct("<HHI")


class UnreadableDataset(ValueError):
    """The data set cannot be parsed in its transfer syntax."""


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
    # Patient context: handed to the recorder (the database), never logged.
    patient_name: str = field(default="", repr=False)
    patient_id: str = field(default="", repr=False)
    accession_number: str = field(default="", repr=False)


@dataclass(frozen=True)
class FileMeta:
    """What a Part 10 file's File Meta group says (STOW-RS parts), and where its data set starts."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    data_set_offset: int


# -- writing the File Meta ------------------------------------------------------------------------------------------


def _meta_element(element: int, vr: bytes, value: bytes, pad: bytes) -> bytes:
    if len(value) % 2:
        value += pad
    if vr in LONG_VRS:
        return struct.pack("<HH2s2xI", 0x0002, element, vr, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def encode_file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, calling_ae: str) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information group (PS3.10 7.1) for a received data set."""

    def ascii_(text: str) -> bytes:
        return text.encode("ascii", "replace")

    body = b"".join([
        _meta_element(0x0001, b"OB", b"\x00\x01", b"\x00"),
        _meta_element(0x0002, b"UI", ascii_(sop_class_uid), b"\x00"),
        _meta_element(0x0003, b"UI", ascii_(sop_instance_uid), b"\x00"),
        _meta_element(0x0010, b"UI", ascii_(transfer_syntax_uid), b"\x00"),
        _meta_element(0x0012, b"UI", ascii_(IMPLEMENTATION_CLASS_UID), b"\x00"),
        _meta_element(0x0013, b"SH", ascii_(IMPLEMENTATION_VERSION_NAME), b" "),
        _meta_element(0x0016, b"AE", ascii_(calling_ae), b" ") if calling_ae else b"",
    ])
    return _PREAMBLE + _meta_element(0x0000, b"UL", struct.pack("<I", len(body)), b"") + body


# -- reading ---------------------------------------------------------------------------------------------------------


class _Walker:
    """A strict little-endian element walker: enough of PS3.5 7 to find top-level attributes and skip the rest."""

    def __init__(self, data: bytes | memoryview, implicit: bool) -> None:
        self.data = data
        self.implicit = implicit

    def _header(self, pos: int) -> tuple[int, int, int, bytes | None]:
        """(tag, value length, header size, VR or None) of the element at ``pos``."""
        data = self.data
        if pos + 8 > len(data):
            raise UnreadableDataset("cannot parse the data set: it ends inside an element header")
        group, element, length = _LENGTHS.unpack_from(data, pos)
        tag = group << 16 | element
        if self.implicit or group == 0xFFFE:
            return tag, length, 8, None
        vr = bytes(data[pos + 4:pos + 6])
        if vr not in VRS:
            raise UnreadableDataset(f"cannot parse the data set: invalid VR at ({group:04X},{element:04X})")
        if vr in LONG_VRS:
            if pos + 12 > len(data):
                raise UnreadableDataset("cannot parse the data set: it ends inside an element header")
            return tag, struct.unpack_from("<I", data, pos + 8)[0], 12, vr
        return tag, struct.unpack_from("<H", data, pos + 6)[0], 8, vr

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

    def walk(self, pos: int, until: int | None = None, found: dict[int, bytes] | None = None,
             last: int = _LAST_WANTED, wanted=_WANTED) -> int:
        """Walk elements from ``pos`` in ascending tag order; collect ``wanted`` top-level values into ``found``."""
        previous = -1
        data = self.data
        while pos < len(data):
            tag, length, size, _vr = self._header(pos)
            if tag == until:
                return pos + size
            if until is None and tag > last:
                return pos
            if tag <= previous:
                raise UnreadableDataset(
                    f"cannot parse the data set: element ({tag >> 16:04X},{tag & 0xFFFF:04X}) out of order")
            previous = tag
            start = pos + size
            if length == _UNDEFINED:
                pos = self._skip_undefined(start)
                continue
            pos = start + length
            if pos > len(data):
                raise UnreadableDataset(
                    f"cannot parse the data set: element ({tag >> 16:04X},{tag & 0xFFFF:04X}) runs past its end")
            if found is not None and tag in wanted:
                found[tag] = bytes(data[start:pos])
        if until is not None:
            raise UnreadableDataset("cannot parse the data set: an item has no end")
        return pos


def _text(raw: bytes | None) -> str:
    return "" if raw is None else raw.decode("latin-1").rstrip("\x00 ").strip()


def _person_name(raw: bytes | None, character_set: str) -> str:
    """A PN value decoded in the data set's Specific Character Set (pydicom's public decoder; ISO 2022 escapes too)."""
    if not raw:
        return ""
    terms = [t.strip() for t in character_set.split("\\")] if character_set else [""]
    try:
        text = decode_bytes(raw, convert_encodings(terms), {0x5E, 0x3D})
    except Exception:  # noqa: BLE001 - an unknown or broken character set: keep what latin-1 reads, never fail intake
        text = raw.decode("latin-1")
    return text.rstrip("\x00 ").strip()


def _uid_of(values: dict[str, str], keyword: str) -> str:
    value = values.get(keyword, "")
    if not value:
        raise MissingAttribute(keyword)
    return validate_uid(value, keyword)


def _series_number(text: str) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        return None


def _header_from(values: dict[str, str]) -> InstanceHeader:
    return InstanceHeader(
        study_uid=_uid_of(values, "StudyInstanceUID"),
        series_uid=_uid_of(values, "SeriesInstanceUID"),
        sop_instance_uid=_uid_of(values, "SOPInstanceUID"),
        sop_class_uid=values.get("SOPClassUID", "")[:64],
        modality=values.get("Modality", "")[:16],
        study_description=values.get("StudyDescription", "")[:64],
        study_date=values.get("StudyDate", "")[:8],
        series_description=values.get("SeriesDescription", "")[:64],
        series_number=_series_number(values.get("SeriesNumber", "")),
        body_part_examined=values.get("BodyPartExamined", "")[:16],
        patient_name=values.get("PatientName", "")[:200],
        patient_id=values.get("PatientID", "")[:64],
        accession_number=values.get("AccessionNumber", "")[:16],
    )


def read_instance_header(region: bytes | memoryview, transfer_syntax_uid: str) -> InstanceHeader:
    """Read the identifying attributes from a data set's header region (its first bytes, inflated if deflated).

    Raises ``UnreadableDataset``, ``MissingAttribute`` or ``InvalidUid`` (a crafted or malformed UID).
    """
    if transfer_syntax_uid == _BIG_ENDIAN:
        return _header_from(_read_with_pydicom(region, implicit=False, little_endian=False))
    implicit = transfer_syntax_uid == _IMPLICIT
    raw: dict[int, bytes] = {}
    try:
        _Walker(region, implicit=implicit).walk(0, found=raw)
    except UnreadableDataset:
        # Some real data sets are walkable only with pydicom's tolerance (e.g. an explicit-VR UN sequence holding
        # implicit-VR items): accept them when pydicom finds the UIDs, else report what the strict walk found.
        try:
            return _header_from(_read_with_pydicom(region, implicit=implicit, little_endian=True))
        except (UnreadableDataset, MissingAttribute, InvalidUid):
            pass
        raise
    values = {keyword: _text(raw.get(tag)) for tag, keyword in _WANTED.items()}
    values["PatientName"] = _person_name(raw.get(0x00100010), values["SpecificCharacterSet"])
    return _header_from(values)


def _read_with_pydicom(region: bytes | memoryview, *, implicit: bool, little_endian: bool) -> dict[str, str]:
    """The wanted attributes as text, read by pydicom's public ``read_dataset`` (values over 1 KiB not read)."""
    try:
        dataset = read_dataset(BytesIO(region), implicit, little_endian, defer_size=1024,
                               stop_when=lambda tag, _vr, _length: tag > _LAST_WANTED)
        values = {keyword: dataset.get(keyword) for keyword in _WANTED.values()}
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for corrupt input; all mean "cannot parse"
        raise UnreadableDataset(f"cannot parse the data set: {exc.__class__.__name__}") from exc
    return {keyword: "" if value is None else str(value).rstrip("\x00 ").strip() for keyword, value in values.items()}


_META_WANTED = {0x00020002: "sop_class", 0x00020003: "sop_instance", 0x00020010: "transfer_syntax"}


def read_file_meta(start: bytes | memoryview) -> FileMeta:
    """The File Meta group at the start of a Part 10 file (``start``: its first bytes, at least up to the data set).

    The preamble and ``DICM`` may be missing (pydicom writes none for a data set made in memory); the File Meta group
    may not: without it the transfer syntax is unknown. Raises ``UnreadableDataset``.
    """
    view = memoryview(start)
    if len(view) >= 132 and bytes(view[128:132]) == b"DICM":
        offset = 132
    elif bytes(view[:2]) == b"\x02\x00":
        offset = 0
    else:
        raise UnreadableDataset("not a DICOM file: no File Meta group (with or without the 128-byte preamble)")
    found: dict[int, bytes] = {}
    walker = _Walker(view, implicit=False)
    end = offset
    while end < len(view) and bytes(view[end:end + 2]) == b"\x02\x00":
        tag, length, size, _ = walker._header(end)
        if length == _UNDEFINED or end + size + length > len(view):
            raise UnreadableDataset("the File Meta group runs past the end of what was received")
        if tag in _META_WANTED:
            found[tag] = bytes(view[end + size:end + size + length])
        end += size + length
        if end - offset > MAX_FILE_META_BYTES:
            raise UnreadableDataset(f"the File Meta group is longer than {MAX_FILE_META_BYTES} bytes")
    values = {name: _text(found.get(tag)) for tag, name in _META_WANTED.items()}
    return FileMeta(values["sop_class"], values["sop_instance"], values["transfer_syntax"], end)
