"""Deflated data sets (Deflated Explicit VR Little Endian) inflated in bounded chunks, never whole.

A few kilobytes of deflate can stand for gigabytes: a 1.5 MB instance inflating to 1.5 GiB once took a receiving
process to 1.68 GB. Here the inflated size is counted chunk by chunk with ``zlib.decompressobj(max_length=...)``, so
memory stays at one chunk whatever the stream says, and a data set inflating beyond ``max_inflated_bytes``
(``DICOM_MAX_INFLATED_BYTES``) is refused. The header region is the first ``HEADER_REGION_BYTES`` inflated bytes.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

from dicom_node.intake.header import UnreadableDataset
from dicom_node.intake.limits import InstanceTooLarge

__all__ = ["inflated_prefix", "check_inflated_size", "INFLATE_CHUNK"]

INFLATE_CHUNK = 1 << 20


def _inflater():
    return zlib.decompressobj(-zlib.MAX_WBITS)


def _corrupt(exc: zlib.error) -> UnreadableDataset:
    return UnreadableDataset(f"cannot parse the data set: the deflated stream is corrupt ({exc})")


def inflated_prefix(deflated: Iterable[bytes | memoryview], size: int) -> bytes:
    """The first ``size`` inflated bytes (fewer if the stream is shorter)."""
    inflater = _inflater()
    out = bytearray()
    try:
        for chunk in deflated:
            data = chunk
            while data and len(out) < size:
                out += inflater.decompress(data, size - len(out))
                data = inflater.unconsumed_tail
            if len(out) >= size or inflater.eof:
                break
    except zlib.error as exc:
        raise _corrupt(exc) from exc
    return bytes(out)


def check_inflated_size(deflated: Iterable[bytes | memoryview], max_inflated_bytes: int) -> int:
    """Inflate the whole stream in chunks, keeping none of it; return the inflated size.

    Raises ``InstanceTooLarge`` beyond ``max_inflated_bytes`` and ``UnreadableDataset`` for a corrupt or cut stream.
    """
    inflater = _inflater()
    total = 0
    try:
        for chunk in deflated:
            data = chunk
            while data:
                total += len(inflater.decompress(data, INFLATE_CHUNK))
                if total > max_inflated_bytes:
                    raise InstanceTooLarge(f"inflates beyond DICOM_MAX_INFLATED_BYTES={max_inflated_bytes}")
                data = inflater.unconsumed_tail
            if inflater.eof:
                break
    except zlib.error as exc:
        raise _corrupt(exc) from exc
    if not inflater.eof:
        raise UnreadableDataset("cannot parse the data set: the deflated stream ends before its end marker")
    return total
