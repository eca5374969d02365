"""Study assembly over the service's database: the ledger the assembler reads and completes studies in.

``build_assembler(settings, session_factory, on_study_complete)`` is what ``m3edge scp`` and ``m3edge serve`` call.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.assembly import AssemblyTimings, CompletionReason, OpenStudy, StudyAssembler, StudyCompleteHook
from service.config import Settings
from service.db.models import Study, StudyStatus
from service.db.session import session_scope

__all__ = ["DatabaseStudyLedger", "build_assembler", "assembly_timings"]


class DatabaseStudyLedger:
    """:class:`dicom_node.assembly.StudyLedger` over the ``studies`` table.

    The recorder (``service.ingest``) keeps ``last_received_at``, ``last_released_at`` and ``opened_at`` up to date and
    re-opens a completed study when another instance arrives; this ledger only reads those and completes studies.
    """

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self.session_factory = session_factory

    def open_studies(self) -> Sequence[OpenStudy]:
        with session_scope(self.session_factory) as session:
            rows = session.execute(
                select(Study.study_uid, Study.opened_at, Study.last_received_at, Study.last_released_at,
                       Study.open_associations)
                .where(Study.status == StudyStatus.RECEIVING)
                .order_by(Study.last_received_at)
            ).all()
        return [OpenStudy(*row) for row in rows]

    def complete(self, study: OpenStudy, reason: CompletionReason, completed_at: datetime) -> bool:
        """One conditional UPDATE: only a study still receiving, with the ``last_received_at`` that was read."""
        with session_scope(self.session_factory) as session:
            result = session.execute(
                update(Study)
                .where(
                    Study.study_uid == study.study_uid,
                    Study.status == StudyStatus.RECEIVING,
                    Study.last_received_at == study.last_received_at,
                )
                .values(
                    status=StudyStatus.COMPLETE,
                    completed_at=completed_at,
                    completion_reason=CompletionReason(reason).value,
                    completion_count=Study.completion_count + 1,
                )
                .execution_options(synchronize_session=False)
            )
        return result.rowcount == 1


def assembly_timings(settings: Settings) -> AssemblyTimings:
    return AssemblyTimings(
        idle_seconds=settings.study_idle_seconds,
        release_grace_seconds=settings.study_release_grace_seconds,
        max_open_seconds=settings.study_max_open_seconds,
    )


def build_assembler(
    settings: Settings, session_factory: sessionmaker[Session], on_study_complete: StudyCompleteHook
) -> StudyAssembler:
    """The assembler the node runs beside it: timings from the settings, state in the database."""
    return StudyAssembler(DatabaseStudyLedger(session_factory), assembly_timings(settings), on_study_complete)
