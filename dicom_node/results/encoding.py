"""Explicit VR Little Endian encoding of a dataset we built, in one pass, with the bytes pydicom writes.

pydicom's ``write_dataset`` spends most of its time per element on what does not change within a result object: it
makes a buffer per element, converts the character set names again, asks the file object for its endianness, and
dispatches through its writer table; a SEG holds several thousand small elements (each frame's functional groups), an
SR's content tree a few thousand more, so writing them cost more than building them. ``encode_dataset`` writes the
common cases directly (sequences and items; UI, CS, DA, TM and the other ASCII string VRs; DS and IS; binary numbers;
ASCII values of the text VRs under a single-byte or UTF-8 character set) and hands every other element, unchanged, to
pydicom's own ``write_data_element``: person names, text that is not ASCII or under ISO 2022 code extensions, bulk
data, values over the 16-bit length limit, undefined lengths other than a sequence's, anything unusual. The output is
byte for byte what pydicom writes for a dataset built in memory, and errors are raised as pydicom raises them; the
tests compare the two on every kind of object we write, on a dataset that holds every VR and each edge named here,
and on generated datasets.

One difference, on purpose: elements still undecoded from a source file (highdicom copies a source's sequences, such
as Procedure Code, as read) are decoded and encoded again in the result's character set, as every other element.
pydicom writes such elements' bytes as read when the source was Explicit VR Little Endian too, which puts, say, the
ISO 8859-1 bytes of a source item inside a UTF-8 result; here they become UTF-8 (and any extra padding goes).
"""

from __future__ import annotations

import struct
import traceback
from struct import pack

from pydicom import filewriter
from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.multival import MultiValue
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

__all__ = ["encode_dataset"]

_ITEM = b"\xfe\xff\x00\xe0"
_ITEM_DELIMITER = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_UNDEFINED_LENGTH = 0xFFFFFFFF

_ASCII_STRING_VRS = frozenset({"AE", "AS", "CS", "UR", "UI", "DA", "DT", "TM"})  # pydicom's write_string
_NUMBER_STRING_VRS = frozenset({"DS", "IS"})
_BINARY_FORMATS = {"US": "H", "UL": "L", "SS": "h", "SL": "l", "FD": "d", "FL": "f", "SV": "q", "UV": "Q"}
_TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UC", "UT"})  # pydicom's write_text, with the dataset's charset
# Character sets under which an ASCII value encodes as itself with no escape sequence (pydicom's Python names).
_ASCII_TRANSPARENT = frozenset(convert_encodings(["ISO_IR 100"]) + convert_encodings(["ISO_IR 192"])
                               + convert_encodings([""]) + ["ascii", "utf_8", "latin_1"])
_OWN_VRS = frozenset({"SQ", *_ASCII_STRING_VRS, *_NUMBER_STRING_VRS, *_BINARY_FORMATS, *_TEXT_VRS})  # written here
_MULTI = (MultiValue, list, tuple)
_LUT_DESCRIPTOR_TAGS = filewriter._LUT_DESCRIPTOR_TAGS


class _Encodings:
    """pydicom's ``convert_encodings`` of each Specific Character Set value met, converted once."""

    def __init__(self) -> None:
        self._converted: dict[object, list[str]] = {}

    def __call__(self, value) -> list[str]:
        key = tuple(value) if isinstance(value, _MULTI) else value
        converted = self._converted.get(key)
        if converted is None:
            converted = self._converted[key] = convert_encodings(value or [default_encoding])
        return converted


def _header(tag: int, vr: str, length: int) -> bytes:
    if vr in EXPLICIT_VR_LENGTH_32:
        return pack("<HH2s2xL", tag >> 16, tag & 0xFFFF, vr.encode(), length)
    return pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), length)


def _joined(value) -> str | None:
    """A str value, or the backslash-joined str values of a multi-value; None for anything else."""
    if isinstance(value, str):
        return value
    if isinstance(value, _MULTI) and all(isinstance(v, str) for v in value):
        return "\\".join(value)
    return None


def _number_string(value) -> str | None:
    if isinstance(value, _MULTI):
        parts = [_number_string(v) for v in value]
        return None if any(p is None for p in parts) else "\\".join(parts)
    if isinstance(value, (str, int, float)):
        return value.original_string if hasattr(value, "original_string") else str(value)
    return None


def _value(element: DataElement, encodings: list[str], charsets: _Encodings) -> bytes | None:
    """The encoded value of ``element`` (padded to even length), or None where pydicom must write it."""
    vr, value = element.VR, element._value
    if vr == "SQ":
        return b"".join(_item(item, encodings, charsets) for item in value)
    if vr in _ASCII_STRING_VRS:
        text = _joined(value)
        if text is None:
            return None  # dates and times as Python objects: pydicom formats them
        if len(text) % 2:
            text += "\0" if vr == "UI" else " "
        return text.encode(default_encoding)
    if vr in _NUMBER_STRING_VRS:
        text = _number_string(value)
        if text is None:
            return None
        if len(text) % 2:
            text += " "
        return text.encode(default_encoding)
    fmt = _BINARY_FORMATS.get(vr)
    if fmt is not None:
        try:
            if isinstance(value, int) and not isinstance(value, bool):
                return pack("<" + fmt, value)
            if isinstance(value, float) and vr in ("FD", "FL"):
                return pack("<" + fmt, value)
            if isinstance(value, _MULTI) and element.tag not in _LUT_DESCRIPTOR_TAGS:
                return pack(f"<{len(value)}{fmt}", *value)
        except (struct.error, OverflowError):
            pass  # pydicom raises its own error for it
        return None
    if vr in _TEXT_VRS and encodings[0] in _ASCII_TRANSPARENT:
        text = _joined(value)
        if text is None or not text.isascii():
            return None
        data = text.encode("ascii")
        return data + b" " if len(data) % 2 else data
    return None


def _is_empty(value) -> bool:
    if value is None:
        return True
    if isinstance(value, (str, bytes, *_MULTI)):
        return len(value) == 0
    return False


def _element(element: DataElement, encodings: list[str], charsets: _Encodings) -> bytes | None:
    vr = element.VR
    if element.is_undefined_length:
        if vr != "SQ":
            return None
        body = _value(element, encodings, charsets)
        return _header(element.tag, vr, _UNDEFINED_LENGTH) + body + _SEQUENCE_DELIMITER
    value = element._value
    if _is_empty(value):
        return _header(element.tag, vr, 0) if vr in _OWN_VRS else None
    if not isinstance(value, (str, int, float, *_MULTI)) and vr != "SQ":
        return None
    body = _value(element, encodings, charsets)
    if body is None or (len(body) > 0xFFFF and vr not in EXPLICIT_VR_LENGTH_32):
        return None
    return _header(element.tag, vr, len(body)) + body


def _by_pydicom(element, encodings) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    filewriter.write_data_element(buffer, element, encodings)
    return buffer.getvalue()


def _body(dataset: Dataset, parent_encoding, charsets: _Encodings) -> bytes:
    dataset_encoding = dataset.get("SpecificCharacterSet", parent_encoding)
    encodings = charsets(dataset_encoding)
    parts = []
    tag = None
    try:
        for tag in sorted(dataset._dict):
            if tag & 0xFFFF == 0 and tag >> 16 > 6:
                continue  # retired group length, as pydicom leaves out
            element = dataset[tag]  # decoded: see the module's note on elements copied from a file
            encoded = None if element.VR is None or len(element.VR) != 2 else _element(element, encodings, charsets)
            parts.append(encoded if encoded is not None else _by_pydicom(element, dataset_encoding))
    except Exception as exc:  # as pydicom's tag_in_exception, which write_dataset wraps each element in
        raise type(exc)(f"With tag {tag} got exception: {exc}\n{traceback.format_exc()}") from exc
    return b"".join(parts)


def _item(dataset: Dataset, parent_encoding, charsets: _Encodings) -> bytes:
    body = _body(dataset, parent_encoding, charsets)
    if getattr(dataset, "is_undefined_length_sequence_item", False):
        return _ITEM + pack("<L", _UNDEFINED_LENGTH) + body + _ITEM_DELIMITER
    return _ITEM + pack("<L", len(body)) + body


def encode_dataset(dataset: Dataset) -> bytes:
    """``dataset`` (without its file meta information) as Explicit VR Little Endian, ambiguous VRs already resolved
    (``pydicom.filewriter.correct_ambiguous_vr``)."""
    return _body(dataset, default_encoding, _Encodings())
