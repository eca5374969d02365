"""The receiving processes of ``DICOM_RECEIVERS`` > 1: their configuration and their side of the pipe to the parent.

The parent (``dicom_node.scp.receiver_pool``) listens on the port and starts ``count`` child processes, restarting
any that dies; each child runs its own pynetdicom server accepting on that same listening socket (whichever child is
free takes the next association) and journals what it receives in its own segments of the spool's journal (each
C-STORE answered once its bytes and record are synced: ``dicom_node.intake.journal``). The child files nothing: it
ships each batch of what it journaled (segment, offset, record) over a pipe to the parent, whose
:class:`~dicom_node.intake.journal.JournalFiler` makes the files, names and rows, and deletes a segment once the
parent has filed all of it. So a child's interpreter is spent on receiving alone: one association of a 400-slice CT
went at 68-70 MB/s with the filing and recording in the receiving process and at 83-85 MB/s with none there (same run,
this machine; two rounds each). Given
a picklable ``query_retrieve_factory``, each child builds its own Query/Retrieve SCP (its own database connections:
Q/R only reads, and audits). A child exits when the parent asks, and when the parent dies (``PR_SET_PDEATHSIG``: the
kernel signals it; the pipe's end is the second way to notice); what it journaled and did not see filed is then
replayed by the parent (a child that died) or by the next start (the parent gone).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import logging.handlers
import os
import signal
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from dicom_node.network import AllowedCaller
from dicom_node.parent_process import signal_when_parent_dies
from dicom_node.scp.listener import SharedListener
from dicom_node.intake.journal import FilingProcessGone, ShippedItem
from dicom_node.intake.spool import SpoolWriter
from dicom_node.intake.recording import ReceivedInstance, RecorderError

__all__ = ["NodeConfig", "TlsConfig", "ReceiverFailed", "receiver_main"]

LOGGER = logging.getLogger(__name__)
_REPLY_TIMEOUT = 120.0


class ReceiverFailed(RuntimeError):
    """A receiving process did not start (its log lines say why)."""


@dataclass(frozen=True)
class TlsConfig:
    certificate: Path
    private_key: Path
    ca_certificates: Path | None = None
    require_client_certificate: bool = False


@dataclass(frozen=True)
class NodeConfig:
    """A picklable snapshot of the node's settings (same attribute names), handed to each receiving process."""

    dicom_ae_title: str
    dicom_host: str
    dicom_port: int
    spool_dir: Path
    dicom_allowed_aes: tuple[AllowedCaller, ...] = ()
    dicom_require_called_ae: bool = True
    dicom_max_associations: int = 16
    dicom_max_pdu_size: int = 1_048_576
    dicom_associate_timeout_seconds: float = 5.0
    dicom_max_instance_bytes: int = 1 << 30
    dicom_max_inflated_bytes: int = 512 << 20
    dicom_fast_path: bool = False
    dicom_status_file: Path | None = None  # where the parent publishes the node's status (children never write it)
    dicom_tls: TlsConfig | None = None
    spool_high_water_percent: float = 95.0
    spool_reserve_bytes: int = 1 << 30
    dicom_receivers: int = 1
    query_retrieve_factory: Callable[[], Any] | None = None  # picklable; each receiving process builds its Q/R SCP
    node_factory: Callable[..., Any] | None = None  # picklable (a class): the node each receiving process runs

    @classmethod
    def from_settings(cls, settings: Any) -> NodeConfig:
        tls = settings.dicom_tls
        return cls(
            dicom_ae_title=settings.dicom_ae_title, dicom_host=settings.dicom_host, dicom_port=settings.dicom_port,
            spool_dir=Path(settings.spool_dir), dicom_allowed_aes=tuple(settings.dicom_allowed_aes),
            dicom_require_called_ae=settings.dicom_require_called_ae,
            dicom_max_associations=settings.dicom_max_associations, dicom_max_pdu_size=settings.dicom_max_pdu_size,
            dicom_associate_timeout_seconds=settings.dicom_associate_timeout_seconds,
            dicom_max_instance_bytes=settings.dicom_max_instance_bytes,
            dicom_max_inflated_bytes=settings.dicom_max_inflated_bytes,
            dicom_fast_path=getattr(settings, "dicom_fast_path", False),
            dicom_status_file=getattr(settings, "dicom_status_file", None),
            dicom_tls=None if tls is None else TlsConfig(
                Path(tls.certificate), Path(tls.private_key),
                Path(tls.ca_certificates) if tls.ca_certificates else None, bool(tls.require_client_certificate),
            ),
            spool_high_water_percent=settings.spool_high_water_percent,
            spool_reserve_bytes=settings.spool_reserve_bytes,
            dicom_receivers=getattr(settings, "dicom_receivers", 1),
        )


# -- the child side ---------------------------------------------------------------------------------------------------


@dataclass
class _Pending:
    done: threading.Event = field(default_factory=threading.Event)
    error: str | None = None


class _RemoteRecorder:
    """The recorder and the filing process as a receiving process sees them: each call goes to the parent and waits
    for its answer."""

    def __init__(self, connection, stop: threading.Event) -> None:
        self._connection = connection
        self._stop = stop
        self.gone = False  # the parent's end of the pipe is closed
        self._send_lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count()
        self._reader = threading.Thread(target=self._read, name="receiver-replies", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            while True:
                message = self._connection.recv()
                if message[0] == "stop":
                    # keep reading: stopping files what the journal still holds, and each of those rows waits
                    # for its answer from the parent (which serves this connection until this process has exited)
                    self._stop.set()
                    continue
                _, call_id, error = message
                pending = self._pending.pop(call_id, None)
                if pending is not None:
                    pending.error = error
                    pending.done.set()
        except (EOFError, OSError):
            pass  # the parent is gone: stop receiving
        self.gone = True
        self._stop.set()
        for pending in list(self._pending.values()):
            pending.error = "the recording process went away"
            pending.done.set()

    def _send(self, kind: str, payload: object) -> tuple[int, _Pending]:
        call_id = next(self._ids)
        pending = self._pending[call_id] = _Pending()
        try:
            with self._send_lock:
                self._connection.send((kind, call_id, payload))
        except (OSError, ValueError) as exc:
            self._pending.pop(call_id, None)
            raise RecorderError(f"cannot reach the recording process: {exc}") from exc
        return call_id, pending

    def _wait(self, call_id: int, pending: _Pending) -> None:
        if not pending.done.wait(_REPLY_TIMEOUT):
            self._pending.pop(call_id, None)
            raise RecorderError(f"the recording process did not answer within {_REPLY_TIMEOUT:g} s")
        if pending.error is not None:
            raise RecorderError(pending.error)

    def record(self, instance: ReceivedInstance) -> None:
        self._wait(*self._send("record", instance))

    def begin_record(self, instance: ReceivedInstance) -> Callable[[], None]:
        """Send ``instance`` to the parent at once; calling the result waits for its commit."""
        call = self._send("record", instance)
        return lambda: self._wait(*call)

    def associations_ended(self, study_uids: Collection[str], ended_at: datetime) -> None:
        self._wait(*self._send("ended", (tuple(study_uids), ended_at)))

    def file(self, items: list[ShippedItem]) -> None:
        """:class:`~dicom_node.intake.journal.FilingProcess`: the parent files ``items`` and answers."""
        if self.gone:
            raise FilingProcessGone("the node's process is gone")
        try:
            self._wait(*self._send("file", items))
        except RecorderError:
            if self.gone:
                raise FilingProcessGone("the node's process is gone") from None
            raise


def receiver_main(config: NodeConfig, connection, log_queue, log_level: int, listener: SharedListener,
                  parent_pid: int) -> None:
    """Entry point of a receiving process."""
    if not signal_when_parent_dies(parent_pid):  # SIGTERM once the parent's spawning thread ends
        os._exit(0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(log_queue)]
    root.setLevel(log_level)
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, log_level))

    from dicom_node.scp.node import receiving_process_settings

    receiving_process_settings()

    stop = threading.Event()
    # SIGTERM (the parent stopping, or dying: PR_SET_PDEATHSIG) stops the node the orderly way, so that what its
    # journal holds is filed before the process exits (else the next start replays it). The handler only notes it:
    # it runs in the main thread wherever that is, possibly inside ``stop.wait()`` holding the event's lock, where a
    # ``stop.set()`` would wait for itself forever (seen: a parent's death brings the pipe's end and SIGTERM at once).
    signalled: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: signalled.append(signum))
    remote = _RemoteRecorder(connection, stop)  # also how this process learns that it must stop
    try:
        child = dataclasses.replace(config, dicom_status_file=None)
        node = config.node_factory(child, remote, spool=SpoolWriter(config.spool_dir), listener=listener,
                                   prepare_spool=False, query_retrieve_factory=config.query_retrieve_factory,
                                   filing_process=remote)
        node.start()
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails (or retries) its start
        connection.send(("failed", -1, f"{exc.__class__.__name__}: {exc}"))
        return
    connection.send(("ready", -1, None))
    while not (signalled or stop.wait(0.2)):
        pass
    node.stop()
