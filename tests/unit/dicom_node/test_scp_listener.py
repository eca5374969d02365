"""Receiving processes sharing one listening socket take the associations in turn (dicom_node.scp.listener)."""

from __future__ import annotations

import multiprocessing
import socket

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

import dicom_node.scp.listener as listener_module
from dicom_node.scp.guarded_server import ConnectionLimits
from dicom_node.scp.listener import SharedListener, shared_listener_server
from dicom_node.scp.pdu_limits import PduLimits

LIMITS = ConnectionLimits(PduLimits(1 << 20, 1 << 30), associate_timeout=5, network_timeout=60, max_pending=8)


@pytest.fixture
def shared():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    turn = multiprocessing.get_context("spawn").Value("Q", 0)
    ae = AE()
    ae.add_supported_context(Verification)
    servers = [
        ae.make_server(("127.0.0.1", 0), server_class=shared_listener_server(SharedListener(listener, turn, i, 2)),
                       limits=LIMITS)
        for i in range(2)
    ]
    callers: list[socket.socket] = []

    def call() -> None:
        caller = socket.create_connection(listener.getsockname())
        callers.append(caller)

    yield servers, turn, call
    for caller in callers:
        caller.close()
    listener.close()


def _accepts(server) -> bool:
    try:
        request, _ = server.get_request()
    except BlockingIOError:
        return False
    request.close()
    return True


def test_the_processes_take_the_associations_in_turn(shared):
    servers, turn, call = shared
    assert servers[0].server_address == servers[1].server_address  # both on the parent's socket
    taken = []
    for _ in range(4):
        call()
        wrong, right = servers[1 - turn.value % 2], servers[turn.value % 2]
        assert not _accepts(wrong)  # not its turn: the connection is left for the other process
        taken.append(_accepts(right))
    assert taken == [True] * 4 and turn.value == 4


def test_a_process_takes_a_connection_left_waiting_too_long(shared, monkeypatch):
    servers, turn, call = shared
    monkeypatch.setattr(listener_module, "TURN_WAIT", 0.0)  # the process whose turn it is never came
    call()
    assert _accepts(servers[1]) and turn.value == 1
