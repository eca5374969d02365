"""The service's side of the DICOM Query/Retrieve SCP: which result objects exist (from ``reports.objects``) and the
audit events of every query and retrieve. ``build_query_retrieve(settings, session_factory)`` gives what
``DicomNode(query_retrieve=...)`` takes.

What Q/R covers: the objects m3edge produced (draft SR, SEG, overlay Secondary Capture, verified SR, rejection note)
of every report, including superseded ones. The received images are not offered: PACS keeps them, and the node is
not an archive (its spool may be purged).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.qr import HeldObject, QueryRetrieveScp, RetrievalEvent
from service.config import Settings
from service.db.models import Report, Study
from service.security import record_audit

__all__ = ["ReportObjectCatalog", "QueryRetrieveAudit", "QueryRetrieveFactory", "build_query_retrieve"]

LOGGER = logging.getLogger(__name__)


class ReportObjectCatalog:
    """``dicom_node.qr.ObjectCatalog`` over the reports table: every DICOM object a report lists whose file exists
    inside ``results_dir`` (where the pipeline and the review write them; a row naming any other file is ignored)."""

    def __init__(self, session_factory: sessionmaker[Session], results_dir: Path) -> None:
        self._session_factory = session_factory
        self._root = Path(results_dir).resolve()

    def held_objects(self, study_uids: Sequence[str] | None = None) -> list[HeldObject]:
        query = select(Study.study_uid, Report.objects).join(Study, Study.id == Report.study_id).order_by(Report.id)
        if study_uids is not None:
            query = query.where(Study.study_uid.in_(list(study_uids)))
        with self._session_factory() as session:
            rows = session.execute(query).all()
        held: dict[str, HeldObject] = {}
        for study_uid, objects in rows:
            for value in (objects or {}).values():
                if not isinstance(value, dict) or not {"path", "sop_instance_uid", "sop_class_uid"} <= value.keys():
                    continue  # e.g. "revisions" (a counter) or "overlay_png" (a path to a picture)
                path = Path(value["path"]).resolve()
                if not path.is_relative_to(self._root):
                    LOGGER.warning("report of study %s lists a file outside %s; not offered", study_uid, self._root)
                elif path.is_file():
                    held[value["sop_instance_uid"]] = HeldObject(study_uid, value["sop_instance_uid"],
                                                                 value["sop_class_uid"], path)
        return list(held.values())


class QueryRetrieveAudit:
    """Writes one audit event per Query/Retrieve request; the actor is ``dicom:<calling AE>``."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._session_factory = session_factory

    def __call__(self, event: RetrievalEvent) -> None:
        detail = {"level": event.level, "matches": event.matches}
        if event.destination:
            detail["destination"] = event.destination
        if event.reason:
            detail["reason"] = event.reason
        if event.sop_instance_uids:
            detail["sop_instance_uids"] = list(event.sop_instance_uids[:100])
        study_uids = event.study_uids or ("",)
        with self._session_factory() as session:
            for study_uid in study_uids[:100]:
                record_audit(session, f"dicom:{event.calling_ae}", f"dicom.{event.operation}", study_uid=study_uid,
                             target=event.destination, outcome=event.outcome, remote_addr=event.address,
                             detail=detail)
            session.commit()


def build_query_retrieve(settings: Settings, session_factory: sessionmaker[Session]) -> QueryRetrieveScp:
    """The Query/Retrieve SCP for ``DicomNode``: results from the database, moves only to ``DESTINATIONS``."""
    from service.destinations import DestinationsStore

    # C-MOVE destinations are read at start: a list saved through the admin API applies after a restart.
    return QueryRetrieveScp(ReportObjectCatalog(session_factory, settings.results_dir), DestinationsStore(settings).load(),
                            ae_title=settings.dicom_ae_title, observer=QueryRetrieveAudit(session_factory))


class QueryRetrieveFactory:
    """What ``DicomNode(query_retrieve_factory=...)`` takes: builds the Q/R SCP in whichever process serves it.

    In the node's own process it uses the given ``session_factory``; pickled into a receiving process
    (``DICOM_RECEIVERS`` > 1) it keeps only the settings and opens that process's own database engine.
    """

    def __init__(self, settings: Settings, session_factory: sessionmaker[Session] | None = None) -> None:
        self.settings = settings
        self.session_factory = session_factory

    def __getstate__(self) -> dict:
        return {"settings": self.settings, "session_factory": None}

    def __call__(self) -> QueryRetrieveScp:
        session_factory = self.session_factory
        if session_factory is None:
            from service.db.session import create_db_engine, make_session_factory

            session_factory = make_session_factory(create_db_engine(self.settings.effective_database_url))
        return build_query_retrieve(self.settings, session_factory)
