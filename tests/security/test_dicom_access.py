"""Who gets in (issue 13, points 6 and 7): a wrong called AE title is refused with the standard reason; the node's own
health check (our AE title, from loopback, Verification only) passes whatever DICOM_ALLOWED_AES says, and the same AE
title asking for anything else is judged by the list like every other caller."""

from __future__ import annotations

from tests.security.conftest import ALLOWED_AE
from tests.support.dcmtk import echoscu, storescu
from tests.support.dicom_corpus import write_ct_series


def test_a_wrong_called_ae_title_is_refused(scp_node):
    wrong = echoscu(scp_node.port, calling_ae=ALLOWED_AE, called_ae="WRONGCALLED")
    assert wrong.returncode != 0
    assert "Called AE Title Not Recognized" in wrong.stdout + wrong.stderr
    assert echoscu(scp_node.port, calling_ae=ALLOWED_AE).returncode == 0
    assert "called AE not recognised" in scp_node.process.text()


def test_the_nodes_own_health_check_passes_the_allowlist_and_opens_nothing_else(scp_node, tmp_path):
    own = echoscu(scp_node.port, calling_ae="M3EDGE")  # DICOM_ALLOWED_AES lists PACS only
    assert own.returncode == 0, own.stdout + own.stderr
    stranger = echoscu(scp_node.port, calling_ae="STRANGER")
    assert stranger.returncode != 0 and "Calling AE Title Not Recognized" in stranger.stdout + stranger.stderr
    series = write_ct_series(tmp_path / "ct", 1, rows=16, columns=16)
    store = storescu(scp_node.port, series.paths, calling_ae="M3EDGE")  # same AE title, asking to store
    assert store.returncode != 0
    assert "Calling AE Title Not Recognized" in store.output
