"""Both ends of m3edge's associations send without Nagle's delay (TCP_NODELAY), on real sockets."""

from __future__ import annotations

import socket

import dicom_node.network as network
import dicom_node.scp.node as node_module
import dicom_node.scu as scu_module
from dicom_node.network import DicomAddress
from dicom_node.scu import StorageSCU
from tests.support.scp_node import running_node


def _spy(monkeypatch, module, seen: list[int]) -> None:
    def spying(assoc) -> None:
        network.send_without_delay(assoc)
        seen.append(assoc.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    monkeypatch.setattr(module, "send_without_delay", spying)


def test_the_scu_and_the_node_both_set_tcp_nodelay_on_their_sockets(tmp_path, session_factory, monkeypatch):
    client, server = [], []
    _spy(monkeypatch, scu_module, client)
    _spy(monkeypatch, node_module, server)
    with running_node(tmp_path / "home", session_factory) as node:
        StorageSCU("M3EDGE").echo(DicomAddress.parse(f"M3EDGE@127.0.0.1:{node.port}"))
    assert client == [1] and server == [1]
