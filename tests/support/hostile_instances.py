"""Instances made to hurt: a deflated data set that inflates far beyond its size, and a data set of any size written
as a stream (never whole in memory). Both are valid DICOM, so only the node's limits stop them."""

from __future__ import annotations

import struct
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

from dicom_node.intake.header import encode_file_meta

__all__ = ["deflate_bomb", "streamed_part10", "identity", "SECONDARY_CAPTURE"]

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
DEFLATED = "1.2.840.10008.1.2.1.99"
EXPLICIT = "1.2.840.10008.1.2.1"


def _uid() -> str:
    return f"2.25.{uuid.uuid4().int}"


def _element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\0" if vr == b"UI" else b" "
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def identity() -> dict[str, str]:
    return {"study": _uid(), "series": _uid(), "sop": _uid()}


def _header(ids: dict[str, str]) -> bytes:
    return b"".join([
        _element(0x0008, 0x0016, b"UI", SECONDARY_CAPTURE.encode()),
        _element(0x0008, 0x0018, b"UI", ids["sop"].encode()),
        _element(0x0008, 0x0060, b"CS", b"OT"),
        _element(0x0020, 0x000D, b"UI", ids["study"].encode()),
        _element(0x0020, 0x000E, b"UI", ids["series"].encode()),
    ])


def _long_element_header(size: int) -> bytes:
    return struct.pack("<HH2s2xI", 0x7FE0, 0x0010, b"OB", size)  # Pixel Data, OB, defined length


def deflate_bomb(path: Path, inflated_bytes: int, ids: dict[str, str] | None = None) -> Path:
    """A Part 10 file in Deflated Explicit VR Little Endian whose data set inflates to about ``inflated_bytes``."""
    ids = ids or identity()
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros = b"\0" * (1 << 20)
    chunks = [compressor.compress(_header(ids) + _long_element_header(inflated_bytes))]
    for _ in range(inflated_bytes // len(zeros)):
        chunks.append(compressor.compress(zeros))
    chunks.append(compressor.flush())
    deflated = b"".join(chunks)
    if len(deflated) % 2:
        deflated += b"\0"
    path.write_bytes(encode_file_meta(SECONDARY_CAPTURE, ids["sop"], DEFLATED, "") + deflated)
    return path


def streamed_part10(size: int, ids: dict[str, str] | None = None, chunk: int = 1 << 20) -> Iterator[bytes]:
    """A Part 10 file (explicit VR little endian) of about ``size`` bytes, produced chunk by chunk."""
    ids = ids or identity()
    yield encode_file_meta(SECONDARY_CAPTURE, ids["sop"], EXPLICIT, "") + _header(ids) + _long_element_header(size)
    left = size
    block = bytes(range(256)) * (chunk // 256)
    while left:
        piece = block[:min(left, len(block))]
        left -= len(piece)
        yield piece
