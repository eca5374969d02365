"""A deflated data set is inflated in bounded chunks and refused beyond DICOM_MAX_INFLATED_BYTES (issue 13, point 5):
by C-STORE, Out of Resources (A700H) with the reason, the receiving processes' memory within a few MB; the node
keeps serving. (The STOW-RS side is in test_dicom_stow.py.)"""

from __future__ import annotations

from pynetdicom import AE, _config

from dicom_node.intake.statuses import OUT_OF_RESOURCES
from tests.security.conftest import ALLOWED_AE, MIB
from tests.support.dcmtk import echoscu
from tests.support.hostile_instances import DEFLATED, SECONDARY_CAPTURE, deflate_bomb


def test_a_deflate_bomb_by_c_store_is_refused_without_inflating_it_in_memory(scp_node, tmp_path, monkeypatch):
    bomb = deflate_bomb(tmp_path / "bomb.dcm", 256 * MIB)  # about 256 KB on the wire; the node's limit is 32 MiB
    assert bomb.stat().st_size < MIB
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # send the file's bytes as they are
    before = scp_node.receivers_rss()
    ae = AE(ae_title=ALLOWED_AE)
    ae.add_requested_context(SECONDARY_CAPTURE, DEFLATED)
    assoc = ae.associate("127.0.0.1", scp_node.port, ae_title="M3EDGE")
    assert assoc.is_established
    answer = assoc.send_c_store(bomb)
    assoc.release()
    assert answer.Status == OUT_OF_RESOURCES
    assert "DICOM_MAX_INFLATED_BYTES" in answer.ErrorComment
    assert scp_node.receivers_rss() - before < 24 * MIB
    assert not list((scp_node.home / "spool").glob("2.25.*"))  # nothing of it stored
    assert echoscu(scp_node.port, calling_ae=ALLOWED_AE).returncode == 0
