"""``multipart/related`` (RFC 2387) as DICOMweb uses it: parts written from files (WADO-RS), parts read (STOW-RS)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MultipartError", "BodyPart", "FilePart", "new_boundary", "encode_parts", "parse_parts",
           "media_type_parameters"]

_CHUNK = 1 << 20
_TOKEN = re.compile(r'\s*([^=;\s]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)\s*')


class MultipartError(ValueError):
    """The body is not a well-formed multipart/related message (a 400)."""


@dataclass(frozen=True)
class FilePart:
    """One part to send: a file's bytes with its content type."""

    path: Path
    content_type: str


@dataclass(frozen=True)
class BodyPart:
    """One received part: its headers (lower-case names) and its content (a view into the request body)."""

    headers: dict[str, str]
    content: memoryview

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


def media_type_parameters(value: str) -> tuple[str, dict[str, str]]:
    """``'multipart/related; type="application/dicom"; boundary=x'`` -> ``('multipart/related', {...})``."""
    media_type, _, rest = value.partition(";")
    parameters: dict[str, str] = {}
    for match in _TOKEN.finditer(rest):
        name, raw = match.group(1).lower(), match.group(2).strip()
        if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
            raw = raw[1:-1].replace('\\"', '"')
        parameters[name] = raw
    return media_type.strip().lower(), parameters


def new_boundary() -> str:
    return f"m3edge-{uuid.uuid4().hex}"


def encode_parts(parts: Iterable[FilePart], boundary: str) -> Iterator[bytes]:
    """The message body, streamed: each file is read in 1 MiB chunks, never whole into memory."""
    for part in parts:
        yield f"--{boundary}\r\nContent-Type: {part.content_type}\r\n\r\n".encode("ascii")
        with part.path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                yield chunk
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode("ascii")


def _headers(raw: bytes) -> dict[str, str]:
    headers = {}
    for line in raw.split(b"\r\n"):
        if not line:
            continue
        name, colon, value = line.partition(b":")
        if not colon:
            raise MultipartError("a part header line has no ':'")
        headers[name.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
    return headers


def parse_parts(body: bytes | bytearray, boundary: str) -> list[BodyPart]:
    """Split ``body`` at ``boundary``; raise ``MultipartError`` when it is not a complete multipart message."""
    if not boundary or len(boundary) > 70:
        raise MultipartError("the Content-Type needs a boundary parameter of 1-70 characters")
    delimiter = b"--" + boundary.encode("latin-1")
    view = memoryview(body)
    start = body.find(delimiter)
    if start < 0 or (start > 0 and body[start - 2:start] != b"\r\n"):
        raise MultipartError("the body does not start with the boundary named in Content-Type")
    pos = start + len(delimiter)
    parts: list[BodyPart] = []
    while True:
        if body[pos:pos + 2] == b"--":
            break
        line_end = body.find(b"\r\n", pos)
        if line_end < 0:
            raise MultipartError("the body ends inside a boundary line")
        pos = line_end + 2
        end = body.find(b"\r\n" + delimiter, pos)
        if end < 0:
            raise MultipartError("the body has no closing boundary: it was cut short")
        if body[pos:pos + 2] == b"\r\n":
            headers, content_start = {}, pos + 2
        else:
            head_end = body.find(b"\r\n\r\n", pos, end)
            if head_end < 0:
                raise MultipartError("a part has no blank line between its headers and its content")
            headers, content_start = _headers(body[pos:head_end]), head_end + 4
        parts.append(BodyPart(headers, view[content_start:end]))
        pos = end + 2 + len(delimiter)
    return parts
