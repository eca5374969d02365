"""Event-driven waits for the associations the node accepts (pynetdicom's reactors poll every millisecond).

pynetdicom runs two threads per association, each in a loop that sleeps 1 ms whenever it found nothing to do: with
eight open associations that is 16 000 wake-ups a second, each taking the GIL, and every C-STORE waits up to a
millisecond at each hand-over between the two threads. Measured on the bench, this polling cost as much CPU per
instance as writing the instance durably, and more senders made it worse.

``EventDrivenRequestHandler`` (for ``AE.make_server(request_handler=...)``) lets pynetdicom build its association
as usual, then turns it into an ``_EventDrivenAssociation`` whose two threads, when pynetdicom's loop asks for its
1 ms nap, wait for news instead:

- the DUL thread waits in ``select()`` on the peer's socket and a wake-up socket that every put into its event and
  provider queues writes to (an outgoing C-STORE response wakes it at once);
- the association thread waits on an ``Event`` that every put into its DIMSE message queue and the DUL's user queue
  sets (a received C-STORE, release or abort wakes it at once).

Both waits end after ``MAX_WAIT`` at the latest, so pynetdicom's loops still check their timers and flags. The loops
themselves, the state machine and the handlers are pynetdicom's, unchanged: only ``time.sleep`` as seen by the
``association`` and ``dul`` modules is routed through ``_ReactorClock``, which changes nothing for any thread but
these two (requestor associations, such as C-MOVE sub-associations and test clients, sleep as before).

Reading is pynetdicom's own, through the guarded socket of ``dicom_node.scp.guarded_server``, so the PDU limits hold
on the fast path exactly as on stock pynetdicom.
"""

from __future__ import annotations

import logging
import queue
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import pynetdicom.association as _association_module
import pynetdicom.dul as _dul_module
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import RequestHandler

__all__ = ["EventDrivenRequestHandler", "MAX_WAIT"]

LOGGER = logging.getLogger(__name__)

MAX_WAIT = 0.02  # seconds: the longest a reactor waits without news before pynetdicom's loop looks around again
_LOOP_NAP = 0.001  # the sleep pynetdicom's reactor loops take between passes (the only one replaced)


class _ReactorClock:
    """The ``time`` module as pynetdicom's ``association`` and ``dul`` modules see it, with a per-thread ``sleep``."""

    def __init__(self) -> None:
        self._local = threading.local()

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def set_nap(self, nap: Callable[[], None]) -> None:
        """From now on, a 1 ms sleep on the calling thread calls ``nap`` instead."""
        self._local.nap = nap

    def sleep(self, seconds: float) -> None:
        nap = getattr(self._local, "nap", None)
        if nap is not None and seconds == _LOOP_NAP:
            nap()
        else:
            time.sleep(seconds)


_CLOCK = _ReactorClock()
_install_lock = threading.Lock()


def _install_clock() -> None:
    with _install_lock:
        for module in (_association_module, _dul_module):
            if module.time is not _CLOCK:
                module.time = _CLOCK


class _SignallingQueue(queue.Queue):
    """A ``queue.Queue`` that calls ``signal()`` after every put."""

    def __init__(self, signal: Callable[[], None]) -> None:
        super().__init__()
        self._signal = signal

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._signal()


class _WakeUp:
    """A socket pair: ``set()`` from any thread makes a ``wait()`` (select on it and the peer's socket) return."""

    def __init__(self) -> None:
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        self._pending = threading.Event()
        self.waiter: int | None = None  # the waiting thread's ident: what it queues itself, it sees without a wake-up

    def set(self) -> None:
        if self._pending.is_set() or threading.get_ident() == self.waiter:
            return  # a byte is waiting already, or the reactor queued this itself and looks before it waits
        self._pending.set()
        try:
            self._writer.send(b"\0")
        except OSError:
            pass  # full (a wake-up is pending anyway) or closed (the reactor has ended)

    def wait(self, peer: socket.socket | None, timeout: float) -> None:
        watched = [self._reader]
        if peer is not None:
            if isinstance(peer, ssl.SSLSocket) and peer.pending():
                return  # decrypted bytes are buffered already: no wait
            if peer.fileno() >= 0:
                watched.append(peer)
        try:
            select.select(watched, [], [], timeout)
        except (OSError, ValueError):
            return  # a socket was closed under us: the loop's next pass notices
        self._pending.clear()  # before draining: a set() from now on writes a new byte
        try:
            while self._reader.recv(64):
                pass
        except OSError:
            pass  # drained (BlockingIOError) or closed

    def close(self) -> None:
        self._reader.close()
        self._writer.close()


class _EventDrivenDul(DULServiceProvider):
    """Set up by ``_convert``: the DUL thread waits for the peer's socket or a queued primitive."""

    _wake: _WakeUp

    def _nap(self) -> None:
        wrapper = self.socket
        self._wake.wait(getattr(wrapper, "socket", None) if wrapper is not None else None, MAX_WAIT)

    def run(self) -> None:
        _CLOCK.set_nap(self._nap)
        self._wake.waiter = threading.get_ident()
        try:
            super().run()
        finally:
            self.assoc._news.set()  # the association thread checks dul.is_alive() next
            self._wake.close()

    def kill_dul(self) -> None:
        super().kill_dul()
        self._wake.set()

    def stop_dul(self) -> bool:
        if self.state_machine.current_state == "Sta1":
            self._kill_thread = True
            self._wake.set()
        return super().stop_dul()


class _EventDrivenAssociation(Association):
    """Set up by ``_convert``: the association thread waits for a message, a release or an abort."""

    _news: threading.Event

    def _nap(self) -> None:
        self._news.wait(MAX_WAIT)
        self._news.clear()  # before pynetdicom's loop looks: a put from now on sets it again

    def run(self) -> None:
        _CLOCK.set_nap(self._nap)
        super().run()

    def kill(self) -> None:
        self._news.set()
        super().kill()


def _signalling_copy(original: queue.Queue, signal: Callable[[], None]) -> _SignallingQueue:
    """A signalling queue holding what ``original`` holds (the association has not started: nobody else uses it)."""
    replacement = _SignallingQueue(signal)
    while True:
        try:
            replacement.put(original.get_nowait())
        except queue.Empty:
            return replacement


def _convert(assoc: Association) -> Association:
    """Make a freshly built, not yet started acceptor association event-driven."""
    news = threading.Event()
    wake = _WakeUp()
    dul = assoc.dul
    dul.event_queue = _signalling_copy(dul.event_queue, wake.set)  # holds Evt5 (connection accepted) already
    dul.to_provider_queue = _signalling_copy(dul.to_provider_queue, wake.set)
    dul.to_user_queue = _signalling_copy(dul.to_user_queue, news.set)
    dul._wake = wake
    dul.__class__ = _EventDrivenDul
    assoc.dimse.msg_queue = _signalling_copy(assoc.dimse.msg_queue, news.set)
    assoc._news = news
    assoc.__class__ = _EventDrivenAssociation
    return assoc


class EventDrivenRequestHandler(RequestHandler):
    """pynetdicom's request handler; the associations it builds wait for news instead of polling."""

    def _create_association(self) -> Association:
        _install_clock()
        return _convert(super()._create_association())
