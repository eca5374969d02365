"""The parent of the receiving processes (``DICOM_RECEIVERS`` > 1): it listens, starts them, files and records what
they journal, and restarts any that dies.

Filing: each receiving process ships what it journaled (``dicom_node.intake.journal``: segment, offset, record) and
this process's :class:`~dicom_node.intake.journal.JournalFiler` makes the files, names and rows, then answers; the
child deletes a segment once all of it is filed. What a dead child journaled and never saw filed is replayed here
(its segments are no longer locked), as is whatever a stopped node left, before the first child starts.

Supervision: one thread, the supervisor, starts every receiving process (so the process that ``PR_SET_PDEATHSIG``
ties each one to is a thread that lives as long as the pool) and waits on their sentinels. A process that dies is
logged (ERROR, with its exit status or signal), counted (``deaths``, published in the node's status and exported as
``m3edge_dicom_receiver_deaths_total``) and started again after a back-off: 1 s, doubling up to ``MAX_BACKOFF`` for a
process that keeps dying, back to 1 s once one has run ``STABLE_AFTER`` seconds. While none is ready, the node is
not ready (``dicom_node.scp.status``). The platform's own supervision (systemd, compose's ``restart:``) restarts the
whole node when its main process dies; this supervisor covers what the platform cannot see, a child dying inside a
running node.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from dicom_node.intake.journal import JournalFiler
from dicom_node.intake.recording import InstanceRecorder, RecorderError
from dicom_node.scp.listener import SharedListener
from dicom_node.scp.receivers import NodeConfig, ReceiverFailed, receiver_main

__all__ = ["ReceiverPool", "MAX_BACKOFF", "STABLE_AFTER"]

LOGGER = logging.getLogger(__name__)
_START_TIMEOUT = 120.0
MAX_BACKOFF = 30.0
STABLE_AFTER = 60.0
_FIRST_BACKOFF = 1.0


def _describe(error: BaseException) -> str:
    return f"cannot record in the database: {error.__class__.__name__}"


def _reply(connection, lock: threading.Lock, call_id: int, error: str | None) -> None:
    try:
        with lock:
            connection.send(("reply", call_id, error))
    except (OSError, ValueError):
        pass  # the child is gone; its C-STORE failed with it


def _exit_text(code: int | None) -> str:
    if code is None:
        return "an unknown status"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit status {code}"


@dataclass
class _Receiver:
    """One receiving process slot: the process in it now (None between a death and its restart)."""

    index: int
    process: Any = None
    connection: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    ready: bool = False
    ready_since: float = 0.0
    failures: int = 0  # consecutive deaths without a stable run
    restart_at: float | None = None

    @property
    def name(self) -> str:
        return f"m3edge-receiver-{self.index}"


class ReceiverPool:
    """``count`` receiving processes sharing ``config.dicom_port``; what they journal is filed by ``filer`` and recorded
    through ``recorder`` in this process. ``on_change`` is called whenever one dies or becomes ready."""

    def __init__(self, config: NodeConfig, recorder: InstanceRecorder, count: int,
                 on_change: Callable[[], None] | None = None, *, filer: JournalFiler) -> None:
        self._config = config
        self._recorder = recorder
        self._filer = filer
        self._count = count
        self._on_change = on_change or (lambda: None)
        self._context = multiprocessing.get_context("spawn")
        self._listener: socket.socket | None = None
        self._turn: Any = None
        self._receivers = [_Receiver(index) for index in range(count)]
        self._executor: ThreadPoolExecutor | None = None
        self._log_queue = None
        self._log_thread: threading.Thread | None = None
        self._supervisor: threading.Thread | None = None
        self._replay_thread: threading.Thread | None = None
        self._replay_wanted: str | None = None
        self._requests: list[tuple[Callable[[], Any], Future]] = []
        self._wake_reader, self._wake_writer = multiprocessing.Pipe(duplex=False)
        self._lock = threading.Lock()
        self._stopping = False
        self.deaths = 0
        self.restarts = 0
        self.port = 0

    # -- health -------------------------------------------------------------------------------------------------

    @property
    def count(self) -> int:
        return self._count

    @property
    def ready(self) -> int:
        with self._lock:
            return sum(1 for r in self._receivers if r.ready)

    def pids(self) -> list[int]:
        """The process ids of the receiving processes alive now (tests kill them)."""
        with self._lock:
            return [r.process.pid for r in self._receivers if r.process is not None and r.process.is_alive()]

    # -- start and stop -----------------------------------------------------------------------------------------

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
        self._filer.prepare()
        replayed = self._filer.replay_orphans()  # what a stopped node left, before anyone journals again
        if replayed:
            LOGGER.info("filed %d instance(s) a stopped node had journaled", replayed)
        self.port = self._listen()
        self._turn = self._context.Value("Q", 0)  # whose turn the next association is (see dicom_node.scp.listener)
        # Each process may hold the whole DICOM_MAX_ASSOCIATIONS (a share, limit / count, refused callers while
        # another process sat idle when the connections did not spread evenly).
        self._executor = ThreadPoolExecutor(max_workers=self._config.dicom_max_associations * self._count + 4,
                                            thread_name_prefix="record")
        self._log_queue = self._context.Queue()
        self._log_thread = threading.Thread(target=self._forward_logs, name="receiver-logs", daemon=True)
        self._log_thread.start()
        self._supervisor = threading.Thread(target=self._supervise, name="receiver-supervisor", daemon=True)
        self._supervisor.start()
        try:
            for receiver in self._receivers:
                self._in_supervisor(lambda r=receiver: self._spawn(r)).result()
            for receiver in self._receivers:
                self._await_ready(receiver)
        except (ReceiverFailed, EOFError, OSError) as exc:
            self.stop()
            raise ReceiverFailed(str(exc)) from exc

    def _in_supervisor(self, call: Callable[[], Any]) -> Future:
        future: Future = Future()
        with self._lock:
            self._requests.append((call, future))
        self._wake_writer.send(b"")
        return future

    def _spawn(self, receiver: _Receiver) -> None:
        """Start the process of ``receiver`` (in the supervisor thread: see the module's docstring)."""
        parent_end, child_end = self._context.Pipe()
        child_config = replace(self._config, dicom_port=self.port, dicom_receivers=1, dicom_status_file=None)
        level = logging.getLogger().getEffectiveLevel()
        process = self._context.Process(
            target=receiver_main,
            args=(child_config, child_end, self._log_queue, level,
                  SharedListener(self._listener, self._turn, receiver.index, self._count), os.getpid()),
            name=receiver.name, daemon=True,
        )
        process.start()
        child_end.close()
        with self._lock:
            receiver.process, receiver.connection, receiver.ready = process, parent_end, False
            receiver.restart_at = None

    def _await_ready(self, receiver: _Receiver) -> None:
        """Wait for ``receiver``'s "ready"; then serve its recording calls. Raises ReceiverFailed."""
        process, connection = receiver.process, receiver.connection
        if not connection.poll(_START_TIMEOUT):
            raise ReceiverFailed(f"{receiver.name} did not start within {_START_TIMEOUT:g} s")
        kind, _, detail = connection.recv()
        if kind != "ready":
            raise ReceiverFailed(f"{receiver.name} failed to start: {detail}")
        with self._lock:
            if receiver.process is not process:
                return
            receiver.ready, receiver.ready_since = True, time.monotonic()
        threading.Thread(target=self._serve, args=(connection, receiver.lock), name=f"{receiver.name}-calls",
                         daemon=True).start()
        self._on_change()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
        try:
            self._wake_writer.send(b"")
        except OSError:
            pass
        if self._supervisor is not None:
            self._supervisor.join(timeout=30)
        for receiver in self._receivers:
            if receiver.connection is None:
                continue
            try:
                with receiver.lock:
                    receiver.connection.send(("stop",))
            except (OSError, ValueError):
                pass
        for receiver in self._receivers:
            process = receiver.process
            if process is not None:
                process.join(timeout=30)
                if process.is_alive():
                    process.terminate()
                    process.join(timeout=10)
            if receiver.connection is not None:
                receiver.connection.close()
            receiver.process, receiver.connection, receiver.ready = None, None, False
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self._replay("after the receiving processes stopped", retry=False)  # one killed while stopping left some
        if self._log_queue is not None:
            self._log_queue.put(None)
            if self._log_thread is not None:
                self._log_thread.join(timeout=10)
            self._log_queue = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    # -- supervision --------------------------------------------------------------------------------------------

    def _supervise(self) -> None:
        while True:
            with self._lock:
                if self._stopping:
                    return
                requests, self._requests = self._requests, []
                watched = {r.process.sentinel: r for r in self._receivers if r.process is not None}
                due = [r.restart_at for r in self._receivers if r.restart_at is not None]
            for call, future in requests:
                try:
                    future.set_result(call())
                except BaseException as exc:  # noqa: BLE001 - handed to the caller waiting on the future
                    future.set_exception(exc)
            timeout = max(0.0, min(due) - time.monotonic()) if due else None
            ready = multiprocessing.connection.wait([*watched, self._wake_reader], timeout=timeout)
            if self._wake_reader in ready:
                while self._wake_reader.poll():
                    self._wake_reader.recv_bytes()
            for sentinel in ready:
                if sentinel in watched:
                    self._died(watched[sentinel])
            self._restart_due()

    def _died(self, receiver: _Receiver) -> None:
        with self._lock:
            if self._stopping:
                return
            process, receiver.process, receiver.ready = receiver.process, None, False
            stable = receiver.ready_since and time.monotonic() - receiver.ready_since >= STABLE_AFTER
            receiver.failures = 1 if stable else receiver.failures + 1
            delay = min(MAX_BACKOFF, _FIRST_BACKOFF * 2 ** (receiver.failures - 1))
            receiver.restart_at = time.monotonic() + delay
            receiver.ready_since = 0.0
            self.deaths += 1
            deaths = self.deaths
        process.join(timeout=1)
        if receiver.connection is not None:
            receiver.connection.close()
            receiver.connection = None
        LOGGER.error("receiving process %s (pid %s) died with %s; starting it again in %g s (%d death(s) since "
                     "the node started)", receiver.name, process.pid, _exit_text(process.exitcode), delay, deaths)
        # what it journaled and never saw filed (its segments are unlocked now): filed here, beside the supervision
        self._request_replay(f"after {receiver.name} died")
        self._on_change()

    def _request_replay(self, when: str) -> None:
        """One replaying thread at a time (a process dying again and again while the database is away must not
        pile them up); a request made while it runs makes it look again."""
        with self._lock:
            self._replay_wanted = when
            if self._replay_thread is not None:
                return
            self._replay_thread = threading.Thread(target=self._replay_while_wanted, name="receiver-replay",
                                                   daemon=True)
            self._replay_thread.start()

    def _replay_while_wanted(self) -> None:
        while True:
            with self._lock:
                when, self._replay_wanted = self._replay_wanted, None
                if when is None:
                    self._replay_thread = None
                    return
            self._replay(when)

    def _replay(self, when: str, *, retry: bool = True) -> None:
        """File the segments no live process holds; ``retry``: until it can (the journal keeps them meanwhile), else
        once (stopping: what is left is filed by the next start)."""
        while True:
            try:
                replayed = self._filer.replay_orphans()
                break
            except (OSError, RecorderError) as exc:
                LOGGER.error("cannot file the journal segments left %s%s (%s: %s)", when,
                             "; trying again in 1 s" if retry else "; the next start will", exc.__class__.__name__,
                             exc)
                if not retry:
                    return
                time.sleep(1.0)
        if replayed:
            LOGGER.warning("filed %d instance(s) journaled by a receiving process %s", replayed, when)

    def _restart_due(self) -> None:
        now = time.monotonic()
        for receiver in self._receivers:
            with self._lock:
                if self._stopping or receiver.restart_at is None or receiver.restart_at > now:
                    continue
            try:
                self._spawn(receiver)
            except OSError as exc:
                LOGGER.error("cannot start %s again: %s", receiver.name, exc)
                with self._lock:
                    receiver.restart_at = now + MAX_BACKOFF
                continue
            with self._lock:
                self.restarts += 1
            threading.Thread(target=self._ready_after_restart, args=(receiver, receiver.process),
                             name=f"{receiver.name}-start", daemon=True).start()

    def _ready_after_restart(self, receiver: _Receiver, process) -> None:
        try:
            self._await_ready(receiver)
            LOGGER.info("receiving process %s (pid %s) is accepting again", receiver.name, process.pid)
        except (ReceiverFailed, EOFError, OSError) as exc:
            LOGGER.error("%s did not come back: %s", receiver.name, exc)
            if process.is_alive():
                process.kill()  # the supervisor sees it die and tries again after the back-off

    # -- recording for the children -----------------------------------------------------------------------------

    def _serve(self, connection, lock: threading.Lock) -> None:
        submit = getattr(self._recorder, "submit", None)
        try:
            while True:
                kind, call_id, payload = connection.recv()
                if kind == "file" and self._executor is not None:
                    self._executor.submit(self._file, connection, lock, call_id, payload)
                elif submit is not None:  # no thread per waiting C-STORE: the recorder answers when it has committed
                    self._submit(submit, connection, lock, kind, call_id, payload)
                elif self._executor is not None:
                    self._executor.submit(self._answer, connection, lock, kind, call_id, payload)
        except (EOFError, OSError, RuntimeError):  # RuntimeError: the executor was shut down
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

    def _file(self, connection, lock: threading.Lock, call_id: int, items: list) -> None:
        error = None
        try:
            self._filer.file_shipped(items)
        except (OSError, RecorderError) as exc:  # the child ships them again after a pause
            error = f"{exc.__class__.__name__}: {exc}"
        except Exception as exc:  # noqa: BLE001 - the child must always get an answer
            LOGGER.exception("filing for a receiving process failed")
            error = f"{exc.__class__.__name__}: {exc}"
        _reply(connection, lock, call_id, error)

    def _forward_logs(self) -> None:
        while True:
            record = self._log_queue.get()
            if record is None:
                return
            logging.getLogger(record.name).handle(record)
