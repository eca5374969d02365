"""The worklist's rows: the catalog's studies with their latest pipeline run, its stage timings and errors.

Filters come from a browser's query string, so they are checked here and a bad one becomes a message on the page
(the filter is then not applied), never an error page.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.catalog import StudySummary, count_studies, list_studies
from service.db.models import PipelineRun, Report, ReportStatus, Study, StudyStatus

__all__ = ["WorklistFilters", "WorklistRow", "StageCell", "worklist_rows", "PAGE_SIZE"]

PAGE_SIZE = 50
_MODALITY = re.compile(r"^[A-Z]{1,16}$")
_DATE = re.compile(r"^(\d{4})-?(\d{2})-?(\d{2})$")


@dataclass
class WorklistFilters:
    status: str = ""
    modality: str = ""
    date_from: str = ""  # YYYYMMDD
    date_to: str = ""
    offset: int = 0
    problems: list[str] = field(default_factory=list)

    @classmethod
    def from_query(cls, query: dict[str, str]) -> WorklistFilters:
        filters = cls()
        status = query.get("status", "").strip().lower()
        if status:
            if status in {s.value for s in StudyStatus}:
                filters.status = status
            else:
                filters.problems.append(f"unknown status {status[:32]!r}")
        modality = query.get("modality", "").strip().upper()
        if modality:
            if _MODALITY.match(modality):
                filters.modality = modality
            else:
                filters.problems.append("a modality is 1-16 letters, e.g. CT")
        for key in ("date_from", "date_to"):
            value = query.get(key, "").strip()
            if not value:
                continue
            match = _DATE.match(value)
            if match:
                setattr(filters, key, "".join(match.groups()))
            else:
                filters.problems.append(f"{key.replace('_', ' ')}: use a date like 2026-01-31")
        offset = query.get("offset", "0")
        filters.offset = int(offset) if offset.isdigit() and int(offset) < 10_000_000 else 0
        return filters

    def query_args(self, **overrides) -> dict[str, str]:
        """The filters as query parameters (for links and the live refresh), without the empty ones."""
        values = {"status": self.status, "modality": self.modality, "date_from": self.date_from,
                  "date_to": self.date_to, "offset": str(self.offset) if self.offset else ""}
        values.update({k: str(v) for k, v in overrides.items()})
        return {k: v for k, v in values.items() if v and v != "0"}


@dataclass(frozen=True)
class StageCell:
    stage: str
    status: str
    duration_s: float | None
    error: str


@dataclass(frozen=True)
class WorklistRow:
    study: StudySummary
    run_number: int | None
    run_status: str
    stages: list[StageCell]
    error: str
    report_status: str


def _latest_runs(session: Session, study_uids: list[str]) -> dict[str, PipelineRun]:
    runs = session.execute(
        select(Study.study_uid, PipelineRun).join(PipelineRun, PipelineRun.study_id == Study.id)
        .where(Study.study_uid.in_(study_uids)).order_by(PipelineRun.run_number)
    ).all()
    return {uid: run for uid, run in runs}  # the last (highest run number) wins


def _report_states(session: Session, study_uids: list[str]) -> dict[str, str]:
    rows = session.execute(
        select(Study.study_uid, Report.status).join(Report, Report.study_id == Study.id)
        .where(Study.study_uid.in_(study_uids), Report.status != ReportStatus.SUPERSEDED).order_by(Report.id)
    ).all()
    return {uid: ReportStatus(status).value for uid, status in rows}


def worklist_rows(session: Session, filters: WorklistFilters) -> tuple[list[WorklistRow], int]:
    """One page of rows and the number of studies matching the filters."""
    from service.pipeline.stages import STAGE_ORDER

    order = {stage.value: i for i, stage in enumerate(STAGE_ORDER)}
    criteria = {"status": filters.status or None, "modality": filters.modality or None,
                "date_from": filters.date_from or None, "date_to": filters.date_to or None}
    studies = list_studies(session, limit=PAGE_SIZE, offset=filters.offset, **criteria)
    total = count_studies(session, **criteria)
    uids = [s.study_uid for s in studies]
    runs = _latest_runs(session, uids) if uids else {}
    reports = _report_states(session, uids) if uids else {}
    rows = []
    for study in studies:
        run = runs.get(study.study_uid)
        stages: list[StageCell] = []
        if run is not None:
            for row in sorted(run.stages, key=lambda r: order.get(r.stage, 99)):
                duration = (row.finished_at - row.started_at).total_seconds() \
                    if row.started_at and row.finished_at else None
                stages.append(StageCell(row.stage, row.status.value, duration, row.error))
        rows.append(WorklistRow(
            study=study,
            run_number=run.run_number if run else None,
            run_status=run.status.value if run else "",
            stages=stages,
            error=(run.error if run else "") or "",
            report_status=reports.get(study.study_uid, ""),
        ))
    return rows, total
