"""Storage SCU: send DICOM files to a destination with C-STORE, retrying with back-off; C-ECHO a destination.

One association carries a whole file set (several only past the 128 presentation contexts a DICOM association allows),
with one presentation context per (SOP class, transfer syntax) pair found in the files, so every instance goes out in
the transfer syntax it is stored in (an uncompressed little-endian file may also go in the other uncompressed syntax
when that is all the peer takes; with ``decompress_when_refused``, a compressed file may go decompressed). ``send()``
returns a :class:`DeliveryReport` with one :class:`InstanceOutcome` per file. Connection failures, transient association rejections, aborts and transient statuses (Out of Resources) are
retried with exponential back-off; a permanent rejection (e.g. our AE title is unknown to the destination) raises at
once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, Association, build_context, evt
from pynetdicom.pdu import A_ASSOCIATE_RJ
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.status import code_to_category

from dicom_node.compression import decompressed
from dicom_node.network import DicomAddress, send_without_delay, validate_ae_title

__all__ = [
    "AssociationRejected",
    "DeliveryError",
    "DeliveryReport",
    "DestinationUnreachable",
    "EchoFailed",
    "InstanceOutcome",
    "RetryPolicy",
    "StorageSCU",
]

LOGGER = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_RESOURCE_LIMITATION = 0x0213
OUT_OF_RESOURCES = range(0xA700, 0xA800)
MAX_PRESENTATION_CONTEXTS = 128
# pynetdicom re-encodes between these two (and nothing else) when the peer accepted only the other one.
UNCOMPRESSED_LITTLE_ENDIAN = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
REJECT_RESULT_PERMANENT = 0x01


class DeliveryError(Exception):
    """Nothing could be delivered to a destination; the message says why and what to check."""


class DestinationUnreachable(DeliveryError):
    """No association could be established: the peer is down, unreachable, or aborted every attempt."""


class AssociationRejected(DeliveryError):
    """The destination rejected our association request."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


class EchoFailed(DeliveryError):
    """The association was established but C-ECHO did not answer success."""


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries in all; the n-th wait is ``first_delay * multiplier**(n-1)``, at most ``max_delay``."""

    attempts: int = 5
    first_delay: float = 1.0
    multiplier: float = 2.0
    max_delay: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {self.attempts}")
        if self.first_delay < 0 or self.max_delay < 0:
            raise ValueError("first_delay and max_delay cannot be negative")
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be at least 1, not {self.multiplier}")

    def delay(self, failed_attempts: int) -> float:
        return min(self.max_delay, self.first_delay * self.multiplier ** (failed_attempts - 1))


@dataclass(frozen=True)
class InstanceOutcome:
    """What happened to one file: the last C-STORE status (None if none came back), the tries, and any error."""

    path: Path
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    status: int | None
    attempts: int
    error: str = ""

    @property
    def delivered(self) -> bool:
        return self.status is not None and code_to_category(self.status) in ("Success", "Warning")

    @property
    def warning(self) -> bool:
        return self.status is not None and code_to_category(self.status) == "Warning"


@dataclass(frozen=True)
class DeliveryReport:
    destination: DicomAddress
    outcomes: list[InstanceOutcome]
    associations: int

    @property
    def delivered(self) -> list[InstanceOutcome]:
        return [o for o in self.outcomes if o.delivered]

    @property
    def failed(self) -> list[InstanceOutcome]:
        return [o for o in self.outcomes if not o.delivered]

    @property
    def all_delivered(self) -> bool:
        return all(o.delivered for o in self.outcomes)


@dataclass
class _File:
    path: Path
    sop_instance_uid: str = ""
    sop_class_uid: str = ""
    transfer_syntax_uid: str = ""
    status: int | None = None
    attempts: int = 0
    error: str = ""
    final: bool = False
    may_decompress: bool = False  # a compressed file may go decompressed to a peer that takes no compressed syntax

    @property
    def context_key(self) -> tuple[str, str]:
        return self.sop_class_uid, self.transfer_syntax_uid

    @property
    def context_keys(self) -> list[tuple[str, str]]:
        """The exact (SOP class, transfer syntax) first; an uncompressed syntax may also go as the other one, and a
        compressed file that ``may_decompress`` as either uncompressed one."""
        if self.transfer_syntax_uid in UNCOMPRESSED_LITTLE_ENDIAN or self.may_decompress:
            syntaxes = dict.fromkeys([self.transfer_syntax_uid, *UNCOMPRESSED_LITTLE_ENDIAN])
            return [(self.sop_class_uid, ts) for ts in syntaxes]
        return [self.context_key]

    def outcome(self) -> InstanceOutcome:
        return InstanceOutcome(
            self.path, self.sop_instance_uid, self.sop_class_uid, self.transfer_syntax_uid, self.status, self.attempts,
            self.error,
        )


def _inspect(path: Path) -> _File:
    """Read the file meta information only; a file without it cannot be sent as stored."""
    item = _File(Path(path))
    try:
        meta = read_file_meta_info(item.path)
        item.sop_class_uid = str(meta.MediaStorageSOPClassUID)
        item.sop_instance_uid = str(meta.MediaStorageSOPInstanceUID)
        item.transfer_syntax_uid = str(meta.TransferSyntaxUID)
    except (OSError, InvalidDicomError, AttributeError) as exc:
        item.final = True
        item.error = f"not a readable DICOM Part 10 file with SOP class, instance and transfer syntax: {exc}"
    return item


def _transient(status: int | None) -> bool:
    return status is None or status in OUT_OF_RESOURCES or status == STATUS_RESOURCE_LIMITATION


@dataclass
class _Attempt:
    """What one association attempt learnt about the peer, from pynetdicom's events."""

    connected: bool = False
    accepted: bool = False
    rejection: A_ASSOCIATE | None = None
    handlers: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.handlers = [
            (evt.EVT_CONN_OPEN, self._on_open),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_ACSE_RECV, self._on_acse),
            (evt.EVT_PDU_RECV, self._on_pdu),
        ]

    def _on_open(self, event) -> None:
        self.connected = True
        send_without_delay(event.assoc)

    def _on_accepted(self, _event) -> None:
        self.accepted = True

    def _on_acse(self, event) -> None:
        primitive = event.primitive
        if isinstance(primitive, A_ASSOCIATE) and primitive.result in (0x01, 0x02):
            self.rejection = primitive

    def _on_pdu(self, event) -> None:
        """An A-ASSOCIATE-RJ as it arrives: a peer that closes the connection right after rejecting can make
        pynetdicom see the close first and report an abort, never handing the rejection to the ACSE."""
        if self.rejection is None and isinstance(event.pdu, A_ASSOCIATE_RJ):
            self.rejection = event.pdu.to_primitive()


class StorageSCU:
    """Sends to destinations as ``calling_ae``; ``sleep`` is injectable so tests can act during a back-off."""

    def __init__(
        self,
        calling_ae: str,
        *,
        retry: RetryPolicy | None = None,
        connection_timeout: float = 10.0,
        acse_timeout: float = 30.0,
        dimse_timeout: float = 120.0,
        sleep: Callable[[float], None] = time.sleep,
        decompress_when_refused: bool = False,
    ) -> None:
        """``decompress_when_refused``: a compressed file whose syntax the destination refuses goes decompressed
        (``dicom_node.compression.decompressed``) when it takes an uncompressed one (m3edge's JPEG 2000 SEGs to an
        old PACS); without it, every file goes only as stored."""
        self.calling_ae = validate_ae_title(calling_ae)
        self.decompress_when_refused = decompress_when_refused
        self.retry = retry or RetryPolicy()
        self.connection_timeout = connection_timeout
        self.acse_timeout = acse_timeout
        self.dimse_timeout = dimse_timeout
        self.sleep = sleep

    # -- C-ECHO -----------------------------------------------------------------------------------------------------

    def echo(self, destination: DicomAddress) -> float:
        """C-ECHO ``destination`` once; return the round trip in seconds or raise a :class:`DeliveryError`."""
        started = time.monotonic()
        attempt = _Attempt()
        assoc = self._associate(destination, [build_context(Verification)], attempt)
        try:
            status = assoc.send_c_echo()
        finally:
            assoc.release()
        code = int(status.Status) if "Status" in status else None
        if code != STATUS_SUCCESS:
            shown = "no response" if code is None else f"status 0x{code:04X}"
            raise EchoFailed(f"C-ECHO to {destination} answered {shown}")
        return time.monotonic() - started

    # -- C-STORE ----------------------------------------------------------------------------------------------------

    def send(self, destination: DicomAddress, paths: Iterable[str | Path]) -> DeliveryReport:
        """Send every file to ``destination``; retry what failed transiently; report per instance."""
        files = [_inspect(Path(p)) for p in paths]
        for item in files:
            item.may_decompress = self.decompress_when_refused and item.transfer_syntax_uid not in (
                "", *UNCOMPRESSED_LITTLE_ENDIAN)
        established: list[Association] = []
        last_error: DeliveryError | None = None
        for attempt_number in range(1, self.retry.attempts + 1):
            pending = [f for f in files if not f.final]
            if not pending:
                break
            if attempt_number > 1:
                delay = self.retry.delay(attempt_number - 1)
                LOGGER.info(
                    "retrying %d instance(s) to %s in %.1f s (attempt %d of %d)",
                    len(pending), destination, delay, attempt_number, self.retry.attempts,
                )
                self.sleep(delay)
            try:
                for group in _context_groups(pending):
                    self._send_group(destination, group, established)
                last_error = None
            except AssociationRejected as exc:
                if exc.permanent:
                    self._fail_pending(files, str(exc))
                    if not established:
                        raise
                    break
                last_error = exc
            except DestinationUnreachable as exc:
                last_error = exc
            if last_error is not None:
                LOGGER.warning("delivery to %s failed (attempt %d of %d): %s", destination, attempt_number,
                               self.retry.attempts, last_error)
        if last_error is not None and not established:
            last_error.args = (f"{last_error} (gave up after {self.retry.attempts} attempts)",)
            raise last_error
        self._fail_pending(files, str(last_error) if last_error else "still failing after the last attempt")
        report = DeliveryReport(destination, [f.outcome() for f in files], len(established))
        LOGGER.info("delivered %d of %d instance(s) to %s over %d association(s)",
                    len(report.delivered), len(files), destination, len(established))
        return report

    @staticmethod
    def _fail_pending(files: Sequence[_File], error: str) -> None:
        for item in files:
            if not item.final:
                item.final = True
                item.error = item.error or error

    def _send_group(self, destination: DicomAddress, group: list[_File], established: list[Association]) -> None:
        contexts = [build_context(sop, ts) for sop, ts in dict.fromkeys(key for f in group for key in f.context_keys)]
        assoc = self._associate(destination, contexts, _Attempt())
        established.append(assoc)
        accepted = {(cx.abstract_syntax, cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
        try:
            for item in group:
                if not assoc.is_established:
                    raise DestinationUnreachable(f"{destination} aborted the association during the transfer")
                self._store(destination, assoc, item, accepted)
        finally:
            if assoc.is_established:
                assoc.release()

    def _store(
        self, destination: DicomAddress, assoc: Association, item: _File, accepted: set[tuple[str, str]]
    ) -> None:
        if not any(key in accepted for key in item.context_keys):
            item.final = True
            item.error = (
                f"the destination accepted no presentation context for SOP class {item.sop_class_uid} "
                f"in transfer syntax {item.transfer_syntax_uid}"
            )
            return
        try:
            dataset = dcmread(item.path)
            if item.may_decompress and item.context_key not in accepted:
                dataset = decompressed(dataset)  # the destination took the SOP class only uncompressed
        except (OSError, InvalidDicomError) as exc:
            item.final, item.error = True, f"cannot read {item.path}: {exc}"
            return
        except (ValueError, RuntimeError, NotImplementedError) as exc:  # no decoder for its pixel data
            item.attempts += 1
            item.final = True
            item.error = f"cannot decompress it for a destination that takes it only uncompressed: {exc}"
            return
        try:
            response = assoc.send_c_store(dataset)
        except ValueError as exc:  # pynetdicom could not encode the dataset in the negotiated syntax
            item.attempts += 1
            item.final, item.error = True, f"cannot encode the dataset for sending: {exc}"
            return
        except RuntimeError as exc:  # the association ended between two instances
            raise DestinationUnreachable(f"{destination} ended the association during the transfer") from exc
        item.attempts += 1
        item.status = int(response.Status) if "Status" in response else None
        if item.status is not None and code_to_category(item.status) in ("Success", "Warning"):
            item.final, item.error = True, ""
        elif _transient(item.status):
            item.error = "no response to C-STORE" if item.status is None else f"status 0x{item.status:04X} (transient)"
        else:
            item.final, item.error = True, f"refused with status 0x{item.status:04X}"

    def _associate(self, destination: DicomAddress, contexts: list, attempt: _Attempt) -> Association:
        ae = AE(ae_title=self.calling_ae)
        ae.connection_timeout = self.connection_timeout
        ae.acse_timeout = self.acse_timeout
        ae.dimse_timeout = self.dimse_timeout
        ae.requested_contexts = contexts
        assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title,
                             evt_handlers=attempt.handlers)
        if assoc.is_established:
            return assoc
        rejection = attempt.rejection
        if rejection is not None:
            raise _rejection_error(destination, self.calling_ae, rejection)
        if attempt.accepted:
            raise AssociationRejected(
                f"{destination} accepted none of the presentation contexts offered ({_describe(contexts)})",
                permanent=True,
            )
        if not attempt.connected:
            raise DestinationUnreachable(f"cannot connect to {destination} (is it running, and is the port open?)")
        raise DestinationUnreachable(f"{destination} aborted the association request")


def _describe(contexts: list) -> str:
    return ", ".join(f"{cx.abstract_syntax}/{'+'.join(cx.transfer_syntax)}" for cx in contexts[:4]) + (
        ", ..." if len(contexts) > 4 else "")


def _rejection_error(destination: DicomAddress, calling_ae: str, rejection: A_ASSOCIATE) -> AssociationRejected:
    permanent = rejection.result == REJECT_RESULT_PERMANENT
    hint = ""
    if rejection.result_source == 0x01 and rejection.diagnostic == 0x03:
        hint = f": add {calling_ae!r} (and this host) to the destination's known AEs"
    elif rejection.result_source == 0x01 and rejection.diagnostic == 0x07:
        hint = f": check the destination's AE title (we called it {destination.ae_title!r})"
    return AssociationRejected(
        f"{destination} rejected our association ({rejection.result_str}, {rejection.source_str}: "
        f"{rejection.reason_str}){hint}",
        permanent=permanent,
    )


def _context_groups(files: list[_File]) -> list[list[_File]]:
    """Split files so no association needs more than 128 presentation contexts."""
    groups: list[tuple[list[_File], set[tuple[str, str]]]] = []
    for item in files:
        needed = set(item.context_keys)
        for group, keys in groups:
            if len(keys | needed) <= MAX_PRESENTATION_CONTEXTS:
                group.append(item)
                keys.update(needed)
                break
        else:
            groups.append(([item], needed))
    return [group for group, _ in groups]
