"""Several receiving processes on one port (``DICOM_RECEIVERS`` > 1), so C-STOREs use more than one CPU core.

The parent listens on the port and starts ``count`` child processes; each child runs its own pynetdicom server
accepting on that same listening socket (whichever child is free takes the next association), writes to the same
spool, and sends every instance to the parent's recorder over a pipe, waiting for the commit before answering its
C-STORE. Given a picklable ``recorder_factory``, each child records through its own recorder instead (its own
database connection and group commit: no round trip through the parent per instance, which costs about as much CPU as
the commit itself). Given a picklable ``query_retrieve_factory``, each child builds its own Query/Retrieve SCP (its own
database connections: Q/R only reads, and audits). A child exits when the parent asks or dies.
"""

from __future__ import annotations

import itertools
import logging
import logging.handlers
import multiprocessing
import signal
import socket
import threading
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from dicom_node.network import AllowedCaller
from dicom_node.scp.listener import SharedListener
from dicom_node.intake.recording import InstanceRecorder, ReceivedInstance, RecorderError

__all__ = ["NodeConfig", "TlsConfig", "ReceiverPool", "ReceiverFailed"]

LOGGER = logging.getLogger(__name__)
_REPLY_TIMEOUT = 120.0
_START_TIMEOUT = 120.0


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
    dicom_fastpath: bool = True
    dicom_tls: TlsConfig | None = None
    spool_high_water_percent: float = 95.0
    spool_reserve_bytes: int = 1 << 30
    dicom_receivers: int = 1
    query_retrieve_factory: Callable[[], Any] | None = None  # picklable; each receiving process builds its Q/R SCP
    recorder_factory: Callable[[], InstanceRecorder] | None = None  # picklable; else records go through the parent

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
            dicom_max_inflated_bytes=settings.dicom_max_inflated_bytes, dicom_fastpath=settings.dicom_fastpath,
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
    """The recorder as a receiving process sees it: each call goes to the parent and waits for its answer."""

    def __init__(self, connection, stop: threading.Event) -> None:
        self._connection = connection
        self._stop = stop
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
                    break
                _, call_id, error = message
                pending = self._pending.pop(call_id, None)
                if pending is not None:
                    pending.error = error
                    pending.done.set()
        except (EOFError, OSError):
            pass  # the parent is gone: stop receiving
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


def _receiver_main(config: NodeConfig, connection, log_queue, log_level: int, listener: SharedListener) -> None:
    """Entry point of a receiving process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(log_queue)]
    root.setLevel(log_level)
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, log_level))

    from dicom_node.scp.node import DicomNode
    from dicom_node.intake.spool import SpoolWriter

    stop = threading.Event()
    remote = _RemoteRecorder(connection, stop)  # also how this process learns that it must stop
    recorder = remote
    try:
        if config.recorder_factory is not None:
            recorder = config.recorder_factory()
        node = DicomNode(config, recorder, spool=SpoolWriter(config.spool_dir), listener=listener,
                         prepare_spool=False, query_retrieve_factory=config.query_retrieve_factory)
        node.start()
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails its start()
        connection.send(("failed", -1, f"{exc.__class__.__name__}: {exc}"))
        return
    connection.send(("ready", -1, None))
    stop.wait()
    node.stop()
    if recorder is not remote and hasattr(recorder, "close"):
        recorder.close()


# -- the parent side --------------------------------------------------------------------------------------------------


def _describe(error: BaseException) -> str:
    return f"cannot record in the database: {error.__class__.__name__}"


def _reply(connection, lock: threading.Lock, call_id: int, error: str | None) -> None:
    try:
        with lock:
            connection.send(("reply", call_id, error))
    except (OSError, ValueError):
        pass  # the child is gone; its C-STORE failed with it


class ReceiverPool:
    """``count`` receiving processes sharing ``config.dicom_port``; records go through ``recorder`` in this process."""

    def __init__(self, config: NodeConfig, recorder: InstanceRecorder, count: int) -> None:
        self._config = config
        self._recorder = recorder
        self._count = count
        self._context = multiprocessing.get_context("spawn")
        self._listener: socket.socket | None = None
        self._turn: Any = None
        self._children: list[tuple[Any, Any, threading.Lock]] = []
        self._threads: list[threading.Thread] = []
        self._executor: ThreadPoolExecutor | None = None
        self._log_queue = None
        self._log_thread: threading.Thread | None = None
        self.port = 0

    def _listen(self) -> int:
        """The one listening socket every receiving process accepts on (non-blocking, see _SharedListenerServer)."""
        family = socket.AF_INET6 if ":" in self._config.dicom_host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self._config.dicom_host, self._config.dicom_port))
        listener.listen(128)
        listener.setblocking(False)
        self._listener = listener
        return listener.getsockname()[1]

    def start(self) -> None:
        self.port = self._listen()
        self._turn = self._context.Value("Q", 0)  # whose turn the next association is (see dicom_node.scp.listener)
        # Each process may hold the whole DICOM_MAX_ASSOCIATIONS (a share, limit / count, refused callers while
        # another process sat idle when the connections did not spread evenly).
        limit = self._config.dicom_max_associations
        child_config = replace(self._config, dicom_port=self.port, dicom_receivers=1)
        self._executor = ThreadPoolExecutor(max_workers=limit * self._count + 4, thread_name_prefix="record")
        self._log_queue = self._context.Queue()
        self._log_thread = threading.Thread(target=self._forward_logs, name="receiver-logs", daemon=True)
        self._log_thread.start()
        level = logging.getLogger().getEffectiveLevel()
        for index in range(self._count):
            parent_end, child_end = self._context.Pipe()
            process = self._context.Process(
                target=_receiver_main,
                args=(child_config, child_end, self._log_queue, level,
                      SharedListener(self._listener, self._turn, index, self._count)),
                name=f"m3edge-receiver-{index}", daemon=True,
            )
            process.start()
            child_end.close()
            self._children.append((process, parent_end, threading.Lock()))
        try:
            for process, connection, _ in self._children:
                if not connection.poll(_START_TIMEOUT):
                    raise ReceiverFailed(f"{process.name} did not start within {_START_TIMEOUT:g} s")
                kind, _, detail = connection.recv()
                if kind != "ready":
                    raise ReceiverFailed(f"{process.name} failed to start: {detail}")
        except (ReceiverFailed, EOFError, OSError) as exc:
            self.stop()
            raise ReceiverFailed(str(exc)) from exc
        for process, connection, lock in self._children:
            thread = threading.Thread(target=self._serve, args=(connection, lock), name=f"{process.name}-calls",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, connection, lock: threading.Lock) -> None:
        submit = getattr(self._recorder, "submit", None)
        try:
            while True:
                kind, call_id, payload = connection.recv()
                if submit is not None:  # no thread per waiting C-STORE: the recorder answers when it has committed
                    self._submit(submit, connection, lock, kind, call_id, payload)
                else:
                    self._executor.submit(self._answer, connection, lock, kind, call_id, payload)
        except (EOFError, OSError):
            return

    def _submit(self, submit, connection, lock: threading.Lock, kind: str, call_id: int, payload: Any) -> None:
        def on_done(error: BaseException | None) -> None:
            _reply(connection, lock, call_id, None if error is None else _describe(error))

        try:
            if kind == "record":
                submit(payload, None, on_done)
            else:
                submit(None, payload, on_done)
        except Exception as exc:  # noqa: BLE001 - the child must always get an answer
            LOGGER.exception("recording for a receiving process failed")
            _reply(connection, lock, call_id, f"{exc.__class__.__name__}: {exc}")

    def _answer(self, connection, lock: threading.Lock, kind: str, call_id: int, payload: Any) -> None:
        error = None
        try:
            if kind == "record":
                self._recorder.record(payload)
            else:
                self._recorder.associations_ended(*payload)
        except RecorderError as exc:
            error = str(exc)
        except Exception as exc:  # noqa: BLE001 - the child must always get an answer
            LOGGER.exception("recording for a receiving process failed")
            error = f"{exc.__class__.__name__}: {exc}"
        _reply(connection, lock, call_id, error)

    def _forward_logs(self) -> None:
        while True:
            record = self._log_queue.get()
            if record is None:
                return
            logging.getLogger(record.name).handle(record)

    def stop(self) -> None:
        for process, connection, lock in self._children:
            try:
                with lock:
                    connection.send(("stop",))
            except (OSError, ValueError):
                pass
        for process, connection, _ in self._children:
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
                process.join(timeout=10)
            connection.close()
        self._children.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._log_queue is not None:
            self._log_queue.put(None)
            if self._log_thread is not None:
                self._log_thread.join(timeout=10)
            self._log_queue = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
