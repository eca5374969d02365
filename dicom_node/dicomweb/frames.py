"""WADO-RS frames and bulk data (PS3.18 8.3.5, 8.3.6): the pixel data of chosen frames of a stored instance, and the
value of one top-level bulk data attribute.

Frames are sent as stored, never decoded: a compressed (encapsulated) frame is its fragments joined, in its own
transfer syntax; a native frame is its bytes cut from the pixel data, in Explicit VR Little Endian (native pixel
data read from an implicit, explicit or deflated little-endian file is the same bytes; big endian is swapped).
Single-bit frames (a BINARY SEG stored uncompressed) are packed across frame boundaries in the file; each one is
re-packed to start on a byte. Everything is read through pydicom's public ``dcmread`` and ``generate_frames``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.encaps import generate_frames
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian

__all__ = ["FrameSet", "FrameError", "read_frames", "read_bulk_data", "parse_frame_list", "MAX_FRAMES_PER_REQUEST",
           "media_type_of"]

MAX_FRAMES_PER_REQUEST = 4096

# PS3.18 Table 8.7.3-2 (single-frame image media types of the compressed transfer syntaxes)
_MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg", "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg", "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls", "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2", "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx", "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc", "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc", "1.2.840.10008.1.2.5": "image/x-dicom-rle",
}


class FrameError(ValueError):
    """The frames asked for cannot be served: ``status`` is the HTTP status that says why (400, 404)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class FrameSet:
    """Frames (or one bulk value) ready to send: their transfer syntax and each one's bytes."""

    transfer_syntax_uid: str
    parts: list[bytes]

    @property
    def compressed(self) -> bool:
        return self.transfer_syntax_uid in _MEDIA_TYPES or UID(self.transfer_syntax_uid).is_compressed


def media_type_of(transfer_syntax_uid: str) -> str:
    """The image media type of a compressed transfer syntax's frames (``application/octet-stream`` otherwise)."""
    return _MEDIA_TYPES.get(transfer_syntax_uid, "application/octet-stream")


def parse_frame_list(text: str) -> list[int]:
    """``"1,2,5"`` -> ``[1, 2, 5]`` (PS3.18 uniquely ordered frame numbers, from 1); a 400 for anything else."""
    items = text.split(",")
    if len(items) > MAX_FRAMES_PER_REQUEST:
        raise FrameError(400, f"ask for at most {MAX_FRAMES_PER_REQUEST} frames per request")
    numbers = []
    for item in items:
        if not item.strip().isdigit() or len(item.strip()) > 9 or int(item) < 1:
            raise FrameError(400, f"frame numbers are integers from 1, comma-separated (got {item[:20]!r})")
        numbers.append(int(item))
    return numbers


def _native_frames(dataset, numbers: Sequence[int], count: int, big_endian: bool) -> list[bytes]:
    rows, columns = int(dataset.Rows), int(dataset.Columns)
    samples, bits = int(dataset.get("SamplesPerPixel", 1) or 1), int(dataset.BitsAllocated)
    pixel_data = dataset.PixelData
    frame_bits = rows * columns * samples * bits
    if len(pixel_data) * 8 < frame_bits * count:
        raise FrameError(404, "the stored pixel data is shorter than its frames")
    if bits == 1:
        unpacked = np.unpackbits(np.frombuffer(pixel_data, dtype=np.uint8), bitorder="little")
        return [np.packbits(unpacked[(n - 1) * frame_bits:n * frame_bits], bitorder="little").tobytes()
                for n in numbers]
    size = frame_bits // 8
    frames = [bytes(pixel_data[(n - 1) * size:n * size]) for n in numbers]
    if big_endian and bits > 8:
        dtype = {16: ">u2", 32: ">u4", 64: ">u8"}[bits]
        frames = [np.frombuffer(f, dtype=dtype).astype(dtype.replace(">", "<")).tobytes() for f in frames]
    return frames


def read_frames(path: Path, numbers: Sequence[int]) -> FrameSet:
    """The frames ``numbers`` (from 1) of the stored file ``path``; ``FrameError`` 404 when it has no such frame
    or no pixel data."""
    dataset = dcmread(path)
    if "PixelData" not in dataset:
        raise FrameError(404, "this instance has no pixel data (frames exist only for images)")
    count = int(dataset.get("NumberOfFrames", 1) or 1)
    beyond = [n for n in numbers if n > count]
    if beyond:
        raise FrameError(404, f"the instance has {count} frame(s); there is no frame {beyond[0]}")
    syntax = UID(dataset.file_meta.TransferSyntaxUID)
    if syntax.is_compressed:
        every = list(generate_frames(dataset.PixelData, number_of_frames=count))
        return FrameSet(str(syntax), [every[n - 1] for n in numbers])
    return FrameSet(str(ExplicitVRLittleEndian), _native_frames(dataset, numbers, count, syntax == ExplicitVRBigEndian))


def read_bulk_data(path: Path, tag: int) -> FrameSet:
    """The value of the top-level attribute ``tag``: for encapsulated pixel data, each frame as a part (as its
    frames URL would send them); otherwise the value as one part. ``FrameError`` 404 when it is absent."""
    dataset = dcmread(path)
    if tag not in dataset or dataset[tag].VR == "SQ":
        raise FrameError(404, f"the instance has no bulk data attribute ({tag:08X})")
    syntax = UID(dataset.file_meta.TransferSyntaxUID)
    if tag == 0x7FE00010:
        count = int(dataset.get("NumberOfFrames", 1) or 1)
        if syntax.is_compressed:
            return FrameSet(str(syntax), list(generate_frames(dataset.PixelData, number_of_frames=count)))
        if syntax != ExplicitVRBigEndian:
            return FrameSet(str(ExplicitVRLittleEndian), [bytes(dataset.PixelData)])
        return FrameSet(str(ExplicitVRLittleEndian),
                        _native_frames(dataset, range(1, count + 1), count, big_endian=True))
    value = dataset[tag].value
    return FrameSet(str(ExplicitVRLittleEndian), [bytes(value) if value is not None else b""])
