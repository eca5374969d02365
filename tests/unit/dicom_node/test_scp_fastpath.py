"""The pynetdicom fast path (dicom_node.scp.fastpath): installed only on the versions it was measured with, and when
installed, accepted associations wait for news instead of polling and still serve every message."""

from __future__ import annotations

import logging
import threading

import pytest
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification

from dicom_node.scp import DicomNode, fastpath
from tests.support.polling import wait_for
from tests.support.scp_node import node_settings


class _NoRecorder:
    def record(self, instance) -> None:
        raise AssertionError("no C-STORE is sent in these tests")

    def associations_ended(self, study_uids, ended_at) -> None:
        pass


def _run(target) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_another_pynetdicom_version_runs_stock_and_says_so_once(monkeypatch, caplog):
    monkeypatch.setattr(fastpath, "installed_version", lambda: "3.9.9")
    monkeypatch.setattr(fastpath, "_warned", threading.Event())
    with caplog.at_level(logging.WARNING, logger="dicom_node.scp.fastpath"):
        assert fastpath.request_handler() is None
        assert fastpath.request_handler() is None
    assert [r.getMessage() for r in caplog.records].count(
        "pynetdicom 3.9.9 is not a version the DICOM fast path was tested with (3.0.4): the node runs stock "
        "pynetdicom") == 1
    assert "stock" in fastpath.describe(True) and "stock" in fastpath.describe(False)


needs_tested_version = pytest.mark.skipif(not fastpath.available(), reason="the installed pynetdicom is not a "
                                          "version the fast path was tested with: the node runs stock")


@needs_tested_version
def test_only_the_loop_nap_of_a_thread_that_set_one_is_replaced():
    from dicom_node.scp.fastpath.reactor import _ReactorClock

    clock = _ReactorClock()
    naps: list[str] = []

    def reactor_thread() -> None:
        clock.set_nap(lambda: naps.append("reactor"))
        clock.sleep(0.001)  # pynetdicom's loop nap: replaced
        clock.sleep(0.0001)  # any other sleep: a real one

    _run(reactor_thread).join(timeout=30)
    clock.sleep(0.001)  # this thread set no nap: a real sleep
    assert naps == ["reactor"]
    assert clock.monotonic() > 0  # everything else is the time module's


@needs_tested_version
def test_a_wake_up_set_from_another_thread_or_before_the_wait_ends_it():
    from dicom_node.scp.fastpath.reactor import _WakeUp

    wake = _WakeUp()
    woke = threading.Event()
    thread = _run(lambda: (wake.wait(None, timeout=600), woke.set()))
    wake.set()
    assert woke.wait(timeout=60), "set() did not end a 600 s wait"
    thread.join(timeout=30)
    wake.set()  # before the wait: not lost
    done = threading.Event()
    _run(lambda: (wake.wait(None, timeout=600), done.set()))
    assert done.wait(timeout=60)
    wake.close()


@pytest.mark.parametrize("enabled", [True, False], ids=["fastpath", "stock"])
def test_accepted_associations_serve_messages_and_end_on_release_and_abort(tmp_path, enabled):
    node = DicomNode(node_settings(tmp_path, dicom_fastpath=enabled), _NoRecorder())
    node.start()
    try:
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="M3EDGE")
        assert assoc.is_established
        (accepted,) = wait_for(lambda: node._server.active_associations)
        event_driven = type(accepted).__name__ == "_EventDrivenAssociation"
        assert event_driven is (enabled and fastpath.available())
        assert type(assoc) is Association  # requestors keep pynetdicom's own
        for _ in range(3):
            assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
        wait_for(lambda: not node._server.active_associations, message="the released association did not end")
        aborted = ae.associate("127.0.0.1", node.port, ae_title="M3EDGE")
        wait_for(lambda: node._server.active_associations)
        aborted.abort()
        wait_for(lambda: not node._server.active_associations, message="the aborted association did not end")
    finally:
        node.stop()
