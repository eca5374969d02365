"""Both ends of m3edge's associations send without Nagle's delay (TCP_NODELAY), on real sockets."""

from __future__ import annotations

import socket

import dicom_node.network as network
import dicom_node.scu as scu_module
from dicom_node.network import DicomAddress
from dicom_node.scu import StorageSCU
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from tests.support.polling import wait_for
from tests.support.scp_node import running_node


def test_the_scu_sets_tcp_nodelay_on_its_socket(tmp_path, session_factory, monkeypatch):
    seen: list[int] = []

    def spying(assoc) -> None:
        network.send_without_delay(assoc)
        seen.append(assoc.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    monkeypatch.setattr(scu_module, "send_without_delay", spying)
    with running_node(tmp_path / "home", session_factory) as node:
        StorageSCU("M3EDGE").echo(DicomAddress.parse(f"M3EDGE@127.0.0.1:{node.port}"))
    assert seen == [1]


def test_the_node_sets_tcp_nodelay_on_every_connection_it_accepts(tmp_path, session_factory):
    with running_node(tmp_path / "home", session_factory) as node:
        ae = AE(ae_title="NODELAY")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="M3EDGE")
        assert assoc.is_established
        (accepted,) = wait_for(lambda: node._server.active_associations, message="no accepted association")
        option = accepted.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assoc.release()
    assert option == 1
