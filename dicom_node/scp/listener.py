"""One listening socket shared by the receiving processes, which take the associations in turn.

With ``DICOM_RECEIVERS`` > 1 the parent listens and every receiving process accepts on that socket (non-blocking:
a process that loses the race for a connection just goes back to waiting). Left alone, the process that happens to
be awake takes most of a burst of associations (measured: 5 or 6 of 8), and the other sits idle while it is the
bottleneck; an SO_REUSEPORT port spread them by a hash of the caller's address, no better. So they take turns: a
shared counter says whose turn the next association is; a process whose turn it is not leaves the connection for
``TURN_WAIT`` seconds at most (then takes it anyway, so a stuck process never blocks the port).
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import Any

from dicom_node.scp.guarded_server import GuardedAssociationServer

__all__ = ["SharedListener", "shared_listener_server", "TURN_WAIT"]

TURN_WAIT = 0.05  # seconds a pending connection is left for the process whose turn it is
_NAP = 0.001


@dataclass
class SharedListener:
    """The parent's listening socket, the shared turn counter (a multiprocessing Value), and this process's place."""

    socket: socket.socket
    turn: Any
    index: int
    count: int


class _SharedListenerServer(GuardedAssociationServer):
    """An association server accepting, in turn with the other receiving processes, on ``shared.socket``."""

    shared: SharedListener
    _waiting_since: float | None = None

    def server_bind(self) -> None:
        self.socket.close()
        self.socket = self.shared.socket
        self.server_address = self.shared.socket.getsockname()

    def server_activate(self) -> None:
        pass  # the parent listens already

    def accept_connection(self):
        shared = self.shared
        with shared.turn.get_lock():
            mine = shared.turn.value % shared.count == shared.index
        if not mine:
            now = time.monotonic()
            if self._waiting_since is None:
                self._waiting_since = now
            if now - self._waiting_since < TURN_WAIT:
                time.sleep(_NAP)  # the socket stays readable: without a nap this would spin
                raise BlockingIOError("another receiving process's turn")  # socketserver skips this round
        request = super().accept_connection()  # BlockingIOError when another process took the connection first
        self._waiting_since = None
        with shared.turn.get_lock():
            shared.turn.value += 1
        return request


def shared_listener_server(shared: SharedListener) -> type[GuardedAssociationServer]:
    """A server class for ``AE.make_server(server_class=...)`` bound to ``shared``."""
    return type("SharedListenerServer", (_SharedListenerServer,), {"shared": shared})
