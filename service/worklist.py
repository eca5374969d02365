"""The reviewer's worklist: every study with its review state, filtered, searched, sorted and paged in SQL.

A study's *review state* comes from the study and its current report (the newest that is not superseded):

| state | when |
|---|---|
| ``in_progress`` | the study is receiving, complete, queued or processing |
| ``failed`` | the study failed (its latest run, or its UIDs: see ``service.uid_collisions``) |
| ``skipped`` | no routing rule took it |
| ``awaiting_review`` | its report is a draft |
| ``verified`` | its report was approved or amended |
| ``rejected`` | its report was rejected |
| ``no_report`` | done, yet no report (should not happen; shown rather than hidden) |

The default view is what a reader works from: studies awaiting review, urgent first, then the oldest. Skipped studies
show only when asked for. The search matches Patient ID, patient name and accession number (a part of any of them,
without regard to case); it is bounded like every filter, and the rows it returns carry patient data, so whoever
shows them audits the access (``service.patient_access``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sqlalchemy import and_, case, func, literal, or_, select
from sqlalchemy.orm import Session

from service.catalog import StudySummary, summary_query, to_summary
from service.db.models import PipelineRun, Report, ReportStatus, Study, StudyStatus

__all__ = ["ReviewState", "WorklistQuery", "WorklistSort", "WorklistEntry", "query_worklist", "MAX_SEARCH_LENGTH",
           "next_awaiting_review", "STATE_WORDS"]

MAX_SEARCH_LENGTH = 64
MAX_PAGE_SIZE = 500


class ReviewState(str, enum.Enum):
    AWAITING_REVIEW = "awaiting_review"
    VERIFIED = "verified"
    REJECTED = "rejected"
    FAILED = "failed"
    SKIPPED = "skipped"
    IN_PROGRESS = "in_progress"
    NO_REPORT = "no_report"


STATE_WORDS = {
    ReviewState.AWAITING_REVIEW: "awaiting review", ReviewState.VERIFIED: "verified",
    ReviewState.REJECTED: "rejected", ReviewState.FAILED: "failed", ReviewState.SKIPPED: "skipped",
    ReviewState.IN_PROGRESS: "in progress", ReviewState.NO_REPORT: "no report",
}


class WorklistSort(str, enum.Enum):
    """Sortable columns; each sorts ascending, ``-`` in front (``-received``) descending."""

    PRIORITY = "priority"  # urgent first, then the oldest: the default
    RECEIVED = "received"
    STUDY_DATE = "study_date"
    PATIENT_NAME = "patient_name"
    PATIENT_ID = "patient_id"
    MODALITY = "modality"
    STATE = "state"
    DESCRIPTION = "description"


@dataclass
class WorklistQuery:
    """What a reader asked for; ``states`` empty means every state but ``skipped`` (unless ``include_skipped``)."""

    states: tuple[ReviewState, ...] = (ReviewState.AWAITING_REVIEW,)
    modality: str = ""
    date_from: str = ""  # YYYYMMDD, inclusive
    date_to: str = ""
    search: str = ""
    sort: WorklistSort = WorklistSort.PRIORITY
    descending: bool = False
    limit: int = 50
    offset: int = 0
    include_skipped: bool = False

    def __post_init__(self) -> None:
        self.states = tuple(ReviewState(s) for s in self.states)
        self.sort = WorklistSort(self.sort)
        if len(self.search) > MAX_SEARCH_LENGTH:
            raise ValueError(f"search is at most {MAX_SEARCH_LENGTH} characters")
        if not 1 <= self.limit <= MAX_PAGE_SIZE:
            raise ValueError(f"limit is 1-{MAX_PAGE_SIZE}")
        if self.offset < 0:
            raise ValueError("offset is >= 0")


@dataclass(frozen=True)
class WorklistEntry:
    study: StudySummary
    state: ReviewState
    priority: str  # urgent | routine | "" (no run yet)
    report_status: str  # draft | approved | amended | rejected | ""
    report_demo: bool
    run_number: int | None
    run_status: str
    error_stage: str
    error: str
    study_error: str = ""  # why the study itself failed or was skipped (no run, or before one)

    @property
    def state_words(self) -> str:
        """The state in words, with where and why a failure happened ("failed in prepare: <reason>")."""
        if self.state is ReviewState.FAILED:
            reason = (self.error or self.study_error).strip()
            if self.error_stage and reason.startswith(f"{self.error_stage}: "):
                reason = reason[len(self.error_stage) + 2:]  # the run's error names its stage already
            where = f" in {self.error_stage}" if self.error_stage else ""
            return f"failed{where}: {reason}" if reason else f"failed{where}"
        if self.state is ReviewState.IN_PROGRESS:
            status = self.study.status
            return {"receiving": "receiving images", "complete": "complete, waiting for the pipeline",
                    "queued": "queued", "processing": "in progress"}.get(status, "in progress")
        if self.state is ReviewState.SKIPPED:
            return "skipped: " + (self.study_error or "no routing rule took it")
        if self.state is ReviewState.VERIFIED:
            return f"verified ({self.report_status})"
        return STATE_WORDS[self.state]


def _current_reports():
    newest = (select(Report.study_id, func.max(Report.id).label("report_id"))
              .where(Report.status != ReportStatus.SUPERSEDED).group_by(Report.study_id).subquery())
    return select(Report.study_id, Report.status, Report.demo).join(newest, newest.c.report_id == Report.id).subquery()


def _latest_runs():
    newest = (select(PipelineRun.study_id, func.max(PipelineRun.run_number).label("run_number"))
              .group_by(PipelineRun.study_id).subquery())
    return (select(PipelineRun.study_id, PipelineRun.run_number, PipelineRun.status, PipelineRun.priority,
                   PipelineRun.error, PipelineRun.error_stage)
            .join(newest, and_(newest.c.study_id == PipelineRun.study_id,
                               newest.c.run_number == PipelineRun.run_number)).subquery())


def _state_expression(report):
    in_progress = (StudyStatus.RECEIVING.value, StudyStatus.COMPLETE.value, StudyStatus.QUEUED.value,
                   StudyStatus.PROCESSING.value)
    return case(
        (Study.status.in_(in_progress), literal(ReviewState.IN_PROGRESS.value)),
        (Study.status == StudyStatus.FAILED.value, literal(ReviewState.FAILED.value)),
        (Study.status == StudyStatus.SKIPPED.value, literal(ReviewState.SKIPPED.value)),
        (report.c.status == ReportStatus.DRAFT.value, literal(ReviewState.AWAITING_REVIEW.value)),
        (report.c.status.in_((ReportStatus.APPROVED.value, ReportStatus.AMENDED.value)),
         literal(ReviewState.VERIFIED.value)),
        (report.c.status == ReportStatus.REJECTED.value, literal(ReviewState.REJECTED.value)),
        else_=literal(ReviewState.NO_REPORT.value),
    )


def _escaped(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _searched(query, search: str):
    needle = f"%{_escaped(search.strip().lower())}%"
    return query.where(or_(*(func.lower(func.coalesce(column, "")).like(needle, escape="\\")
                             for column in (Study.patient_id, Study.patient_name, Study.accession_number))))


def _filtered(query, request: WorklistQuery, state):
    if request.states:
        query = query.where(state.in_([s.value for s in request.states]))
    elif not request.include_skipped:
        query = query.where(state != ReviewState.SKIPPED.value)
    if request.modality:
        modality = request.modality
        query = query.where(
            (Study.modalities == modality)
            | Study.modalities.startswith(modality + "\\", autoescape=True)
            | Study.modalities.endswith("\\" + modality, autoescape=True)
            | Study.modalities.contains("\\" + modality + "\\", autoescape=True)
        )
    if request.date_from:
        query = query.where(Study.study_date >= request.date_from)
    if request.date_to:
        query = query.where(Study.study_date <= request.date_to)
    if request.search.strip():
        query = _searched(query, request.search)
    return query


def _order(request: WorklistQuery, state, run):
    urgent_first = case((run.c.priority == "urgent", 0), else_=1)
    columns = {
        WorklistSort.PRIORITY: [urgent_first, Study.first_received_at],
        WorklistSort.RECEIVED: [Study.first_received_at],
        WorklistSort.STUDY_DATE: [Study.study_date],
        WorklistSort.PATIENT_NAME: [func.lower(func.coalesce(Study.patient_name, ""))],
        WorklistSort.PATIENT_ID: [func.coalesce(Study.patient_id, "")],
        WorklistSort.MODALITY: [Study.modalities],
        WorklistSort.STATE: [state],
        WorklistSort.DESCRIPTION: [func.lower(Study.study_description)],
    }[request.sort]
    ordered = [c.desc() if request.descending else c.asc() for c in columns]
    return [*ordered, Study.id.desc() if request.descending else Study.id.asc()]


def query_worklist(session: Session, request: WorklistQuery) -> tuple[list[WorklistEntry], int]:
    """One page of the worklist and how many studies match."""
    report, run = _current_reports(), _latest_runs()
    state = _state_expression(report)
    base = (summary_query().add_columns(state.label("state"), run.c.priority, report.c.status, report.c.demo,
                                         run.c.run_number, run.c.status, run.c.error_stage, run.c.error)
            .outerjoin(report, report.c.study_id == Study.id).outerjoin(run, run.c.study_id == Study.id))
    rows = session.execute(_filtered(base, request, state).order_by(*_order(request, state, run))
                           .limit(request.limit).offset(request.offset)).all()
    counted = (select(func.count(Study.id)).select_from(Study)
               .outerjoin(report, report.c.study_id == Study.id).outerjoin(run, run.c.study_id == Study.id))
    total = int(session.execute(_filtered(counted, request, state)).scalar_one())
    entries = []
    for study, series, instances, size, state_value, priority, report_status, demo, run_number, run_status, \
            error_stage, error in rows:
        entry = WorklistEntry(
            study=to_summary(study, series, instances, size), state=ReviewState(state_value),
            priority=priority or "", report_status=_value(report_status), report_demo=bool(demo),
            run_number=run_number, run_status=_value(run_status), error_stage=error_stage or "", error=error or "",
            study_error=study.error or "",
        )
        entries.append(entry)
    return entries, total


def _value(value) -> str:
    if value is None:
        return ""
    return value.value if isinstance(value, enum.Enum) else str(value)


def next_awaiting_review(session: Session, after_study_uid: str | None = None) -> str | None:
    """The study a reader should open next: the first of the default view other than ``after_study_uid``."""
    entries, _ = query_worklist(session, WorklistQuery(limit=2))
    for entry in entries:
        if entry.study.study_uid != after_study_uid:
            return entry.study.study_uid
    return None
