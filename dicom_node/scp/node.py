"""``DicomNode``: the Verification and Storage SCP that PACS send studies to (plus Query/Retrieve, when given).

Built on pynetdicom's public API: an ``AE`` with its supported contexts and timeouts, event handlers, the
documented ``pynetdicom._config`` settings, and ``AE.make_server`` with our ``GuardedAssociationServer``
(``dicom_node.scp.guarded_server``). With ``DICOM_FAST_PATH`` on, and only on the pynetdicom version it was tested
with, ``dicom_node.scp.fastpath`` (the one module that touches pynetdicom's internals) makes the reactors of a busy
association wake when a request, a reply or the peer's next bytes are there instead of polling every 1 ms.

It is off by default: measured on and off in the same ``python -m bench.ingest --fast-path on,off`` runs (issue 17;
2-core machine shared with other work; 201 MB of CT, DICOM_RECEIVERS=2; each figure the median of the rounds' on/off
ratios, range in brackets), one association gained 1.18 (5 rounds, 0.94-1.30) before the metadata keeper, then
1.10 (5 rounds, 0.93-1.13) and 1.06 (7 rounds, 0.96-1.47), and with receiving processes that only receive 1.24
(5 rounds, 0.83-1.49; 68.9 against 60.8 MB/s) and 1.14 (9 rounds, 0.90-1.33; 94.2 against 82.5 MB/s): the 14
rounds on the current code give a median of 1.19, at best on the edge of the 20% a reach into a library's internals
must show, within this machine's noise. Once the machine was quiet (no other work; 5 rounds, with Orthanc and
storescp rotated in): 1.18 (1.02-1.39; 96.9 against 76.8 MB/s, Orthanc 90.7), 8 senders 0.99 (0.81-1.12), the
one-instance association 0.80 (0.72-1.20); again 1.17 (1.13-1.30; 115.2 against 93.6 MB/s, Orthanc 116.4), 8 senders
1.00; m3edge alone, 9 rounds: 1.19 (1.11-1.25; 115.8 against 97.8 MB/s). Consistently just short of 20%. With 8 senders it gave nothing: 0.97, 0.89, 0.85 (0.82-1.22), then 1.03
(0.77-1.45) (concurrent associations keep the process busy anyway, and their prompt wake-ups compete for its GIL).

An idle association costs about what it costs stock: its reactors go back to pynetdicom's 1 ms sleeps 50 ms after
its last request or reply, and each sleep's check adds 1-3 us to the ~25 us of CPU a 1 ms sleep costs. ``m3edge
scp`` (one receiving process) holding one association idle after a C-STORE used 5.8% of a core over 5 s with the
fast path, 5.6% without (medians of 5 alternating rounds; ranges 4.4-7.4% and 4.6-7.4%; an earlier 3 rounds: 6.8%
and 6.2%).

Earlier fast paths (an event-driven request handler replacing pynetdicom's, DIMSE shortcuts, memoised UID checks,
shared contexts, whole-PDU reads) were measured the same way and removed: none gave 20% (8 senders: 45/39/52 MB/s
with the event-driven reactor, 64/72/65 MB/s stock; one association: 21.5 vs 24.5, 9.2 vs 16.2, 24.0 vs 22.1 MB/s).
With the journal's fdatasync taken out, one association ran 49.1/52.7 against 50.4/54.4 MB/s with it: the sync is not
the limit. py-spy (``--gil``) showed the process holding the GIL about 1 s of a 5 s transfer on that 2-core machine
under a load of 5-8: waiting for a CPU between pynetdicom's thread hand-offs is where the time goes.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from pydicom import uid as _uid
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import Verification

from dicom_node.intake import DiskAdmission, Intake, IntakeLimits, InstanceRecorder, SpoolWriter
from dicom_node.intake.journal import FilingProcess, JournalStore
from dicom_node.network import AllowedCaller
from dicom_node.qr import QueryRetrieveScp
from dicom_node.scp import fastpath
from dicom_node.scp.access import AccessPolicy
from dicom_node.scp.guarded_server import ConnectionLimits, GuardedAssociationServer
from dicom_node.scp.handlers import OpenSessions, handle_association_end, handle_echo, handle_store, utc_now
from dicom_node.scp.listener import SharedListener, shared_listener_server
from dicom_node.scp.pdu_limits import PduLimits
from dicom_node.scp.receiver_pool import ReceiverPool
from dicom_node.scp.receivers import NodeConfig
from dicom_node.scp.slots import AssociationSlots
from dicom_node.scp.status import NodeStatus, NodeStatusFile, StatusPublisher
from dicom_node.scp.storage_classes import register_retired_storage_classes, storage_sop_classes

__all__ = ["DicomNode", "NodeSettings", "NodeNotRunning", "ACCEPTED_TRANSFER_SYNTAXES", "LOCAL_LIMIT_EXCEEDED",
           "receiving_process_settings"]

LOGGER = logging.getLogger(__name__)

# A-ASSOCIATE-RJ (result, source, reason): rejected-transient, DICOM UL service-provider (presentation related),
# local-limit-exceeded. Transient tells the sender to try again later.
LOCAL_LIMIT_EXCEEDED = (0x02, 0x03, 0x02)
NETWORK_TIMEOUT = 60.0  # seconds an association may sit idle, or a PDU stall midway
DIMSE_TIMEOUT = 60.0
MIN_PENDING_CONNECTIONS = 64  # connections still asking, per process (see guarded_server): at least this many

# What the node accepts by C-STORE, stored exactly as received. Video (MPEG, HEVC), JPIP references and SMPTE 2110
# are left out: nothing downstream reads them, and every syntax offered costs each association a copy of ~180
# storage contexts. (STOW-RS takes any transfer syntax pydicom knows: ``dicom_node.intake.transfer_syntax_of``.)
ACCEPTED_TRANSFER_SYNTAXES = [
    _uid.ExplicitVRLittleEndian, _uid.ImplicitVRLittleEndian, _uid.DeflatedExplicitVRLittleEndian,
    _uid.ExplicitVRBigEndian, _uid.JPEGBaseline8Bit, _uid.JPEGExtended12Bit, _uid.JPEGLossless, _uid.JPEGLosslessSV1,
    _uid.JPEGLSLossless, _uid.JPEGLSNearLossless, _uid.JPEG2000Lossless, _uid.JPEG2000,
    _uid.JPEG2000MCLossless, _uid.JPEG2000MC, _uid.HTJ2KLossless, _uid.HTJ2KLosslessRPCL, _uid.HTJ2K,
    _uid.RLELossless,
]


class NodeNotRunning(RuntimeError):
    """The node was asked for its port (or to stop) before ``start()``."""


class _TlsSettings(Protocol):
    certificate: Path
    private_key: Path
    ca_certificates: Path | None
    require_client_certificate: bool


class NodeSettings(Protocol):
    """The settings the node reads (the service's ``Settings`` has them all)."""

    dicom_ae_title: str
    dicom_host: str
    dicom_port: int
    dicom_allowed_aes: Sequence[AllowedCaller]
    dicom_require_called_ae: bool
    dicom_max_associations: int
    dicom_max_pdu_size: int
    dicom_associate_timeout_seconds: float
    dicom_max_instance_bytes: int
    dicom_max_inflated_bytes: int
    dicom_fast_path: bool
    dicom_tls: _TlsSettings | None
    spool_high_water_percent: float
    spool_reserve_bytes: int

    @property
    def spool_dir(self) -> Path: ...

    @property
    def dicom_status_file(self) -> Path | None:
        """Where the node publishes whether it accepts (``dicom_node.scp.status``); None: nowhere."""


def receiving_process_settings() -> None:
    """Process-wide settings for a process whose work is receiving (``m3edge scp`` and each receiving process; not
    the library's callers, whose pydicom settings stay theirs).

    pydicom's reading validation off (``config.settings.reading_validation_mode = IGNORE``, its public setting):
    pynetdicom deep-copies the supported presentation contexts for every association (about 180 storage classes x
    18 transfer syntaxes: some 3,300 UIDs), and each copied UID was checked against pydicom's UID regex again:
    measured here, one-instance associations took 147/309 ms with it and 94/240 ms without (storescu, median of 9,
    loaded machine). Nothing the node decides rests on those checks: received data sets are stored as sent, and
    the intake validates the UIDs it files under itself (``dicom_node.uids``).
    """
    from pydicom import config

    config.settings.reading_validation_mode = config.IGNORE


def server_tls_context(tls: _TlsSettings) -> ssl.SSLContext:
    """TLS 1.2+ server context from the node's certificate and key; client certificates checked against the CA file."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=str(tls.certificate), keyfile=str(tls.private_key))
    if tls.ca_certificates is not None:
        context.load_verify_locations(cafile=str(tls.ca_certificates))
        context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_certificate else ssl.CERT_OPTIONAL
    elif tls.require_client_certificate:
        raise ValueError("DICOM_TLS.require_client_certificate needs DICOM_TLS.ca_certificates to check them against")
    return context


def intake_limits(settings: NodeSettings) -> IntakeLimits:
    return IntakeLimits(settings.dicom_max_instance_bytes, settings.dicom_max_inflated_bytes)


def connection_limits(settings: NodeSettings) -> ConnectionLimits:
    return ConnectionLimits(
        pdu=PduLimits(max_pdu_length=settings.dicom_max_pdu_size, max_data_set_bytes=settings.dicom_max_instance_bytes),
        associate_timeout=settings.dicom_associate_timeout_seconds, network_timeout=NETWORK_TIMEOUT,
        max_pending=max(MIN_PENDING_CONNECTIONS, 4 * settings.dicom_max_associations),
    )


class DicomNode:
    """Verification + Storage SCP on ``DICOM_PORT``; each instance is durable before its success status.

    (Journaled: bytes and record in one group-committed sync; the file and row follow in the background, and a start
    replays what a stopped process journaled: ``dicom_node.intake.journal``.)

    ``start()`` returns once the port is bound (``port`` gives it, also when ``DICOM_PORT=0``); ``stop()`` closes it.
    """

    def __init__(
        self,
        settings: NodeSettings,
        recorder: InstanceRecorder,
        *,
        spool: SpoolWriter | None = None,
        clock: Callable[[], datetime] = utc_now,
        listener: SharedListener | None = None,
        prepare_spool: bool = True,
        query_retrieve: QueryRetrieveScp | None = None,
        query_retrieve_factory: Callable[[], QueryRetrieveScp] | None = None,
        filing_process: FilingProcess | None = None,
    ) -> None:
        """``query_retrieve`` adds C-FIND/C-GET/C-MOVE (Study Root) behind the same access policy.

        ``query_retrieve_factory`` builds it instead, at ``start()``: with ``DICOM_RECEIVERS`` > 1 each receiving
        process calls it (so it must be picklable), and every process serves Query/Retrieve as well as storage.
        With ``DICOM_RECEIVERS`` > 1 this process files and records, through ``recorder``, what the receiving
        processes journal. ``listener`` and ``filing_process`` are given to a receiving process: it accepts on its
        parent's socket, in turn, and ships what it journals to its parent to be filed.
        """
        self._settings = settings
        if query_retrieve is not None and query_retrieve_factory is not None:
            raise ValueError("give query_retrieve or query_retrieve_factory, not both")
        if getattr(settings, "dicom_receivers", 1) > 1:
            in_process = [name for name, given in (
                ("spool", spool is not None), ("clock", clock is not utc_now), ("listener", listener is not None),
                ("query_retrieve", query_retrieve is not None)) if given]
            if in_process:
                raise ValueError(f"{', '.join(in_process)} would apply to this process only, and DICOM_RECEIVERS="
                                 f"{settings.dicom_receivers} receives in other processes: use DICOM_RECEIVERS=1 "
                                 "(or query_retrieve_factory for Query/Retrieve)")
        self._query_retrieve = query_retrieve
        self._query_retrieve_factory = query_retrieve_factory
        self._recorder = recorder
        self._spool = spool or SpoolWriter(settings.spool_dir)
        self._access = AccessPolicy(settings.dicom_allowed_aes, own_ae_title=settings.dicom_ae_title,
                                    require_called_ae=settings.dicom_require_called_ae)
        admission = DiskAdmission(settings.spool_dir, settings.spool_high_water_percent, settings.spool_reserve_bytes)
        self._journal = JournalStore(self._spool, recorder, filing_process=filing_process)
        self._intake = Intake(self._spool, recorder, admission=admission, limits=intake_limits(settings), clock=clock,
                              store=self._journal)
        self._sessions = OpenSessions(self._intake)
        self._slots = AssociationSlots(settings.dicom_max_associations)
        self._server: Any = None
        self._server_thread: threading.Thread | None = None
        self._pool: Any = None
        self._listener = listener
        self._prepare_spool = prepare_spool
        status_file = getattr(settings, "dicom_status_file", None)
        self._status = None if status_file is None else StatusPublisher(NodeStatusFile(status_file), self.status)

    @property
    def access_policy(self) -> AccessPolicy:
        return self._access

    @property
    def spool(self) -> SpoolWriter:
        return self._spool

    @property
    def intake(self) -> Intake:
        return self._intake

    @property
    def port(self) -> int:
        if self._pool is not None:
            return self._pool.port
        if self._server is None:
            raise NodeNotRunning("the DICOM node is not running; call start() first")
        return int(self._server.server_address[1])

    @property
    def is_running(self) -> bool:
        return self._server is not None or self._pool is not None

    @property
    def receivers(self):
        """The receiving processes (``DICOM_RECEIVERS`` > 1), or None when this process receives itself."""
        return self._pool

    def status(self) -> NodeStatus:
        """Whether the node accepts now (published every heartbeat when ``dicom_status_file`` is set)."""
        pool = self._pool
        if pool is not None:
            return NodeStatus(os.getpid(), time.time(), pool.count, pool.ready, pool.deaths, pool.restarts,
                              tuple(pool.pids()))
        thread = self._server_thread
        return NodeStatus(os.getpid(), time.time(), 1, int(thread is not None and thread.is_alive()),
                          receiver_pids=(os.getpid(),))

    def _application_entity(self) -> AE:
        settings = self._settings
        ae = AE(ae_title=settings.dicom_ae_title)
        # DICOM_MAX_ASSOCIATIONS is counted by AssociationSlots over admitted associations; pynetdicom's own count
        # (every connection, asking or not) is lifted above anything the guarded server lets through, including the
        # threads of unfinished connections it has just closed for newcomers and that have not ended yet (a burst
        # of them once got a real caller refused by pynetdicom's count: tests/security/test_dicom_slowloris.py).
        limits = connection_limits(settings)
        ae.maximum_associations = settings.dicom_max_associations + 2 * limits.max_pending + 8
        ae.maximum_pdu_size = settings.dicom_max_pdu_size
        ae.network_timeout = NETWORK_TIMEOUT
        ae.acse_timeout = settings.dicom_associate_timeout_seconds
        ae.dimse_timeout = DIMSE_TIMEOUT
        ae.add_supported_context(Verification, [_uid.ExplicitVRLittleEndian, _uid.ImplicitVRLittleEndian])
        # With Query/Retrieve, a C-GET caller takes the Storage SCP role: accept the role selection it proposes
        # (a caller that proposes none, like every plain C-STORE sender, keeps the default roles).
        roles = {"scu_role": True, "scp_role": True} if self._query_retrieve is not None else {}
        for sop_class in storage_sop_classes():
            ae.add_supported_context(sop_class, ACCEPTED_TRANSFER_SYNTAXES, **roles)
        if self._query_retrieve is not None:
            for sop_class in self._query_retrieve.sop_classes:
                ae.add_supported_context(sop_class, self._query_retrieve.transfer_syntaxes)
        return ae

    def start(self) -> None:
        """Prepare the spool, bind the port and serve in background threads."""
        if self.is_running:
            return
        _config.LOG_REQUEST_IDENTIFIERS = False  # pynetdicom would log identifiers (patient data) otherwise
        _config.LOG_RESPONSE_IDENTIFIERS = False
        if not logging.getLogger("pynetdicom").isEnabledFor(logging.DEBUG):
            _config.LOG_HANDLER_LEVEL = "none"  # its standard handlers format DEBUG lines for every PDU otherwise
        register_retired_storage_classes()
        if self._prepare_spool:
            self._spool.prepare()
        settings = self._settings
        receivers = getattr(settings, "dicom_receivers", 1)
        if receivers > 1:
            config = replace(NodeConfig.from_settings(settings), query_retrieve_factory=self._query_retrieve_factory,
                             node_factory=type(self))
            on_change = self._status.changed if self._status is not None else None
            pool = ReceiverPool(config, self._recorder, receivers, on_change=on_change, filer=self._journal.filer)
            pool.start()
            self._pool = pool
            self._publish_status()
            self._log_started(tls=settings.dicom_tls is not None, receivers=receivers)
            return
        self._journal.start()  # replays what a process that is gone journaled and never filed
        if self._query_retrieve is None and self._query_retrieve_factory is not None:
            self._query_retrieve = self._query_retrieve_factory()
        tls = server_tls_context(settings.dicom_tls) if settings.dicom_tls is not None else None
        ended = [self._sessions, self._slots.give_back]
        handlers = [
            (evt.EVT_REQUESTED, self._on_association_requested),
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_C_STORE, handle_store, [self._sessions]),
            (evt.EVT_RELEASED, handle_association_end, ended),
            (evt.EVT_ABORTED, handle_association_end, ended),
        ]
        if self._query_retrieve is not None:
            handlers += self._query_retrieve.handlers()
        if self._fast_path() and fastpath.install():
            handlers += fastpath.event_handlers()
        server_class = GuardedAssociationServer if self._listener is None else shared_listener_server(self._listener)
        server = self._application_entity().make_server(
            (settings.dicom_host, settings.dicom_port), evt_handlers=handlers, ssl_context=tls,
            server_class=server_class, limits=connection_limits(settings),
        )
        self._server_thread = threading.Thread(target=server.serve_forever, name="dicom-acceptor", daemon=True)
        self._server_thread.start()
        self._server = server
        self._publish_status()
        if self._listener is None:  # else a receiving process: its parent has said all this
            self._log_started(tls=tls is not None, receivers=1)

    def _fast_path(self) -> bool:
        return bool(getattr(self._settings, "dicom_fast_path", False))

    def _publish_status(self) -> None:
        if self._status is not None:
            self._status.start()

    def _log_started(self, *, tls: bool, receivers: int) -> None:
        settings = self._settings
        if self._access.loopback_only:
            LOGGER.warning(
                "DICOM_ALLOWED_AES is empty: only callers on this machine (loopback) may associate. "
                "This is the safe default; list your PACS as AE or AE@host to accept them."
            )
        LOGGER.info(
            "DICOM node %s listening on %s:%d%s with %d receiving process(es); access: %s; spool %s; %s",
            settings.dicom_ae_title, settings.dicom_host, self.port, " (TLS)" if tls else "", receivers,
            self._access.describe(), self._spool.root, fastpath.describe(self._fast_path()),
        )

    def stop(self) -> None:
        """Stop accepting, end open associations and close the port."""
        if self._status is not None and self.is_running:
            self._status.stop()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop()
            LOGGER.info("DICOM node stopped")
            return
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        for assoc in list(server.active_associations):
            assoc.abort()
        self._journal.close()  # files and records what it journaled
        LOGGER.info("DICOM node stopped")

    def wait_until_recorded(self, timeout: float = 60.0) -> bool:
        """Wait until every instance this process acknowledged so far has its file and row (its journal; with
        ``DICOM_RECEIVERS`` > 1 the receiving processes' rows follow as they ship them). True if done in ``timeout``."""
        return self._journal.wait_until_recorded(timeout)

    def _on_association_requested(self, event) -> None:
        """EVT_REQUESTED: refuse unknown callers, a wrong called AE title, anyone while the spool is too full, and
        anyone beyond ``DICOM_MAX_ASSOCIATIONS``."""
        assoc = event.assoc
        request = assoc.requestor.primitive  # the A-ASSOCIATE-RQ, decoded
        calling_ae = str(request.calling_ae_title or "").strip()
        called_ae = str(request.called_ae_title or "").strip()
        address = str(assoc.requestor.address)
        proposed = [str(context.abstract_syntax) for context in assoc.requestor.requested_contexts]
        refusal = self._access.check(calling_ae, address, called_ae=called_ae, proposed=proposed)
        if refusal is not None:
            LOGGER.warning("association refused (%s): %s", refusal.kind, refusal.reason)
            self._reject(assoc, refusal.rejection)
            return
        full = self._intake.admission_refusal()
        if full is not None:
            LOGGER.warning("association from %s at %s refused (local limit exceeded): %s", calling_ae, address, full)
            self._reject(assoc, LOCAL_LIMIT_EXCEEDED)
            return
        if not self._slots.take(assoc):
            LOGGER.warning("association from %s at %s refused (local limit exceeded): %d associations are open "
                           "(DICOM_MAX_ASSOCIATIONS)", calling_ae, address, self._slots.limit)
            self._reject(assoc, LOCAL_LIMIT_EXCEEDED)

    @staticmethod
    def _reject(assoc, rejection: tuple[int, int, int]) -> None:
        """Send the A-ASSOCIATE-RJ and wait until it is on the wire (pynetdicom closes the socket right after)."""
        assoc.acse.send_reject(*rejection)
        assoc.kill()
