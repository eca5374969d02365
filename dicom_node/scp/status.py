"""Whether the DICOM node can accept associations, published in a small file for whoever asks in any process.

The node rewrites ``HOME/run/dicom-node.json`` every ``HEARTBEAT_SECONDS`` and whenever a receiving process dies or
is back: its pid, how many receiving processes it runs, how many are ready and their pids, and how many died and were
restarted since it started. ``/readyz``, ``m3edge doctor``, the Prometheus metrics and the container's health check read it
(the API may run in another process or container, beside the same HOME). A file not rewritten for
``STALE_AFTER_SECONDS`` means the node's process is gone (killed, stuck): not ready. A clean stop removes the file.
No patient data is in it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from dicom_node.private_files import write_atomically

__all__ = ["NodeStatus", "NodeStatusFile", "StatusPublisher", "HEARTBEAT_SECONDS", "STALE_AFTER_SECONDS"]

HEARTBEAT_SECONDS = 2.0
STALE_AFTER_SECONDS = 10.0


@dataclass(frozen=True)
class NodeStatus:
    pid: int
    updated_at: float  # seconds since the epoch
    receivers: int  # receiving processes configured (1: the node's own process)
    receivers_ready: int  # of them, accepting now
    receiver_deaths: int = 0  # receiving processes that died since the node started
    receiver_restarts: int = 0
    receiver_pids: tuple[int, ...] = ()  # the receiving processes alive now (the node's own pid when in-process)

    @property
    def accepting(self) -> bool:
        return self.receivers_ready > 0

    def fresh(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) - self.updated_at <= STALE_AFTER_SECONDS

    def problem(self, now: float | None = None) -> str | None:
        """None while the node accepts, else a sentence an operator can act on."""
        if not self.fresh(now):
            return (f"the DICOM node (pid {self.pid}) has not reported for more than {STALE_AFTER_SECONDS:g} s: "
                    "its process is gone or stuck; restart 'm3edge scp' or 'm3edge serve'")
        if not self.accepting:
            return (f"none of the {self.receivers} receiving process(es) is accepting associations "
                    f"({self.receiver_deaths} died; restarts with back-off are under way, see the node's log)")
        return None

    def describe(self) -> str:
        text = f"{self.receivers_ready} of {self.receivers} receiving process(es) accepting"
        if self.receiver_deaths:
            text += f"; {self.receiver_deaths} died and {self.receiver_restarts} restarted since start"
        return text


class NodeStatusFile:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def write(self, status: NodeStatus) -> None:
        """Replace the file atomically (no fsync: it describes a live process, and is rewritten every heartbeat)."""
        with write_atomically(self.path, text=True, durable=False) as handle:
            handle.write(json.dumps(asdict(status)))

    def read(self) -> NodeStatus | None:
        """The last status published, or None when no node publishes here (never started, or stopped cleanly)."""
        try:
            values = json.loads(self.path.read_text())
            fields = {name: values[name] for name in NodeStatus.__dataclass_fields__}
            return NodeStatus(**{**fields, "receiver_pids": tuple(fields["receiver_pids"])})
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            return NodeStatus(pid=0, updated_at=0.0, receivers=0, receivers_ready=0)  # unreadable: stale

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


class StatusPublisher:
    """Writes the node's status every heartbeat and at once on :meth:`changed`, from a thread of its own."""

    def __init__(self, file: NodeStatusFile, current: Callable[[], NodeStatus]) -> None:
        self._file = file
        self._current = current
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._publish()
        self._thread = threading.Thread(target=self._run, name="dicom-node-status", daemon=True)
        self._thread.start()

    def changed(self) -> None:
        self._wake.set()

    def _publish(self) -> None:
        try:
            self._file.write(self._current())
        except OSError:
            pass  # readiness then goes stale, which is what it should say about a node that cannot write HOME

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(HEARTBEAT_SECONDS)
            self._wake.clear()
            if not self._stop.is_set():
                self._publish()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._file.remove()
