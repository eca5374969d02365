"""The one place where the node reaches into pynetdicom's internals: its reactors wake on news while an association
is busy, instead of polling every millisecond. Installed only on the pynetdicom versions in ``TESTED_VERSIONS``.

Why: pynetdicom runs two threads per association that poll. The association's reactor
(``Association._run_reactor``) sleeps a hard-coded ``time.sleep(0.001)`` between looks at its DIMSE message queue;
the DUL reactor (``DULServiceProvider.run_reactor``) sleeps ``_run_loop_delay`` (0.001 s) after a loop without an
event, before it looks at the socket and at the queue of PDUs to send. A PACS sends a study over one association,
each C-STORE waiting for the previous response, so every instance waits for up to three of those sleeps: the
request's pick-up by the association, the response's pick-up by the DUL, the next request's pick-up by the DUL.

How: both modules' ``time`` is replaced by ``PacedTime``, which runs every call as stock except a 1 ms reactor sleep
in the thread of an association that ``event_handlers()`` watch (the node binds them) and that was active in the last
``ACTIVE_WINDOW`` seconds. Such a sleep becomes a wait that ends as soon as what the thread polls for is there, and
never later than the stock sleep would:

- the association's thread waits on its DIMSE message queue (a request complete);
- the DUL's thread, between a complete request and the next PDU it sends, waits on its queue of PDUs to send (the
  response); otherwise on its socket (the next request's bytes).

Which of the two the DUL waits for follows pynetdicom's public events (``EVT_DIMSE_RECV``: a request is complete;
``EVT_PDU_SENT``), which also mark the association active. An association idle for longer than ``ACTIVE_WINDOW``
(and any association the handlers are not bound to: the SCU's, other processes') sleeps exactly as stock pynetdicom
does, so an idle association costs what it costs without the fast path. Waking earlier than a poll would is always
safe: each reactor loop looks at everything again.

A wait that ends at once without the reactor taking anything (a socket that stays readable, say) cannot spin for
long: only a request or a sent PDU renews the window. Off by default (``DICOM_FAST_PATH``): measured with
``python -m bench.ingest --fast-path on,off`` (same runs), it gave less than the 20% it must show (figures in
``dicom_node.scp.node``).
"""

from __future__ import annotations

import logging
import select
import ssl
import threading
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any

__all__ = ["TESTED_VERSIONS", "STOCK_DELAY", "ACTIVE_WINDOW", "event_handlers", "PacedTime", "available", "install",
           "uninstall", "installed", "describe", "associations_paced"]

LOGGER = logging.getLogger(__name__)

TESTED_VERSIONS = frozenset({"3.0.4"})
STOCK_DELAY = 0.001  # pynetdicom's reactor sleep in both reactors (association: literal; DUL: ``_run_loop_delay``)
ACTIVE_WINDOW = 0.05  # seconds after an association's last request or sent PDU during which its reactors wait on news

_PACE = "_m3edge_pace"  # attribute of an association's and its DUL's thread objects: their ``_Pace``
_lock = threading.Lock()
_warned = False
_installed: dict[Any, Any] = {}  # pynetdicom module -> the ``time`` it had before ``install``
_paced = 0  # associations this process has paced


def installed_version() -> str | None:
    try:
        return version("pynetdicom")
    except PackageNotFoundError:
        return None


def available() -> bool:
    """Whether the installed pynetdicom is a version the fast path was tested with (logged once when it is not)."""
    global _warned
    found = installed_version()
    if found in TESTED_VERSIONS:
        return True
    with _lock:
        if not _warned:
            _warned = True
            LOGGER.warning("pynetdicom %s is not a version the DICOM fast path was tested with (%s): the node runs "
                           "stock pynetdicom", found, ", ".join(sorted(TESTED_VERSIONS)))
    return False


def _sleeps_found(association, dul) -> bool:
    """Whether both reactors still sleep the way ``PacedTime`` recognises (a check on top of the version's)."""
    import inspect

    from pynetdicom import AE

    try:
        return ("time.sleep(0.001)" in inspect.getsource(association.Association._run_reactor)
                and "time.sleep(self._run_loop_delay)" in inspect.getsource(dul.DULServiceProvider.run_reactor)
                and association.Association(AE(), "acceptor").dul._run_loop_delay == STOCK_DELAY)
    except (OSError, TypeError, AttributeError):
        return False


def install() -> bool:
    """Pace pynetdicom's reactors (process-wide, idempotent) when its version was tested; False: stock pynetdicom.

    Only associations with ``event_handlers()`` bound are paced; every other sleep goes to ``time.sleep`` unchanged.
    """
    global _warned
    if not available():
        return False
    from pynetdicom import association, dul

    if not _installed and not _sleeps_found(association, dul):
        with _lock:
            if not _warned:
                _warned = True
                LOGGER.warning("pynetdicom %s does not sleep where the DICOM fast path expects: the node runs stock "
                               "pynetdicom", installed_version())
        return False

    with _lock:
        for module in (association, dul):
            if module not in _installed:
                _installed[module] = module.time
                module.time = PacedTime(module.time)
    return True


def uninstall() -> None:
    """Give pynetdicom back its own ``time`` (for tests; a running node keeps working either way)."""
    with _lock:
        for module, original in _installed.items():
            module.time = original
        _installed.clear()


def installed() -> bool:
    """Whether both of pynetdicom's reactor modules see ``PacedTime`` now."""
    from pynetdicom import association, dul

    return all(isinstance(module.time, PacedTime) for module in (association, dul))


def describe(enabled: bool) -> str:
    """How the node runs pynetdicom, for the start-up log line."""
    found = installed_version()
    if not enabled:
        return f"pynetdicom {found} (stock: DICOM_FAST_PATH is off)"
    if found not in TESTED_VERSIONS:
        return f"pynetdicom {found} (stock: the fast path was tested with {', '.join(sorted(TESTED_VERSIONS))})"
    return f"pynetdicom {found} with the fast path"


class _Pace:
    """One association's activity, shared by its two threads (holds no reference to either)."""

    __slots__ = ("active_until", "awaiting_reply")

    def __init__(self) -> None:
        self.active_until = 0.0
        self.awaiting_reply = False


def associations_paced() -> int:
    """How many associations this process has paced so far (their first request marked them)."""
    return _paced


def _pace_of(assoc) -> _Pace:
    global _paced
    pace = getattr(assoc, _PACE, None)
    if pace is None:
        pace = _Pace()
        setattr(assoc.dul, _PACE, pace)
        setattr(assoc, _PACE, pace)
        with _lock:
            _paced += 1
    return pace


def _on_request(event) -> None:
    """EVT_DIMSE_RECV (the DUL's thread): a message is complete; the DUL's next wait is for the reply."""
    pace = _pace_of(event.assoc)
    pace.awaiting_reply = True
    pace.active_until = time.monotonic() + ACTIVE_WINDOW


def _on_pdu_sent(event) -> None:
    """EVT_PDU_SENT (the DUL's thread): what the DUL waits for next is the peer's."""
    pace = _pace_of(event.assoc)
    pace.awaiting_reply = False
    pace.active_until = time.monotonic() + ACTIVE_WINDOW


def event_handlers() -> list[tuple[Any, Any]]:
    """The handlers that mark an association for pacing, for ``AE.make_server(evt_handlers=...)`` (public events)."""
    from pynetdicom import evt

    return [(evt.EVT_DIMSE_RECV, _on_request), (evt.EVT_PDU_SENT, _on_pdu_sent)]


def _wait_for_queue(queue, timeout: float) -> None:
    """Until ``queue`` holds an item, at most ``timeout`` seconds (``queue.Queue``'s own condition; nothing taken)."""
    with queue.not_empty:
        if not queue.queue:
            queue.not_empty.wait(timeout)


def _wait_for_socket(dul, timeout: float, sleep) -> None:
    """Until the DUL's socket has bytes to read, at most ``timeout`` seconds."""
    transport = dul.socket
    raw = getattr(transport, "socket", None)
    if raw is None or not getattr(transport, "_is_connected", False):
        sleep(timeout)
        return
    if isinstance(raw, ssl.SSLSocket) and raw.pending():
        return
    try:
        select.select([raw], [], [], timeout)
    except (OSError, ValueError):  # closed meanwhile: the DUL finds out on its next look
        sleep(timeout)


class PacedTime:
    """What pynetdicom's ``association`` and ``dul`` modules see as ``time``: the ``time`` module, except that a
    reactor sleep of a paced, active association waits on news (see the module's docstring)."""

    def __init__(self, original) -> None:
        self._original = original
        self._sleep = original.sleep
        self._monotonic = original.monotonic

    def __getattr__(self, name: str):
        return getattr(self._original, name)

    def sleep(self, seconds: float) -> None:
        if seconds != STOCK_DELAY:
            self._sleep(seconds)
            return
        thread = threading.current_thread()
        pace = getattr(thread, _PACE, None)
        if pace is None or pace.active_until < self._monotonic():
            self._sleep(seconds)
            return
        dimse = getattr(thread, "dimse", None)
        if dimse is not None:  # the association's reactor: a complete request
            _wait_for_queue(dimse.msg_queue, seconds)
        elif pace.awaiting_reply:  # the DUL, while the association serves: the reply to send
            _wait_for_queue(thread.to_provider_queue, seconds)
        else:  # the DUL, otherwise: the peer's next bytes
            _wait_for_socket(thread, seconds, self._sleep)
