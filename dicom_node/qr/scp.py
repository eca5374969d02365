"""``QueryRetrieveScp``: C-FIND, C-GET and C-MOVE (Study Root) over the objects an ``ObjectCatalog`` says are held.

It has no port of its own: ``DicomNode(query_retrieve=...)`` adds its presentation contexts and handlers, so callers
pass the node's access policy (``DICOM_ALLOWED_AES``) before any query. C-MOVE sends only to destinations it was given
(the service's ``DESTINATIONS``), matched by AE title: a Move Destination it does not know is refused (A801), never
resolved to an arbitrary host. Objects go as stored; a compressed one (a JPEG 2000 SEG) goes decompressed when the
association carrying the C-STOREs (the C-GET's own, or the C-MOVE's to its destination) took its SOP class only in an
uncompressed syntax. An ``observer`` hears of every request (the service writes audit events from it); its failures
are logged and never break the DICOM path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from itertools import islice
from dataclasses import dataclass, field

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import build_context, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from dicom_node.compression import UNCOMPRESSED, decompressed
from dicom_node.network import DicomAddress
from dicom_node.qr.holdings import HeldObject, IndexedObject, ObjectCatalog, ObjectHeaders
from dicom_node.qr.matching import QueryTooCostly
from dicom_node.qr.query import IdentifierError, find_matches, objects_to_retrieve, requested_study_uids

__all__ = ["QueryRetrieveScp", "RetrievalEvent", "QUERY_RETRIEVE_SOP_CLASSES"]

LOGGER = logging.getLogger(__name__)

QUERY_RETRIEVE_SOP_CLASSES = (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

PENDING = 0xFF00
CANCELLED = 0xFE00
SUCCESS = 0x0000
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
UNABLE_TO_PROCESS = 0xC000
MOVE_DESTINATION_UNKNOWN = 0xA801
OUT_OF_RESOURCES = 0xA700
# The most answers one C-FIND returns: beyond it the first ones are sent and the last status is Out of Resources
# (A700) asking for a narrower query; the matching itself is linear (``dicom_node.qr.matching``).
MAX_FIND_MATCHES = 1000


@dataclass(frozen=True)
class RetrievalEvent:
    """What a Query/Retrieve request asked for and what it got (no patient data: UIDs, AE titles and counts)."""

    operation: str  # find | get | move
    calling_ae: str
    address: str
    level: str
    study_uids: tuple[str, ...] = ()
    sop_instance_uids: tuple[str, ...] = ()
    matches: int = 0
    destination: str = ""
    outcome: str = "success"  # success | refused | failed
    reason: str = ""
    extra: dict = field(default_factory=dict)


def _accepted(assoc) -> set[tuple[str, str]]:
    return {(cx.abstract_syntax, cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}


def _status(code: int, comment: str = "") -> Dataset:
    status = Dataset()
    status.Status = code
    if comment:
        status.ErrorComment = comment[:64]
    return status


class QueryRetrieveScp:
    """The handlers of the Query/Retrieve service; thread-safe (each association runs in its own thread)."""

    def __init__(self, catalog: ObjectCatalog, destinations: Sequence[DicomAddress], *, ae_title: str,
                 observer: Callable[[RetrievalEvent], None] | None = None) -> None:
        self._catalog = catalog
        self._destinations = {d.ae_title: d for d in destinations}
        self._ae_title = ae_title
        self._observer = observer
        self._headers = ObjectHeaders()

    @property
    def sop_classes(self) -> tuple[str, ...]:
        return tuple(str(uid) for uid in QUERY_RETRIEVE_SOP_CLASSES)

    @property
    def transfer_syntaxes(self) -> list[str]:
        """Of the Query/Retrieve contexts (identifiers are small: the little endian syntaxes suffice)."""
        return [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian]

    def handlers(self) -> list[tuple]:
        return [(evt.EVT_C_FIND, self.handle_find), (evt.EVT_C_GET, self.handle_get),
                (evt.EVT_C_MOVE, self.handle_move)]

    # -- shared ---------------------------------------------------------------------------------------------------

    def _notify(self, event: RetrievalEvent) -> None:
        if self._observer is None:
            return
        try:
            self._observer(event)
        except Exception:  # noqa: BLE001 - the audit observer must never break the DICOM path
            LOGGER.exception("the Query/Retrieve observer failed for a %s from %s", event.operation, event.calling_ae)

    def _indexed(self, identifier: Dataset) -> list[IndexedObject]:
        held: list[HeldObject] = self._catalog.held_objects(requested_study_uids(identifier))
        return self._headers.index(held)

    @staticmethod
    def _caller(event) -> tuple[str, str]:
        requestor = event.assoc.requestor
        return (requestor.ae_title or "").strip(), str(requestor.address)

    @staticmethod
    def _level_of(identifier: Dataset | None) -> str:
        return str(identifier.get("QueryRetrieveLevel", "")).strip() if identifier is not None else ""

    # -- C-FIND ---------------------------------------------------------------------------------------------------

    def handle_find(self, event) -> Iterator[tuple[int, Dataset | None]]:
        calling_ae, address = self._caller(event)
        try:
            identifier = event.identifier
            answers = list(islice(find_matches(self._indexed(identifier), identifier, self._ae_title),
                                  MAX_FIND_MATCHES + 1))
        except QueryTooCostly as exc:
            LOGGER.warning("C-FIND from %s refused: %s", calling_ae, exc)
            self._notify(RetrievalEvent("find", calling_ae, address, "", outcome="refused", reason=str(exc)))
            yield _status(OUT_OF_RESOURCES, str(exc)), None
            return
        except IdentifierError as exc:
            LOGGER.warning("C-FIND from %s refused: %s", calling_ae, exc)
            self._notify(RetrievalEvent("find", calling_ae, address, "", outcome="refused", reason=str(exc)))
            yield _status(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, str(exc)), None
            return
        except Exception as exc:  # noqa: BLE001 - an unreadable identifier or a database error: unable to process
            LOGGER.exception("C-FIND from %s failed", calling_ae)
            self._notify(RetrievalEvent("find", calling_ae, address, "", outcome="failed", reason=type(exc).__name__))
            yield _status(UNABLE_TO_PROCESS, f"unable to process: {exc.__class__.__name__}"), None
            return
        truncated = len(answers) > MAX_FIND_MATCHES
        answers = answers[:MAX_FIND_MATCHES]
        studies = tuple(sorted({str(a.get("StudyInstanceUID", "")) for a in answers} - {""}))
        self._notify(RetrievalEvent("find", calling_ae, address, self._level_of(identifier), studies,
                                    matches=len(answers), reason="truncated" if truncated else ""))
        for answer in answers:
            if event.is_cancelled:
                yield CANCELLED, None
                return
            yield PENDING, answer
        if truncated:
            yield _status(OUT_OF_RESOURCES, f"more than {MAX_FIND_MATCHES} matches: narrow the query"), None

    # -- C-GET and C-MOVE -----------------------------------------------------------------------------------------

    def _select(self, event, operation: str, destination: str = "") -> list[IndexedObject] | Dataset:
        """The objects to send, or the failure status to answer (after telling the observer)."""
        calling_ae, address = self._caller(event)
        identifier = None
        try:
            identifier = event.identifier
            return objects_to_retrieve(self._indexed(identifier), identifier)
        except (IdentifierError, QueryTooCostly) as exc:
            LOGGER.warning("C-%s from %s refused: %s", operation.upper(), calling_ae, exc)
            self._notify(RetrievalEvent(operation, calling_ae, address, self._level_of(identifier),
                                        destination=destination, outcome="refused", reason=str(exc)))
            return _status(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, str(exc))
        except Exception as exc:  # noqa: BLE001 - a database error: unable to process
            LOGGER.exception("C-%s from %s failed", operation.upper(), calling_ae)
            self._notify(RetrievalEvent(operation, calling_ae, address, self._level_of(identifier),
                                        destination=destination, outcome="failed", reason=type(exc).__name__))
            return _status(UNABLE_TO_PROCESS, f"unable to process: {exc.__class__.__name__}")

    def _sent(self, event, operation: str, chosen: list[IndexedObject], destination: str = "") -> None:
        calling_ae, address = self._caller(event)
        self._notify(RetrievalEvent(
            operation, calling_ae, address, self._level_of(event.identifier),
            tuple(sorted({o.held.study_uid for o in chosen})), tuple(o.held.sop_instance_uid for o in chosen),
            matches=len(chosen), destination=destination,
        ))

    @staticmethod
    def _datasets(event, chosen: list[IndexedObject],
                  accepted: Callable[[], set[tuple[str, str]]]) -> Iterator[tuple[int, Dataset | None]]:
        """Each object as stored or, when the association carrying the C-STOREs took its SOP class only in an
        uncompressed syntax (a peer without JPEG 2000 and a compressed SEG), ``decompressed``."""
        for obj in chosen:
            if event.is_cancelled:
                yield CANCELLED, None
                return
            dataset = dcmread(obj.held.path)
            sop_class, syntax = obj.held.sop_class_uid, str(dataset.file_meta.TransferSyntaxUID)
            taken = accepted()
            if (sop_class, syntax) not in taken and any((sop_class, ts) in taken for ts in UNCOMPRESSED):
                dataset = decompressed(dataset)
            yield PENDING, dataset

    def handle_get(self, event) -> Iterator:
        chosen = self._select(event, "get")
        if isinstance(chosen, Dataset):
            yield 1  # pynetdicom answers success for zero sub-operations; one lets the failure status through
            yield chosen, None
            return
        self._sent(event, "get", chosen)
        yield len(chosen)
        yield from self._datasets(event, chosen, lambda: _accepted(event.assoc))

    def handle_move(self, event) -> Iterator:
        calling_ae, address = self._caller(event)
        name = str(event.move_destination.decode("ascii", "replace") if isinstance(event.move_destination, bytes)
                   else event.move_destination).strip()
        destination = self._destinations.get(name)
        if destination is None:
            LOGGER.warning("C-MOVE from %s refused: move destination %r is not among DESTINATIONS", calling_ae, name)
            self._notify(RetrievalEvent("move", calling_ae, address, "", destination=name, outcome="refused",
                                        reason="unknown move destination"))
            yield None, None  # pynetdicom answers Move Destination Unknown (A801)
            return
        chosen = self._select(event, "move", str(destination))
        if isinstance(chosen, Dataset):
            yield destination.host, destination.port, {"contexts": [build_context(Verification)]}
            yield 1
            yield chosen, None
            return
        contexts = {}
        for obj in chosen:
            sop_class = obj.held.sop_class_uid
            contexts.setdefault((sop_class, ""),
                                build_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
            syntax = str(read_file_meta_info(obj.held.path).TransferSyntaxUID)
            if syntax not in UNCOMPRESSED:  # offered as stored too: a destination that takes it gets it compressed
                contexts.setdefault((sop_class, syntax), build_context(sop_class, [syntax]))
        self._sent(event, "move", chosen, str(destination))
        established: list = []  # the sub-association, once pynetdicom has made it (before the first C-STORE)
        yield destination.host, destination.port, {
            "contexts": list(contexts.values()),
            "evt_handlers": [(evt.EVT_ESTABLISHED, lambda established_event: established.append(
                established_event.assoc))],
        }
        yield len(chosen)
        yield from self._datasets(event, chosen, lambda: _accepted(established[0]) if established else set())
