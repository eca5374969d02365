"""pynetdicom's threaded association server with every accepted connection guarded before pynetdicom reads from it.

Built from pynetdicom's public extension points (``AE.make_server(server_class=...)``, the socketserver hooks
``get_request`` and ``verify_request`` of its ``ThreadedAssociationServer``) and the standard library's socket
classes (``ssl.SSLContext.sslsocket_class``), so it works with stock pynetdicom. Each connection's socket checks
what the peer sends (``dicom_node.scp.pdu_limits``) and keeps three promises:

- **No PDU is read beyond its limit.** A PDU whose declared length breaks a limit, or a data set larger than
  ``DICOM_MAX_INSTANCE_BYTES``, is answered with an A-ABORT and the connection is closed; pynetdicom only sees the
  connection end. Nothing is ever allocated from a length a peer declared (pynetdicom reads 4 KiB at a time).
- **The association request has a deadline.** From the moment a connection is accepted, the peer has
  ``DICOM_ASSOCIATE_TIMEOUT_SECONDS`` to complete its TLS handshake (with TLS) and its A-ASSOCIATE-RQ; a caller that
  stalls is disconnected then. Afterwards a PDU that stops arriving midway ends the association after
  ``network_timeout``. (pynetdicom would block on such a read forever, holding the association's threads.)
- **Unfinished requests are bounded apart from associations, and cannot crowd a real caller out.** At most
  ``max_pending`` connections per process may be between accept and a complete A-ASSOCIATE-RQ; a new connection
  beyond that closes the *oldest* unfinished one (so holding sockets open never keeps a newcomer out: the holder
  would have to open connections faster than real callers complete their requests). They never count against
  ``DICOM_MAX_ASSOCIATIONS``, which the node counts over admitted associations only (``AssociationSlots``).

The TLS handshake runs in the connection's own thread under the deadline (pynetdicom's server does it in its
accepting thread, where one silent client would stop every other from connecting).
"""

from __future__ import annotations

import logging
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from pynetdicom.transport import ThreadedAssociationServer

from dicom_node.scp.pdu_limits import PduLimits, PduRefusal, PduStreamMonitor

__all__ = ["ConnectionLimits", "GuardedAssociationServer", "GuardedSocket", "GuardedSslSocket", "ConnectionGuard"]

LOGGER = logging.getLogger(__name__)
_ABORT_SEND_TIMEOUT = 1.0


@dataclass(frozen=True)
class ConnectionLimits:
    """What one receiving process allows each connection and all of them together."""

    pdu: PduLimits
    associate_timeout: float  # seconds from accept to a complete A-ASSOCIATE-RQ (TLS handshake included)
    network_timeout: float  # seconds a PDU may stall midway once associated
    max_pending: int  # connections that have not yet completed their A-ASSOCIATE-RQ, per process

    def __post_init__(self) -> None:
        if self.associate_timeout <= 0 or self.network_timeout <= 0:
            raise ValueError("associate_timeout and network_timeout must be positive")
        if self.max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, not {self.max_pending}")


class _PendingConnections:
    """The connections of one server that are still asking for an association, oldest first."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._guards: dict[int, ConnectionGuard] = {}  # insertion order: oldest first
        self._lock = threading.Lock()

    def add(self, guard: ConnectionGuard) -> ConnectionGuard | None:
        """Count ``guard``; return the oldest pending connection it displaces (to be closed), if the limit is hit."""
        with self._lock:
            evicted = None
            if len(self._guards) >= self.limit:
                evicted = self._guards.pop(next(iter(self._guards)))
            self._guards[id(guard)] = guard
            return evicted

    def remove(self, guard: ConnectionGuard) -> None:
        with self._lock:
            self._guards.pop(id(guard), None)

    @property
    def count(self) -> int:
        with self._lock:
            return len(self._guards)


class ConnectionGuard:
    """The checks of one connection; its socket calls :meth:`receive` for every read and :meth:`closed` once."""

    def __init__(self, limits: ConnectionLimits, peer: str, pending: _PendingConnections, *, tls: bool) -> None:
        self._limits = limits
        self._monitor = PduStreamMonitor(limits.pdu)
        self._deadline = time.monotonic() + limits.associate_timeout
        self._peer = peer
        self._pending = pending
        self._requested = False
        self._handshake_needed = tls
        self._socket: socket.socket | None = None
        self.refused = False

    def attach(self, sock: socket.socket) -> None:
        """The socket this guard checks; the connection now counts among the pending ones."""
        self._socket = sock
        evicted = self._pending.add(self)
        if evicted is not None:
            evicted.evict(self._pending.limit)

    def evict(self, limit: int) -> None:
        """Close this unfinished connection: a newer one needs its place among the ``limit`` pending ones."""
        sock = self._socket
        if sock is not None and not self.refused:
            self._refuse(sock, None, f"still no A-ASSOCIATE-RQ when {limit} newer connections were waiting to ask")

    def _release_pending_slot(self) -> None:
        self._pending.remove(self)

    def receive(self, sock: socket.socket, read: Callable[[int, int], bytes], bufsize: int, flags: int) -> bytes:
        if self.refused:
            return b""
        if not self._requested:
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                return self._refuse(sock, None, self._late())
            sock.settimeout(remaining)
        try:
            if self._handshake_needed:
                sock.do_handshake()  # type: ignore[attr-defined]
                self._handshake_needed = False
            data = read(bufsize, flags)
        except TimeoutError:
            if not self._requested:
                return self._refuse(sock, None, self._late())
            raise  # a PDU stalled midway: pynetdicom ends the association
        except ssl.SSLError as exc:
            return self._refuse(sock, None, f"TLS failed ({exc.reason or exc.__class__.__name__})")
        refusal = self._monitor.feed(data)
        if refusal is not None:
            return self._refuse(sock, refusal, refusal.message)
        if not self._requested and self._monitor.association_requested:
            self._requested = True
            sock.settimeout(self._limits.network_timeout)
            self._release_pending_slot()
        return data

    def _late(self) -> str:
        return (f"no complete A-ASSOCIATE-RQ within {self._limits.associate_timeout:g} s "
                "(DICOM_ASSOCIATE_TIMEOUT_SECONDS)")

    def _refuse(self, sock: socket.socket, refusal: PduRefusal | None, message: str) -> bytes:
        self.refused = True
        LOGGER.warning("connection from %s closed: %s", self._peer, message)
        if refusal is not None:
            try:
                sock.settimeout(_ABORT_SEND_TIMEOUT)
                sock.sendall(refusal.abort_pdu())
            except OSError:
                pass  # the peer is gone or not reading: closing is all that is left
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._release_pending_slot()
        return b""  # pynetdicom takes it as the connection closing

    def closed(self) -> None:
        self._release_pending_slot()


class _Guarded:
    """``recv`` and ``close`` through the connection's guard (set right after the socket is made)."""

    _guard: ConnectionGuard | None = None

    def recv(self, bufsize: int = 1024, flags: int = 0) -> bytes:
        guard = self._guard
        if guard is None:
            return super().recv(bufsize, flags)  # type: ignore[misc]
        return guard.receive(self, super().recv, bufsize, flags)  # type: ignore[arg-type, misc]

    def close(self) -> None:
        guard = self._guard
        if guard is not None:
            guard.closed()
        super().close()  # type: ignore[misc]


class GuardedSocket(_Guarded, socket.socket):
    """A plain TCP connection whose reads are guarded."""


class GuardedSslSocket(_Guarded, ssl.SSLSocket):
    """A TLS connection whose (decrypted) reads are guarded; made by ``SSLContext.wrap_socket``."""


class GuardedAssociationServer(ThreadedAssociationServer):
    """``ThreadedAssociationServer`` whose connections are guarded (see the module's docstring).

    Made by ``AE.make_server(..., server_class=GuardedAssociationServer, limits=ConnectionLimits(...))``.
    """

    def __init__(self, *args, limits: ConnectionLimits, **kwargs) -> None:
        self.limits = limits
        self._pending = _PendingConnections(limits.max_pending)
        super().__init__(*args, **kwargs)
        if self.ssl_context is not None:
            self.ssl_context.sslsocket_class = GuardedSslSocket

    @property
    def pending_connections(self) -> int:
        return self._pending.count

    def accept_connection(self) -> tuple[socket.socket, tuple]:
        """The next connection on the listening socket (a subclass may accept elsewhere)."""
        return self.socket.accept()

    def get_request(self) -> tuple[socket.socket, tuple]:
        accepted, address = self.accept_connection()
        try:  # responses go out at once (a PDU's last segment would wait for the peer's delayed ACK otherwise)
            accepted.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # not TCP
        plain = GuardedSocket(accepted.family, accepted.type, accepted.proto, fileno=accepted.detach())
        guard = ConnectionGuard(self.limits, str(address[0]), self._pending, tls=self.ssl_context is not None)
        if self.ssl_context is None:
            plain._guard = guard
            return plain, address
        wrapped = self.ssl_context.wrap_socket(plain, server_side=True, do_handshake_on_connect=False)
        wrapped._guard = guard
        return wrapped, address

    def verify_request(self, request, client_address) -> bool:
        guard = getattr(request, "_guard", None)
        if guard is not None:
            guard.attach(request)
        return True

    def shutdown(self) -> None:
        """Stop accepting and close the listening socket. (pynetdicom's ``shutdown`` also takes the server off the
        list its AE keeps of servers it started itself, where a server from ``make_server`` never is.)"""
        socketserver.BaseServer.shutdown(self)
        self.server_close()
