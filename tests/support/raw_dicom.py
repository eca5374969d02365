"""DICOM Upper Layer PDUs written by hand (PS3.8 9.3), for tests that must send what no real SCU would: a header
claiming gigabytes, half an association request, a P-DATA-TF longer than negotiated."""

from __future__ import annotations

import socket
import struct
import time

__all__ = ["associate_rq", "p_data_tf", "pdu_header", "read_pdu", "connect", "VERIFICATION", "IMPLICIT_LE",
           "A_ASSOCIATE_AC", "A_ASSOCIATE_RJ", "A_ABORT"]

VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ABORT = 0x02, 0x03, 0x07


def pdu_header(pdu_type: int, length: int) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, length)


def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(value)) + value


def associate_rq(calling: str = "PROBE", called: str = "M3EDGE", abstract: str = VERIFICATION,
                 transfer_syntax: str = IMPLICIT_LE, max_length: int = 16384) -> bytes:
    """A complete A-ASSOCIATE-RQ proposing one presentation context (ID 1)."""
    context = struct.pack(">BBBB", 1, 0, 0, 0) + _item(0x30, abstract.encode()) + _item(0x40, transfer_syntax.encode())
    user_information = _item(0x51, struct.pack(">L", max_length)) + _item(0x52, b"1.2.826.0.1.3680043.9.7433")
    body = (struct.pack(">HH", 1, 0) + called.ljust(16).encode() + calling.ljust(16).encode() + bytes(32)
            + _item(0x10, APPLICATION_CONTEXT.encode()) + _item(0x20, context) + _item(0x50, user_information))
    return pdu_header(0x01, len(body)) + body


def p_data_tf(fragment: bytes, *, context_id: int = 1, command: bool = True, last: bool = True) -> bytes:
    control = (0x01 if command else 0x00) | (0x02 if last else 0x00)
    item = struct.pack(">LBB", len(fragment) + 2, context_id, control) + fragment
    return pdu_header(0x04, len(item)) + item


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_pdu(sock: socket.socket, timeout: float = 10.0, limit: int = 1 << 20) -> tuple[int, bytes] | None:
    """The next PDU from the peer (type, body), or None when the connection closed first. Bounded by ``limit``."""
    deadline = time.monotonic() + timeout
    data = bytearray()
    need = 6
    while len(data) < need:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(need - len(data))
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        data += chunk
        if len(data) == 6 and need == 6:
            length = struct.unpack(">L", data[2:6])[0]
            assert length <= limit, f"the peer sent a PDU of {length} bytes"
            need = 6 + length
    return data[0], bytes(data[6:])


def _command_element(element: int, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\0"
    return struct.pack("<HHL", 0x0000, element, len(value)) + value


def c_store_rq_command(sop_class: str, sop_instance: str, message_id: int = 1) -> bytes:
    """A C-STORE-RQ command set (implicit VR little endian, group length first) announcing a data set."""
    body = b"".join([
        _command_element(0x0002, sop_class.encode()),
        _command_element(0x0100, struct.pack("<H", 0x0001)),
        _command_element(0x0110, struct.pack("<H", message_id)),
        _command_element(0x0700, struct.pack("<H", 0)),
        _command_element(0x0800, struct.pack("<H", 0x0000)),
        _command_element(0x1000, sop_instance.encode()),
    ])
    return _command_element(0x0000, struct.pack("<L", len(body))) + body


__all__ += ["c_store_rq_command"]
