"""PDU lengths a peer declares are never trusted (issue 13, point 1): a header claiming a gigabyte, before any
association or inside one, a P-DATA-TF one byte over what was negotiated, an oversized A-ASSOCIATE-RQ, and a data set
fed fragment by fragment past DICOM_MAX_INSTANCE_BYTES are each answered with an A-ABORT and the connection closed,
while the receiving processes' memory (VmRSS, both processes) stays within a few MB and the node keeps serving."""

from __future__ import annotations

import struct

import pytest

from tests.security.conftest import ALLOWED_AE, MIB
from tests.support.dcmtk import echoscu
from tests.support.raw_dicom import (
    A_ABORT,
    A_ASSOCIATE_AC,
    associate_rq,
    c_store_rq_command,
    connect,
    p_data_tf,
    pdu_header,
    read_pdu,
)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MAX_PDU = 1_048_576  # DICOM_MAX_PDU_SIZE's default, what the node advertises
MEMORY_BOUND = 24 * MIB  # both receiving processes together, after every attack of a test


def _aborted(sock) -> bool:
    """The node answered with an A-ABORT (type 07H), then closed the connection."""
    answer = read_pdu(sock, timeout=15)
    closed = read_pdu(sock, timeout=15) is None
    return answer is not None and answer[0] == A_ABORT and closed


def _associated(port: int, abstract: str = "1.2.840.10008.1.1"):
    sock = connect(port)
    sock.sendall(associate_rq(calling=ALLOWED_AE, abstract=abstract))
    answer = read_pdu(sock)
    assert answer is not None and answer[0] == A_ASSOCIATE_AC, answer
    return sock


def _still_serving(port: int) -> None:
    result = echoscu(port, calling_ae=ALLOWED_AE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_header_claiming_a_gigabyte_before_any_association_costs_nothing(scp_node):
    before = scp_node.receivers_rss()
    for _ in range(8):  # several, so both receiving processes get some; from a caller the node will refuse anyway
        with connect(scp_node.port) as sock:
            sock.sendall(pdu_header(0x01, 1 << 30) + b"\0" * 4096)
            assert _aborted(sock)
    assert scp_node.receivers_rss() - before < MEMORY_BOUND
    _still_serving(scp_node.port)


def test_an_association_request_longer_than_its_bound_is_aborted(scp_node):
    with connect(scp_node.port) as sock:
        sock.sendall(pdu_header(0x01, 300 * 1024) + b"\0" * 4096)
        assert _aborted(sock)
    with connect(scp_node.port) as sock:  # the first PDU must be an A-ASSOCIATE-RQ
        sock.sendall(pdu_header(0x04, 100) + b"\0" * 100)
        assert _aborted(sock)


@pytest.mark.parametrize("declared", [2 << 30, MAX_PDU + 1], ids=["2-GiB", "one-byte-over"])
def test_a_p_data_tf_longer_than_negotiated_is_aborted_inside_an_association(scp_node, declared):
    before = scp_node.receivers_rss()
    with _associated(scp_node.port) as sock:
        sock.sendall(pdu_header(0x04, declared) + b"\0" * 65536)
        assert _aborted(sock)
    assert scp_node.receivers_rss() - before < MEMORY_BOUND
    _still_serving(scp_node.port)


def test_a_data_set_growing_past_the_instance_limit_is_aborted_midway(scp_node):
    """Fragments of 1 MB, each within the PDU limit, for a data set the node would have to hold whole (16 MiB is
    this node's DICOM_MAX_INSTANCE_BYTES): the association is aborted at the limit, not at the end of the data."""
    before = scp_node.receivers_rss()
    with _associated(scp_node.port, abstract=CT_IMAGE_STORAGE) as sock:
        sock.sendall(p_data_tf(c_store_rq_command(CT_IMAGE_STORAGE, "1.2.3.4.5")))
        fragment = p_data_tf(b"\0" * (MAX_PDU - 6), command=False, last=False)
        sent = 0
        try:
            for _ in range(64):  # 64 MB at most; the node gives up at 16
                sock.sendall(fragment)
                sent += 1
        except OSError:
            pass  # the node closed the connection while we were still sending: that is the point
        assert sent < 64
    assert scp_node.receivers_rss() - before < 2 * 16 * MIB + MEMORY_BOUND  # one data set's worth at most, freed
    _still_serving(scp_node.port)


def test_release_and_abort_pdus_of_the_wrong_length_are_refused(scp_node):
    with _associated(scp_node.port) as sock:
        sock.sendall(pdu_header(0x05, 1 << 20) + struct.pack(">L", 0))
        assert _aborted(sock)
