"""The pynetdicom fast path: installed only on the tested version (any other runs stock and says so once), off when
``DICOM_FAST_PATH`` is off, and pacing only associations that were active lately: an idle one sleeps as stock."""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from types import SimpleNamespace

import pytest
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.transport import AssociationSocket

from dicom_node.scp import DicomNode, fastpath
from tests.support.scp_node import node_settings


@pytest.fixture(autouse=True)
def _stock_pynetdicom():
    fastpath.uninstall()
    yield
    fastpath.uninstall()


class _NoRecorder:
    def record(self, instance) -> None:
        raise AssertionError("nothing is received in this test")

    def associations_ended(self, *args) -> None:
        pass


# -- the guard ---------------------------------------------------------------------------------------------------------


def test_an_untested_pynetdicom_version_runs_stock_and_says_so_once(monkeypatch, caplog):
    monkeypatch.setattr(fastpath, "installed_version", lambda: "3.0.5")
    monkeypatch.setattr(fastpath, "_warned", False)
    with caplog.at_level(logging.WARNING, logger=fastpath.__name__):
        assert fastpath.install() is False
        assert fastpath.install() is False
    assert not fastpath.installed()
    [line] = [r.getMessage() for r in caplog.records if r.name == fastpath.__name__]
    assert "pynetdicom 3.0.5 is not a version the DICOM fast path was tested with (3.0.4)" in line
    assert "stock" in fastpath.describe(True)


def test_the_tested_version_paces_both_reactors_and_uninstall_gives_them_back():
    assert fastpath.installed_version() in fastpath.TESTED_VERSIONS
    assert fastpath.install() is True
    assert fastpath.install() is True  # idempotent: one layer, not two
    assert fastpath.installed()
    assert fastpath.describe(True).endswith("with the fast path")
    fastpath.uninstall()
    assert not fastpath.installed()


def test_everything_but_the_reactor_sleep_is_the_time_module_s():
    paced = fastpath.PacedTime(time)
    assert paced.monotonic is time.monotonic and paced.time is time.time and paced.perf_counter is time.perf_counter


@pytest.mark.parametrize("enabled", [True, False], ids=["on", "off"])
def test_the_node_installs_the_fast_path_only_when_the_setting_is_on(tmp_path, caplog, enabled):
    node = DicomNode(node_settings(tmp_path, dicom_fast_path=enabled), _NoRecorder())
    with caplog.at_level(logging.INFO, logger="dicom_node.scp.node"):
        node.start()
        try:
            assert fastpath.installed() is enabled
        finally:
            node.stop()
    started = [r.getMessage() for r in caplog.records if " listening on " in r.getMessage()]
    assert started and ("with the fast path" if enabled else "stock: DICOM_FAST_PATH is off") in started[0]


def test_the_setting_reaches_the_receiving_processes(tmp_path):
    from dicom_node.scp.receivers import NodeConfig

    assert NodeConfig.from_settings(node_settings(tmp_path, dicom_fast_path=True)).dicom_fast_path is True
    assert NodeConfig.from_settings(node_settings(tmp_path)).dicom_fast_path is False  # off by default


# -- pacing ------------------------------------------------------------------------------------------------------------


class _RecordingCondition(threading.Condition):
    def __init__(self, lock) -> None:
        super().__init__(lock)
        self.waits: list[float] = []

    def wait(self, timeout=None):
        self.waits.append(timeout)
        return super().wait(timeout)


def _recording_queue() -> queue.Queue:
    q: queue.Queue = queue.Queue()
    q.not_empty = _RecordingCondition(q.mutex)
    return q


class _FakeTime:
    """The ``time`` module as ``PacedTime`` wraps it, recording stock sleeps instead of sleeping."""

    def __init__(self) -> None:
        self.slept: list[float] = []
        self.monotonic = time.monotonic

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


class _ReactorThread(threading.Thread):
    """Plays a reactor's thread: runs the calls it is given, so that ``threading.current_thread()`` is this object."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self._calls: queue.Queue = queue.Queue()
        self._results: queue.Queue = queue.Queue()

    def run_in(self, call) -> None:
        if not self.is_alive():
            self.start()
        self._calls.put(call)
        error = self._results.get(timeout=10)
        if error is not None:
            raise error

    def run(self) -> None:
        while True:
            call = self._calls.get()
            try:
                call()
            except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
                self._results.put(exc)
            else:
                self._results.put(None)


class _FakeDul(_ReactorThread):
    def __init__(self, transport=None) -> None:
        super().__init__()
        self.to_provider_queue = _recording_queue()
        self.socket = transport


class _FakeAssociation(_ReactorThread):
    def __init__(self, transport=None) -> None:
        super().__init__()
        self.dimse = SimpleNamespace(msg_queue=_recording_queue())
        self.dul = _FakeDul(transport)


def _fire(handler_event: str, assoc) -> None:
    handlers = dict((event.name, handler) for event, handler in fastpath.event_handlers())
    handlers[handler_event](SimpleNamespace(assoc=assoc))


def test_sleeps_other_than_the_reactors_and_threads_of_unwatched_associations_are_stock():
    stock = _FakeTime()
    paced = fastpath.PacedTime(stock)
    paced.sleep(0.1)
    paced.sleep(0.0001)
    assoc = _FakeAssociation()  # no handler ever fired for it: an SCU's association, say
    assoc.run_in(lambda: paced.sleep(fastpath.STOCK_DELAY))
    assert stock.slept == [0.1, 0.0001, fastpath.STOCK_DELAY]
    assert assoc.dimse.msg_queue.not_empty.waits == []


def test_a_busy_association_waits_for_its_request_and_never_longer_than_stock():
    stock = _FakeTime()
    paced = fastpath.PacedTime(stock)
    assoc = _FakeAssociation()
    before = fastpath.associations_paced()
    _fire("EVT_DIMSE_RECV", assoc)  # a request arrived: the association is busy
    assert fastpath.associations_paced() == before + 1
    assoc.run_in(lambda: paced.sleep(fastpath.STOCK_DELAY))
    assert stock.slept == []
    assert assoc.dimse.msg_queue.not_empty.waits == [fastpath.STOCK_DELAY]


def test_a_waiting_request_is_taken_at_once():
    stock = _FakeTime()
    paced = fastpath.PacedTime(stock)
    assoc = _FakeAssociation()
    _fire("EVT_DIMSE_RECV", assoc)
    assoc.dimse.msg_queue.put((1, "C-STORE-RQ"))
    assoc.run_in(lambda: paced.sleep(fastpath.STOCK_DELAY))
    assert stock.slept == [] and assoc.dimse.msg_queue.not_empty.waits == []
    assert assoc.dimse.msg_queue.qsize() == 1  # the wait takes nothing off the queue


def test_the_dul_waits_for_the_reply_after_a_request_and_for_the_peer_after_sending():
    stock = _FakeTime()
    paced = fastpath.PacedTime(stock)
    left, right = socket.socketpair()
    try:
        transport = AssociationSocket(Association(AE(), "acceptor"), client_socket=left)
        assoc = _FakeAssociation(transport)
        _fire("EVT_DIMSE_RECV", assoc)
        assoc.dul.run_in(lambda: paced.sleep(fastpath.STOCK_DELAY))
        assert assoc.dul.to_provider_queue.not_empty.waits == [fastpath.STOCK_DELAY]

        _fire("EVT_PDU_SENT", assoc)  # the reply went out: next comes the peer's request, on the socket
        right.sendall(b"\x04")
        assoc.dul.run_in(lambda: paced.sleep(fastpath.STOCK_DELAY))
        assert assoc.dul.to_provider_queue.not_empty.waits == [fastpath.STOCK_DELAY]  # no new wait on the queue
        assert stock.slept == []  # the socket had a byte: no sleep at all

        transport.close()  # a closed connection: stock sleep, the DUL finds out on its next look
        assoc.dul.run_in(lambda: paced.sleep(fastpath.STOCK_DELAY))
        assert stock.slept == [fastpath.STOCK_DELAY]
    finally:
        left.close()
        right.close()


def test_an_association_idle_beyond_the_window_sleeps_as_stock():
    stock = _FakeTime()
    assoc = _FakeAssociation()
    _fire("EVT_DIMSE_RECV", assoc)
    later = time.monotonic() + fastpath.ACTIVE_WINDOW + 1
    stock.monotonic = lambda: later  # PacedTime reads the clock it wraps
    paced = fastpath.PacedTime(stock)
    assoc.run_in(lambda: paced.sleep(fastpath.STOCK_DELAY))
    assert stock.slept == [fastpath.STOCK_DELAY]
    assert assoc.dimse.msg_queue.not_empty.waits == []
