"""One instance's metadata as DICOM JSON (PS3.18 F.2), computed once when the instance is stored.

WADO-RS metadata of a study is then the stored documents joined, never a read of every file: a study holding a
1,950-frame SEG answered its metadata in 4.9 s when every header was parsed per request (see bench/wado_metadata.py
for the figures now). What is kept:

- every attribute of the data set, sequences included, as pydicom's public ``Dataset.to_json_dict`` writes it;
- binary values (OB, OD, OF, OL, OV, OW, UN) of the top-level data set longer than :data:`INLINE_LIMIT` bytes, and
  the pixel data whatever its size, as a ``BulkDataURI`` (their values are not read at all: the file is parsed with
  ``defer_size``); inside sequences such values are left out (an icon image, a private blob);
- the ``BulkDataURI`` is stored relative, ``{BULK_DATA_PREFIX}<SOP Instance UID>/bulkdata/<tag>``, and made absolute
  per request by :func:`with_bulk_data_base` (the host and scheme are the request's), a byte replacement.
"""

from __future__ import annotations

import json
import logging
import zlib
from io import BytesIO
from pathlib import Path

from pydicom import dcmread
from pydicom.datadict import dictionary_has_tag, dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

__all__ = ["instance_metadata", "stored_metadata", "unpack_metadata", "with_bulk_data_base", "BULK_DATA_PREFIX",
           "INLINE_LIMIT", "BULK_VRS"]

LOGGER = logging.getLogger(__name__)

BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})  # Float, Double Float and Pixel Data
INLINE_LIMIT = 1024  # binary values up to this many bytes are sent inline (InlineBinary)
BULK_DATA_PREFIX = "@m3edge-bulk@/"  # stands for "<base>/studies/<study>/series/<series>/instances/" until served
_PREFIX_BYTES = f'"BulkDataURI": "{BULK_DATA_PREFIX}'.encode()


def _raw_vr_and_length(dataset: Dataset, tag: int) -> tuple[str, int]:
    """An element's VR and value length, from its raw form when it has one: a deferred value is never read."""
    raw = dataset.get_item(tag)
    if isinstance(raw, RawDataElement):
        vr = raw.VR or (dictionary_VR(tag) if dictionary_has_tag(tag) else "UN")
        length = raw.length if raw.length != 0xFFFFFFFF else INLINE_LIMIT + 1  # encapsulated: undefined length
        return str(vr), int(length)
    value = raw.value
    try:
        length = len(value) if value is not None else 0
    except TypeError:
        length = 0
    return str(raw.VR), length


def _is_bulk(vr: str, length: int) -> bool:
    return (vr in BULK_VRS or " or " in vr) and length > INLINE_LIMIT


def _drop_nested_bulk(dataset: Dataset) -> None:
    for tag in list(dataset.keys()):
        vr, length = _raw_vr_and_length(dataset, tag)
        if vr == "SQ":
            for item in dataset[tag].value or []:
                _drop_nested_bulk(item)
        elif _is_bulk(vr, length):
            del dataset[tag]


def instance_metadata(source: Path | bytes) -> bytes:
    """The DICOM JSON of one stored file (path, or its bytes with File Meta), as UTF-8 bytes."""
    stream = BytesIO(bytes(source)) if isinstance(source, bytes | bytearray | memoryview) else source
    dataset = dcmread(stream, defer_size=INLINE_LIMIT)
    sop_uid = str(dataset.SOPInstanceUID)
    bulk: dict[str, str] = {}
    for tag in list(dataset.keys()):
        vr, length = _raw_vr_and_length(dataset, tag)
        if vr == "SQ":
            for item in dataset[tag].value or []:
                _drop_nested_bulk(item)
        elif _is_bulk(vr, length) or (int(tag) in PIXEL_TAGS and length):
            bulk[f"{int(tag):08X}"] = vr if vr in BULK_VRS else ("OW" if int(tag) == 0x7FE00010 else "OB")
            del dataset[tag]
    document = dataset.to_json_dict()
    for tag, vr in bulk.items():
        document[tag] = {"vr": vr, "BulkDataURI": f"{BULK_DATA_PREFIX}{sop_uid}/bulkdata/{tag}"}
    return json.dumps(dict(sorted(document.items())), ensure_ascii=False).encode()


def with_bulk_data_base(document: bytes, series_url: str) -> bytes:
    """``document`` (from :func:`instance_metadata`) with its BulkDataURIs under ``series_url`` (absolute)."""
    return document.replace(_PREFIX_BYTES, f'"BulkDataURI": "{series_url}/instances/'.encode())


def stored_metadata(path: Path) -> bytes | None:
    """What the catalogue keeps of a just-stored file: its :func:`instance_metadata`, zlib-compressed (a CT slice's
    4-5 KiB become about 1.5 KiB); ``None`` when it cannot be read (WADO-RS then reads the file itself). Never
    raises: the instance is stored whatever its metadata."""
    try:
        return zlib.compress(instance_metadata(path), 1)
    except Exception as exc:  # noqa: BLE001 - a header pydicom cannot turn into JSON must not fail the C-STORE
        LOGGER.warning("no DICOM JSON kept for %s (%s); WADO-RS metadata will read its file", path.name,
                       exc.__class__.__name__)
        return None


def unpack_metadata(kept: bytes) -> bytes:
    """The DICOM JSON (UTF-8) of what :func:`stored_metadata` kept."""
    return zlib.decompress(kept)
