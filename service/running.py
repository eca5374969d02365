"""A running service as parts started in order and stopped in reverse (``m3edge serve``, ``m3edge scp``)."""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ServicePart", "RunningService", "ServiceStartError", "run_until_signalled"]

LOGGER = logging.getLogger(__name__)


class ServiceStartError(RuntimeError):
    """A part could not start (a port taken, say); the message says which and what to set."""


@dataclass(frozen=True)
class ServicePart:
    """One part of the running service: how to start it and how to stop it."""

    name: str
    start: Callable[[], object]
    stop: Callable[[], object]


class RunningService:
    """Parts started in order and stopped in reverse; a part that fails to start stops those already running."""

    def __init__(self, parts: list[ServicePart]) -> None:
        self.parts = parts
        self._started: list[ServicePart] = []

    def start(self) -> None:
        try:
            for part in self.parts:
                part.start()
                self._started.append(part)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        started, self._started = self._started, []
        for part in reversed(started):
            try:
                part.stop()
            except Exception:  # keep stopping the others
                LOGGER.exception("stopping the %s failed", part.name)


def run_until_signalled(service: RunningService, on_started: Callable[[], object] = lambda: None) -> None:
    """Start ``service``, call ``on_started``, block until SIGINT or SIGTERM, then stop it (also when starting fails);
    the previous signal handlers are put back."""
    requested: list[int] = []

    def request_stop(signum, _frame) -> None:
        # Only note it: the handler runs in the main thread wherever that is (inside a lock's acquisition, a log
        # call), so taking any lock here (an Event's, logging's) could wait for the main thread itself forever.
        requested.append(signum)

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        service.start()
        on_started()
        while not requested:
            time.sleep(0.2)  # the handler runs between sleeps
        LOGGER.info("%s received: stopping", signal.Signals(requested[0]).name)
    finally:
        service.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
