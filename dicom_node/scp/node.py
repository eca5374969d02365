"""``DicomNode``: the Verification and Storage SCP that PACS send studies to."""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from pydicom import uid as _uid
from pynetdicom import AE, AllStoragePresentationContexts, _config, evt
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from dicom_node.network import AllowedCaller, send_without_delay
from dicom_node.qr import QueryRetrieveScp
from dicom_node.scp.access import AccessPolicy
from dicom_node.scp.admission import LOCAL_LIMIT_EXCEEDED, DiskAdmission
from dicom_node.scp.handlers import (
    AssociationStudies,
    handle_association_end,
    handle_echo,
    handle_store,
    utc_now,
)
from dicom_node.scp import uid_cache
from dicom_node.scp.listener import SharedListener, shared_listener_server
from dicom_node.scp.reactor import EventDrivenRequestHandler, SharedContexts
from dicom_node.scp.recording import InstanceRecorder
from dicom_node.scp.spool import SpoolWriter

__all__ = ["DicomNode", "NodeSettings", "NodeNotRunning", "ACCEPTED_TRANSFER_SYNTAXES"]

LOGGER = logging.getLogger(__name__)


# What the node accepts, stored exactly as received. Video (MPEG, HEVC), JPIP references and SMPTE 2110 are left out:
# nothing downstream reads them, and every syntax offered costs each association a copy of ~170 storage contexts.
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
    dicom_max_associations: int
    dicom_max_pdu_size: int
    dicom_tls: _TlsSettings | None
    spool_high_water_percent: float
    spool_reserve_bytes: int

    @property
    def spool_dir(self) -> Path: ...


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


def _connection_opened(event) -> None:
    send_without_delay(event.assoc)  # C-GET/C-MOVE send large data sets back; responses go out at once


class DicomNode:
    """Verification + Storage SCP on ``DICOM_PORT``; each instance is fsynced and recorded before its success status.

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
        recorder_factory: Callable[[], InstanceRecorder] | None = None,
        event_driven: bool = True,
    ) -> None:
        """``query_retrieve`` adds C-FIND/C-GET/C-MOVE (Study Root) behind the same access policy.

        ``query_retrieve_factory`` builds it instead, at ``start()``: with ``DICOM_RECEIVERS`` > 1 each receiving
        process calls it (so it must be picklable), and every process serves Query/Retrieve as well as storage.
        ``recorder_factory`` (picklable) gives each receiving process a recorder of its own; without it they record
        through ``recorder`` in this process.

        ``event_driven=False`` keeps pynetdicom's polling reactors (see ``dicom_node.scp.reactor``). ``listener`` is
        given to a receiving process (``DICOM_RECEIVERS`` > 1): it accepts on its parent's socket, in turn.
        """
        self._settings = settings
        if query_retrieve is not None and query_retrieve_factory is not None:
            raise ValueError("give query_retrieve or query_retrieve_factory, not both")
        if getattr(settings, "dicom_receivers", 1) > 1:
            in_process = [name for name, given in (
                ("spool", spool is not None), ("clock", clock is not utc_now), ("listener", listener is not None),
                ("query_retrieve", query_retrieve is not None), ("event_driven=False", not event_driven)) if given]
            if in_process:
                raise ValueError(f"{', '.join(in_process)} would apply to this process only, and DICOM_RECEIVERS="
                                 f"{settings.dicom_receivers} receives in other processes: use DICOM_RECEIVERS=1 "
                                 "(or query_retrieve_factory for Query/Retrieve)")
        self._query_retrieve = query_retrieve
        self._query_retrieve_factory = query_retrieve_factory
        self._recorder_factory = recorder_factory
        self._recorder = recorder
        self._spool = spool or SpoolWriter(settings.spool_dir)
        self._clock = clock
        self._access = AccessPolicy(settings.dicom_allowed_aes)
        self._admission = DiskAdmission(
            settings.spool_dir, settings.spool_high_water_percent, settings.spool_reserve_bytes
        )
        self._studies = AssociationStudies()
        self._server: Any = None
        self._pool: Any = None
        self._listener = listener
        self._prepare_spool = prepare_spool
        self._event_driven = event_driven

    @property
    def access_policy(self) -> AccessPolicy:
        return self._access

    @property
    def spool(self) -> SpoolWriter:
        return self._spool

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

    def _application_entity(self) -> AE:
        settings = self._settings
        ae = AE(ae_title=settings.dicom_ae_title)
        ae.maximum_associations = settings.dicom_max_associations
        ae.maximum_pdu_size = settings.dicom_max_pdu_size
        ae.network_timeout = 60
        ae.acse_timeout = 30
        ae.dimse_timeout = 60
        ae.add_supported_context(Verification, [_uid.ExplicitVRLittleEndian, _uid.ImplicitVRLittleEndian])
        # With Query/Retrieve, a C-GET caller takes the Storage SCP role: accept the role selection it proposes
        # (a caller that proposes none, like every plain C-STORE sender, keeps the default roles).
        roles = {"scu_role": True, "scp_role": True} if self._query_retrieve is not None else {}
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ACCEPTED_TRANSFER_SYNTAXES, **roles)
        if self._query_retrieve is not None:
            for sop_class in self._query_retrieve.sop_classes:
                ae.add_supported_context(sop_class, self._query_retrieve.transfer_syntaxes)
        return ae

    def start(self) -> None:
        """Prepare the spool, bind the port and serve in background threads."""
        if self.is_running:
            return
        _config.LOG_REQUEST_IDENTIFIERS = False  # pynetdicom would log identifiers (patient data) otherwise
        uid_cache.install()
        _config.LOG_RESPONSE_IDENTIFIERS = False
        if self._prepare_spool:
            self._spool.prepare()
        settings = self._settings
        receivers = getattr(settings, "dicom_receivers", 1)
        if receivers > 1:
            from dicom_node.scp.receivers import NodeConfig, ReceiverPool

            config = replace(NodeConfig.from_settings(settings), query_retrieve_factory=self._query_retrieve_factory,
                             recorder_factory=self._recorder_factory)
            self._pool = ReceiverPool(config, self._recorder, receivers)
            self._pool.start()
            self._log_started(tls=settings.dicom_tls is not None, receivers=receivers)
            return
        if self._query_retrieve is None and self._query_retrieve_factory is not None:
            self._query_retrieve = self._query_retrieve_factory()
        tls = server_tls_context(settings.dicom_tls) if settings.dicom_tls is not None else None
        handlers = [
            (evt.EVT_CONN_OPEN, _connection_opened),
            (evt.EVT_REQUESTED, self._on_association_requested),
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_C_STORE, handle_store, [self._spool, self._recorder, self._studies, self._clock]),
            (evt.EVT_RELEASED, handle_association_end, [self._recorder, self._studies, self._clock]),
            (evt.EVT_ABORTED, handle_association_end, [self._recorder, self._studies, self._clock]),
        ]
        if self._query_retrieve is not None:
            handlers += self._query_retrieve.handlers()
        ae = self._application_entity()
        server = ae.make_server(
            (settings.dicom_host, settings.dicom_port), evt_handlers=handlers, ssl_context=tls,
            server_class=(
                ThreadedAssociationServer if self._listener is None else shared_listener_server(self._listener)
            ),
            request_handler=EventDrivenRequestHandler if self._event_driven else None,
        )
        if self._event_driven:
            server.contexts = SharedContexts(server.contexts)  # read-only per association: no deep copy each
        ae._servers.append(server)  # what ae.start_server(block=False) does, so server.shutdown() finds it
        threading.Thread(target=server.serve_forever, name="dicom-acceptor", daemon=True).start()
        self._server = server
        if self._listener is None:  # else a receiving process: its parent has said all this
            self._log_started(tls=tls is not None, receivers=1)

    def _log_started(self, *, tls: bool, receivers: int) -> None:
        settings = self._settings
        if self._access.loopback_only:
            LOGGER.warning(
                "DICOM_ALLOWED_AES is empty: only callers on this machine (loopback) may associate. "
                "This is the safe default; list your PACS as AE or AE@host to accept them."
            )
        LOGGER.info(
            "DICOM node %s listening on %s:%d%s with %d receiving process(es); access: %s; spool %s",
            settings.dicom_ae_title, settings.dicom_host, self.port, " (TLS)" if tls else "", receivers,
            self._access.describe(), self._spool.root,
        )

    def stop(self) -> None:
        """Stop accepting, end open associations and close the port."""
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
        LOGGER.info("DICOM node stopped")

    def _on_association_requested(self, event) -> None:
        """EVT_REQUESTED: refuse callers the access policy does not know, and anyone while the spool is too full."""
        assoc = event.assoc
        calling_ae = str(assoc.requestor.primitive.calling_ae_title or "").strip()  # set before negotiation
        address = str(assoc.requestor.address)
        refusal = self._access.check(calling_ae, address)
        if refusal is not None:
            LOGGER.warning("association refused (calling AE not recognised): %s", refusal.reason)
            self._reject(assoc, refusal.rejection)
            return
        try:
            full = self._admission.refusal()
        except OSError as exc:
            full = f"cannot check the spool's disk: {exc}"
        if full is not None:
            LOGGER.warning("association from %s at %s refused (local limit exceeded): %s", calling_ae, address, full)
            self._reject(assoc, LOCAL_LIMIT_EXCEEDED)

    @staticmethod
    def _reject(assoc, rejection: tuple[int, int, int]) -> None:
        """Send the A-ASSOCIATE-RJ and wait until it is on the wire (pynetdicom closes the socket right after)."""
        assoc.acse.send_reject(*rejection)
        assoc.kill()
