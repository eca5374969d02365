"""STOW-RS takes instances in through the node's own intake, streamed (issue 13, points 5 and 9): a 256 MiB part goes
to the spool as it arrives (``serve``'s memory grows by a few MB, not by the part), a deflate bomb is refused with 413
without being inflated in memory, a body over STOW_MAX_REQUEST_BYTES is refused with 413 (declared or not), and
requests beyond STOW_MAX_CONCURRENT_REQUESTS get 503 with Retry-After."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import threading
from collections.abc import Iterator

import httpx
import pytest

from tests.security.conftest import MIB
from tests.support.hostile_instances import deflate_bomb, identity, streamed_part10
from tests.support.m3edge_processes import CLI
from tests.support.process_memory import rss_bytes

BOUNDARY = "stowb0undary"
HEADERS = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'}


@pytest.fixture(scope="module")
def token(serve_node) -> str:
    result = subprocess.run([*CLI, "users", "add", "stowbot", "--role", "admin"], capture_output=True, text=True,
                            env=serve_node.env, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def _body(parts: Iterator[bytes]) -> Iterator[bytes]:
    yield f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    yield from parts
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def _post(serve_node, token: str, content, **extra) -> httpx.Response:
    return httpx.post(f"{serve_node.api}/dicomweb/studies", content=content, timeout=300,
                      headers={**HEADERS, "Authorization": f"Bearer {token}", **extra})


@pytest.mark.slow
def test_a_large_part_streams_to_the_spool_without_being_held_in_memory(serve_node, token):
    ids = identity()
    digest = hashlib.sha256()

    def parts() -> Iterator[bytes]:
        for chunk in streamed_part10(256 * MIB, ids):
            digest.update(chunk)
            yield chunk

    before = rss_bytes(serve_node.pid)
    response = _post(serve_node, token, _body(parts()))
    grown = rss_bytes(serve_node.pid) - before
    assert response.status_code == 200, response.text
    stored = serve_node.home / "spool" / ids["study"] / ids["series"] / f"{ids['sop']}.dcm"
    assert stored.stat().st_size > 256 * MIB
    assert grown < 48 * MIB, f"serve grew by {grown / MIB:.0f} MiB for a 256 MiB part"


def test_a_deflate_bomb_by_stow_is_refused_with_413(serve_node, token, tmp_path):
    bomb = deflate_bomb(tmp_path / "bomb.dcm", 256 * MIB).read_bytes()
    before = rss_bytes(serve_node.pid)
    response = _post(serve_node, token, _body(iter([bomb])))
    assert response.status_code == 413, response.text
    assert "DICOM_MAX_INFLATED_BYTES" in response.json()["detail"]
    assert rss_bytes(serve_node.pid) - before < 48 * MIB


def _declared_only(serve_node, token: str, length: int) -> str:
    """The status line answered to a request that declares ``length`` bytes and sends none of them."""
    host, port = serve_node.api.removeprefix("http://").split(":")
    head = (f"POST /dicomweb/studies HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: {HEADERS['Content-Type']}\r\nContent-Length: {length}\r\n\r\n")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.encode())
        return sock.recv(256).decode(errors="replace").split("\r\n", 1)[0]


def test_a_body_over_the_request_limit_is_refused_with_413_declared_or_not(serve_node, token):
    assert " 413 " in _declared_only(serve_node, token, 400 * MIB)  # refused before a byte of the body is read
    endless = _post(serve_node, token, _body(streamed_part10(340 * MIB)))  # chunked: no length declared
    assert endless.status_code == 413 and "STOW_MAX_REQUEST_BYTES" in endless.json()["detail"]


def test_requests_beyond_the_concurrent_limit_get_503_with_retry_after(serve_node, token):
    release = threading.Event()
    first: dict[str, httpx.Response] = {}

    def slow_parts() -> Iterator[bytes]:
        chunks = streamed_part10(4 * MIB)
        yield next(chunks)
        release.wait(60)  # hold the request open (the one slot of STOW_MAX_CONCURRENT_REQUESTS=1)
        yield from chunks

    holder = threading.Thread(target=lambda: first.update(r=_post(serve_node, token, _body(slow_parts()))))
    holder.start()
    try:
        busy = None
        for _ in range(100):
            busy = _post(serve_node, token, _body(streamed_part10(MIB)))
            if busy.status_code == 503:
                break
        assert busy is not None and busy.status_code == 503, busy.text if busy else None
        assert busy.headers.get("retry-after")
    finally:
        release.set()
        holder.join(timeout=120)
    assert first["r"].status_code == 200
