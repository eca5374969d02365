"""``multipart/related`` (RFC 2387) as DICOMweb uses it: parts written from files (WADO-RS), parts read as the body
streams in (STOW-RS: :class:`MultipartStream`)."""

from __future__ import annotations

import enum
import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MultipartError", "BodyPart", "FilePart", "new_boundary", "encode_parts", "encode_bytes_parts",
           "parse_parts", "media_type_parameters", "MultipartStream", "PartStart", "PartData", "PartEnd", "PartEvent"]

_CHUNK = 1 << 20
MAX_HEADER_BYTES = 16 * 1024  # a part's headers, or a boundary line with its padding
MAX_PREAMBLE_BYTES = 64 * 1024
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


def encode_bytes_parts(parts: Iterable[bytes], content_type: str, boundary: str) -> bytes:
    """A whole message of in-memory parts (frames, bulk data), each with ``content_type``."""
    head = f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode("ascii")
    return b"".join(head + bytes(part) + b"\r\n" for part in parts) + f"--{boundary}--\r\n".encode("ascii")


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


@dataclass(frozen=True)
class PartStart:
    """A part begins; its headers (lower-case names)."""

    headers: dict[str, str]

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


@dataclass(frozen=True)
class PartData:
    """The next bytes of the current part's content."""

    data: bytes


@dataclass(frozen=True)
class PartEnd:
    """The current part is complete."""


PartEvent = PartStart | PartData | PartEnd


class _State(enum.Enum):
    PREAMBLE = "preamble"
    BOUNDARY_LINE = "boundary line"
    HEADERS = "headers"
    CONTENT = "content"
    DONE = "done"


class MultipartStream:
    """Splits a ``multipart/related`` body into parts as it arrives (``feed``), holding at most a part's headers and
    one boundary's length of content at a time: a part's content is passed on as it streams, never collected."""

    def __init__(self, boundary: str) -> None:
        if not boundary or len(boundary) > 70:
            raise MultipartError("the Content-Type needs a boundary parameter of 1-70 characters")
        self._first = b"--" + boundary.encode("latin-1")
        self._delimiter = b"\r\n" + self._first
        self._buffer = bytearray()
        self._state = _State.PREAMBLE

    @property
    def done(self) -> bool:
        return self._state is _State.DONE

    def feed(self, chunk: bytes) -> Iterator[PartEvent]:
        """The events ``chunk`` completes (raises ``MultipartError`` for a malformed body)."""
        if self._state is _State.DONE:
            return  # an epilogue after the closing boundary is ignored (RFC 2046)
        self._buffer += chunk
        while self._state is not _State.DONE:
            events = getattr(self, f"_{self._state.name.lower()}")()
            if events is None:  # needs more of the body
                return
            yield from events

    def finish(self) -> None:
        """The body has ended: raise ``MultipartError`` unless the closing boundary was seen."""
        if self._state is _State.PREAMBLE:
            raise MultipartError("the body does not start with the boundary named in Content-Type")
        if self._state is not _State.DONE:
            raise MultipartError("the body has no closing boundary: it was cut short")

    def _preamble(self):
        start = self._buffer.find(self._first)
        if start < 0:
            if len(self._buffer) > MAX_PREAMBLE_BYTES:
                raise MultipartError("the body does not start with the boundary named in Content-Type")
            return None
        if start > 0 and self._buffer[start - 2:start] != b"\r\n":
            raise MultipartError("the body does not start with the boundary named in Content-Type")
        del self._buffer[:start + len(self._first)]
        self._state = _State.BOUNDARY_LINE
        return []

    def _boundary_line(self):
        if len(self._buffer) < 2:
            return None
        if self._buffer[:2] == b"--":
            self._state = _State.DONE
            self._buffer.clear()
            return []
        end = self._buffer.find(b"\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEADER_BYTES:
                raise MultipartError("a boundary line is too long")
            return None
        del self._buffer[:end + 2]  # transport padding after the boundary is ignored
        self._state = _State.HEADERS
        return []

    def _headers(self):
        if self._buffer[:2] == b"\r\n":
            del self._buffer[:2]
            self._state = _State.CONTENT
            return [PartStart({})]
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEADER_BYTES:
                raise MultipartError(f"a part's headers are longer than {MAX_HEADER_BYTES} bytes")
            return None
        headers = _headers(bytes(self._buffer[:end]))
        del self._buffer[:end + 4]
        self._state = _State.CONTENT
        return [PartStart(headers)]

    def _content(self):
        end = self._buffer.find(self._delimiter)
        if end >= 0:
            data = bytes(self._buffer[:end])
            del self._buffer[:end + len(self._delimiter)]
            self._state = _State.BOUNDARY_LINE
            return [PartData(data), PartEnd()] if data else [PartEnd()]
        keep = len(self._delimiter) - 1  # a delimiter may be split between this chunk and the next
        if len(self._buffer) <= keep:
            return None
        data = bytes(self._buffer[:-keep])
        del self._buffer[:-keep]
        return [PartData(data)]


def parse_parts(body: bytes | bytearray, boundary: str) -> list[BodyPart]:
    """Split a whole ``body`` at ``boundary``; raise ``MultipartError`` when it is not a complete multipart message."""
    stream = MultipartStream(boundary)
    parts: list[BodyPart] = []
    content = bytearray()
    headers: dict[str, str] = {}
    for event in stream.feed(bytes(body)):
        if isinstance(event, PartStart):
            headers, content = event.headers, bytearray()
        elif isinstance(event, PartData):
            content += event.data
        else:
            parts.append(BodyPart(headers, memoryview(bytes(content))))
    stream.finish()
    return parts
