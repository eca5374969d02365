"""Connections that never finish asking for an association cannot keep real callers out (issue 13, point 2): they do
not count against DICOM_MAX_ASSOCIATIONS, each is closed DICOM_ASSOCIATE_TIMEOUT_SECONDS after it opened (2 s
here), and past the bound on unfinished connections the oldest is closed for the newcomer. Refused callers that keep
their sockets open are closed as soon."""

from __future__ import annotations

import socket
import time

from tests.security.conftest import ALLOWED_AE
from tests.support.dcmtk import echoscu
from tests.support.polling import wait_for
from tests.support.raw_dicom import A_ASSOCIATE_RJ, associate_rq, connect, pdu_header, read_pdu

HALF_OPEN = 40  # the red team's repro used 34; the node allows 4 associations per receiving process here


def _closed_by_peer(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_half_sent_association_requests_never_keep_a_real_caller_out(scp_node):
    holders = []
    try:
        for _ in range(HALF_OPEN):
            sock = connect(scp_node.port)
            sock.sendall(pdu_header(0x01, 200))  # an A-ASSOCIATE-RQ's header, and nothing after it
            holders.append(sock)
        started = time.monotonic()
        result = echoscu(scp_node.port, calling_ae=ALLOWED_AE, timeout=30)
        assert result.returncode == 0, result.stdout + result.stderr  # while all of them are held open
        wait_for(lambda: all(_closed_by_peer(s) for s in holders), timeout=30, interval=0.2,
                 message="the node did not close the unfinished connections")
        assert time.monotonic() - started < 30
    finally:
        for sock in holders:
            sock.close()


def test_more_unfinished_connections_than_the_bound_close_the_oldest_not_the_newest(scp_node):
    """64 unfinished connections per receiving process at most: 160 held sockets, then a real caller."""
    holders = []
    try:
        for _ in range(160):
            sock = connect(scp_node.port)
            sock.sendall(b"\x01")  # one byte of a PDU header
            holders.append(sock)
        result = echoscu(scp_node.port, calling_ae=ALLOWED_AE, timeout=30)
        assert result.returncode == 0, result.stdout + result.stderr
    finally:
        for sock in holders:
            sock.close()


def test_refused_callers_holding_their_sockets_are_closed_and_hold_no_slot(scp_node):
    refused = []
    try:
        for index in range(12):  # 12 refused callers, more than the 8 association slots of the two processes
            sock = connect(scp_node.port)
            sock.sendall(associate_rq(calling=f"INTRUDER{index}"))
            answer = read_pdu(sock, timeout=15)
            assert answer is not None and answer[0] == A_ASSOCIATE_RJ
            refused.append(sock)  # and never closed by the caller
        result = echoscu(scp_node.port, calling_ae=ALLOWED_AE, timeout=30)
        assert result.returncode == 0, result.stdout + result.stderr
        wait_for(lambda: all(_closed_by_peer(s) for s in refused), timeout=30, interval=0.2,
                 message="the node kept refused callers' connections open")
    finally:
        for sock in refused:
            sock.close()
