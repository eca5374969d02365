"""The event-driven waits of accepted associations (dicom_node.scp.reactor): the pieces, then a node serving a peer."""

from __future__ import annotations

import socket
import threading

from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification

from dicom_node.scp import DicomNode
from dicom_node.scp.reactor import _LargeReadSocket, _ReactorClock, _WakeUp
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


def test_only_the_loop_nap_of_a_thread_that_set_one_is_replaced():
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


def test_a_wake_up_set_from_another_thread_ends_the_wait():
    wake = _WakeUp()
    woke = threading.Event()

    def waiter() -> None:
        wake.wait(None, timeout=600)
        woke.set()

    thread = _run(waiter)
    wake.set()
    assert woke.wait(timeout=60), "set() did not end a 600 s wait"
    thread.join(timeout=30)
    wake.close()


def test_a_wake_up_set_before_the_wait_is_not_lost():
    wake = _WakeUp()
    wake.set()
    done = threading.Event()
    _run(lambda: (wake.wait(None, timeout=600), done.set()))
    assert done.wait(timeout=60), "a set() made before wait() was lost"
    wake.close()


def test_large_reads_return_exactly_the_bytes_asked_for_then_what_arrived_before_a_close():
    ours, theirs = socket.socketpair()
    payload = bytes(range(256)) * 1500  # 384 000 bytes, sent in pieces
    sender = _run(lambda: [theirs.sendall(payload[i:i + 50_000]) for i in range(0, len(payload), 50_000)])
    reader = object.__new__(_LargeReadSocket)  # only .socket is used by recv()
    reader.socket = ours
    assert bytes(reader.recv(len(payload))) == payload
    sender.join(timeout=30)
    theirs.sendall(b"tail")
    theirs.close()
    assert bytes(reader.recv(100)) == b"tail"
    ours.close()


def test_accepted_associations_wait_for_news_while_requestors_keep_pynetdicom_defaults(tmp_path):
    node = DicomNode(node_settings(tmp_path), _NoRecorder())
    node.start()
    try:
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="M3EDGE")
        assert assoc.is_established
        accepted = wait_for(lambda: node._server.active_associations)
        assert type(accepted[0]).__name__ == "_EventDrivenAssociation"
        assert type(assoc) is Association
        for _ in range(3):  # several messages on one association, each answered
            assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
        assert assoc.is_released
        wait_for(lambda: not node._server.active_associations, message="the accepted association did not end")
    finally:
        node.stop()


def test_a_peer_abort_ends_the_accepted_association(tmp_path):
    node = DicomNode(node_settings(tmp_path), _NoRecorder())
    node.start()
    try:
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="M3EDGE")
        assert assoc.is_established
        wait_for(lambda: node._server.active_associations)
        assoc.abort()
        wait_for(lambda: not node._server.active_associations, message="the aborted association did not end")
    finally:
        node.stop()


def test_shared_contexts_are_a_new_list_of_the_same_contexts_when_deep_copied():
    import copy

    from pynetdicom import AllStoragePresentationContexts

    from dicom_node.scp.reactor import SharedContexts

    shared = SharedContexts(AllStoragePresentationContexts)
    copied = copy.deepcopy(shared)
    assert copied is not shared
    assert all(a is b for a, b in zip(copied, shared, strict=True))
