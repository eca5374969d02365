"""Hostile HTTP requests on loopback (the memory of the process that receives them: ``tests.support.process_memory``).

Each attack is bounded: it sends at most ``total_bytes`` and gives up after ``timeout`` seconds. It stops sending as
soon as the server answers (or closes the connection), so against a server that refuses early it costs a few
milliseconds, and against one that buffers everything it costs the whole body (which is what the tests measure).
"""

from __future__ import annotations

import json
import select
import socket
import time
from dataclasses import dataclass

__all__ = ["AttackResult", "send_body", "json_prefix", "MIB"]

MIB = 1 << 20
_CHUNK = b"a" * MIB


@dataclass(frozen=True)
class AttackResult:
    status: int | None  # the HTTP status the server answered, None when it closed without an answer
    sent_bytes: int  # body bytes the server accepted before it answered or closed
    seconds: float
    head: str  # the status line and headers of the answer

    def header(self, name: str) -> str:
        for line in self.head.split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return ""


def _status_of(head: bytes) -> int | None:
    parts = head.split(b" ", 2)
    return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None


def send_body(port: int, path: str, *, total_bytes: int, chunked: bool, headers: dict[str, str] | None = None,
              declared_length: int | None = None, method: str = "POST", prefix: bytes = b"",
              timeout: float = 60.0) -> AttackResult:
    """Send ``method path`` to 127.0.0.1:``port`` with a body of ``total_bytes`` (``prefix`` then ``a``s).

    ``chunked``: Transfer-Encoding: chunked, 1 MiB chunks; otherwise Content-Length ``declared_length`` (default:
    ``total_bytes``). Returns as soon as the server answers or closes, or after ``timeout`` seconds."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
    lines += [f"{key}: {value}" for key, value in (headers or {}).items()]
    lines.append("Transfer-Encoding: chunked" if chunked else
                 f"Content-Length: {declared_length if declared_length is not None else total_bytes}")
    started = time.monotonic()
    deadline = started + timeout
    sent = 0
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        body_prefix = prefix
        try:
            while sent < total_bytes and time.monotonic() < deadline:
                readable, writable, _ = select.select([sock], [sock], [], max(0.0, deadline - time.monotonic()))
                if readable:
                    break  # the server answered (or closed): stop sending
                if not writable:
                    continue
                block = body_prefix or _CHUNK[: min(MIB, total_bytes - sent)]
                body_prefix = b""
                payload = (f"{len(block):x}\r\n".encode() + block + b"\r\n") if chunked else block
                sock.sendall(payload)
                sent += len(block)
            else:
                if chunked and sent >= total_bytes:
                    sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            while b"\r\n\r\n" not in answer and time.monotonic() < deadline:
                sock.settimeout(max(0.1, deadline - time.monotonic()))
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
        except (ConnectionResetError, socket.timeout):
            pass
    head = answer.partition(b"\r\n\r\n")[0]
    return AttackResult(_status_of(head), sent, time.monotonic() - started, head.decode("latin-1"))


def json_prefix(field: str) -> bytes:
    """The start of a JSON object whose ``field`` is a string that the ``a``s of the body go on filling."""
    return json.dumps({field: ""})[:-2].encode()
