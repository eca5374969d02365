"""Read-side queries over what the node received: the rows behind ``m3edge studies list|show`` (and later the API)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime

from sqlalchemy import case, func, or_, select
from sqlalchemy.orm import Session, aliased

from service.db.models import Instance, Series, Study, StudyStatus, UidCollision

__all__ = [
    "StudySummary",
    "SeriesSummary",
    "StudyDetail",
    "list_studies",
    "count_studies",
    "get_study",
    "StudyNotFound",
    "UidCollisionNote",
    "summary_query",
    "to_summary",
]


class StudyNotFound(LookupError):
    def __init__(self, study_uid: str) -> None:
        super().__init__(f"no study with Study Instance UID {study_uid!r} has been received")
        self.study_uid = study_uid


def _json_with_times(record) -> dict:
    """A dataclass as JSON data, its datetimes as ISO 8601 text."""
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in asdict(record).items()}


@dataclass(frozen=True)
class StudySummary:
    study_uid: str
    description: str
    modalities: str
    status: str
    series_count: int
    instance_count: int
    size_bytes: int
    study_date: str
    first_received_at: datetime
    last_received_at: datetime
    # Patient context (None: not recorded, the study arrived before m3edge kept it). Never logged; reading it is audited
    # by whoever shows it (``service.patient_access``).
    patient_name: str | None = field(default=None, repr=False)
    patient_id: str | None = field(default=None, repr=False)
    accession_number: str | None = field(default=None, repr=False)

    def to_json(self) -> dict:
        return _json_with_times(self)


@dataclass(frozen=True)
class SeriesSummary:
    series_uid: str
    series_number: int | None
    modality: str
    description: str
    body_part_examined: str
    instance_count: int
    conflict_count: int
    size_bytes: int
    other_patient_count: int = 0  # instances of another patient under this study's UID: kept, never served


@dataclass(frozen=True)
class UidCollisionNote:
    """A Series or SOP Instance UID of this study that is also stored under another study (kept apart, flagged).

    ``arrived_here_later``: this study received it after ``other_study_uid`` had (else the other way round)."""

    kind: str  # series | instance | study (two Patient IDs under one Study Instance UID)
    uid: str
    other_study_uid: str
    arrived_here_later: bool
    detected_at: datetime

    def to_json(self) -> dict:
        return _json_with_times(self)

    def describe(self) -> str:
        if self.kind == "study":
            return (f"Study Instance UID {self.uid} arrived with a second Patient ID: two patients under one study "
                    "UID. The study is not processed (no report may mix them); ask the sender to correct its UIDs")
        what = "Series Instance UID" if self.kind == "series" else "SOP Instance UID"
        order = "after" if self.arrived_here_later else "before"
        return (f"{what} {self.uid} also arrived in study {self.other_study_uid} ({order} this one): each copy is "
                "kept under its own study, never merged; check the sender's UIDs")


def uid_collisions(session: Session, study_id: int) -> list[UidCollisionNote]:
    other = aliased(Study)
    rows = session.execute(
        select(UidCollision, other.study_uid)
        .join(other, other.id == case((UidCollision.study_id == study_id, UidCollision.other_study_id),
                                      else_=UidCollision.study_id))
        .where(or_(UidCollision.study_id == study_id, UidCollision.other_study_id == study_id))
        .order_by(UidCollision.id)
    ).all()
    return [UidCollisionNote(c.kind.value, c.uid, other_uid, c.study_id == study_id, c.detected_at)
            for c, other_uid in rows]


@dataclass(frozen=True)
class StudyDetail:
    summary: StudySummary
    calling_ae: str
    completed_at: datetime | None
    completion_reason: str
    completion_count: int
    reprocess_requested: bool
    error: str
    series: list[SeriesSummary] = field(default_factory=list)
    uid_collisions: list[UidCollisionNote] = field(default_factory=list)

    def to_json(self) -> dict:
        data = self.summary.to_json()
        data.update(
            calling_ae=self.calling_ae,
            completed_at=self.completed_at.isoformat() if self.completed_at else None,
            completion_reason=self.completion_reason,
            completion_count=self.completion_count,
            reprocess_requested=self.reprocess_requested,
            error=self.error,
            series=[asdict(s) for s in self.series],
            uid_collisions=[c.to_json() for c in self.uid_collisions],
        )
        return data


def summary_query():
    per_study = (
        select(
            Series.study_id.label("study_id"),
            func.count(func.distinct(Series.id)).label("series_count"),
            func.count(Instance.id).label("instance_count"),
            func.coalesce(func.sum(Instance.size_bytes), 0).label("size_bytes"),
        )
        .outerjoin(Instance, Instance.series_id == Series.id)
        .group_by(Series.study_id)
        .subquery()
    )
    return select(
        Study,
        func.coalesce(per_study.c.series_count, 0),
        func.coalesce(per_study.c.instance_count, 0),
        func.coalesce(per_study.c.size_bytes, 0),
    ).outerjoin(per_study, per_study.c.study_id == Study.id)


def to_summary(study: Study, series_count: int, instance_count: int, size_bytes: int) -> StudySummary:
    return StudySummary(
        study_uid=study.study_uid,
        description=study.study_description,
        modalities=study.modalities,
        status=StudyStatus(study.status).value,
        series_count=int(series_count),
        instance_count=int(instance_count),
        size_bytes=int(size_bytes),
        study_date=study.study_date,
        first_received_at=study.first_received_at,
        last_received_at=study.last_received_at,
        patient_name=study.patient_name,
        patient_id=study.patient_id,
        accession_number=study.accession_number,
    )


def _filtered(query, status, modality, date_from, date_to):
    if status is not None:
        query = query.where(Study.status == StudyStatus(status))
    if modality:
        # modalities are stored joined by backslashes ("CT\\SR"); match a whole code
        query = query.where(
            (Study.modalities == modality)
            | Study.modalities.startswith(modality + "\\", autoescape=True)
            | Study.modalities.endswith("\\" + modality, autoescape=True)
            | Study.modalities.contains("\\" + modality + "\\", autoescape=True)
        )
    if date_from:
        query = query.where(Study.study_date >= date_from)
    if date_to:
        query = query.where(Study.study_date <= date_to)
    return query


def list_studies(
    session: Session,
    *,
    status: StudyStatus | str | None = None,
    modality: str | None = None,
    date_from: str | None = None,
    date_to: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[StudySummary]:
    """Studies, most recently received first. Dates are DICOM dates (YYYYMMDD), inclusive."""
    query = _filtered(summary_query(), status, modality, date_from, date_to)
    query = query.order_by(Study.last_received_at.desc(), Study.id.desc()).limit(limit).offset(offset)
    return [to_summary(*row) for row in session.execute(query).all()]


def count_studies(session: Session, *, status=None, modality=None, date_from=None, date_to=None) -> int:
    query = _filtered(select(func.count(Study.id)), status, modality, date_from, date_to)
    return int(session.execute(query).scalar_one())


def get_study(session: Session, study_uid: str) -> StudyDetail:
    row = session.execute(summary_query().where(Study.study_uid == study_uid)).first()
    if row is None:
        raise StudyNotFound(study_uid)
    study = row[0]
    series_rows = session.execute(
        select(
            Series,
            func.count(Instance.id),
            func.coalesce(func.sum(case((Instance.conflict, 1), else_=0)), 0),
            func.coalesce(func.sum(Instance.size_bytes), 0),
            func.coalesce(func.sum(case((Instance.other_patient, 1), else_=0)), 0),
        )
        .outerjoin(Instance, Instance.series_id == Series.id)
        .where(Series.study_id == study.id)
        .group_by(Series.id)
        .order_by(Series.series_number, Series.id)
    ).all()
    return StudyDetail(
        summary=to_summary(*row),
        calling_ae=study.calling_ae,
        completed_at=study.completed_at,
        completion_reason=study.completion_reason,
        completion_count=study.completion_count,
        reprocess_requested=study.reprocess_requested,
        error=study.error,
        series=[
            SeriesSummary(
                series_uid=s.series_uid,
                series_number=s.series_number,
                modality=s.modality,
                description=s.series_description,
                body_part_examined=s.body_part_examined,
                instance_count=int(n),
                conflict_count=int(c),
                size_bytes=int(b),
                other_patient_count=int(o),
            )
            for s, n, c, b, o in series_rows
        ],
        uid_collisions=uid_collisions(session, study.id),
    )


@dataclass(frozen=True)
class StageTiming:
    stage: str
    status: str
    attempts: int
    started_at: datetime | None
    finished_at: datetime | None
    duration_s: float | None
    error: str

    def to_json(self) -> dict:
        return {
            "stage": self.stage,
            "status": self.status,
            "attempts": self.attempts,
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "duration_s": self.duration_s,
            "error": self.error,
        }


@dataclass(frozen=True)
class RunSummary:
    run_number: int
    trigger: str
    status: str
    route: dict
    error: str
    error_stage: str
    created_at: datetime
    finished_at: datetime | None
    stages: list[StageTiming]

    def to_json(self) -> dict:
        return {
            "run_number": self.run_number,
            "trigger": self.trigger,
            "status": self.status,
            "route": self.route,
            "error": self.error,
            "error_stage": self.error_stage,
            "created_at": self.created_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "stages": [s.to_json() for s in self.stages],
        }


def study_runs(session: Session, study_uid: str) -> list[RunSummary]:
    """Every pipeline run of a study, newest first, with per-stage timings and errors."""
    from service.db.models import PipelineRun
    from service.pipeline.stages import STAGE_ORDER

    order = {stage.value: i for i, stage in enumerate(STAGE_ORDER)}
    runs = session.execute(
        select(PipelineRun).join(Study, Study.id == PipelineRun.study_id).where(Study.study_uid == study_uid)
        .order_by(PipelineRun.run_number.desc())
    ).scalars().all()
    summaries = []
    for run in runs:
        stages = []
        for row in sorted(run.stages, key=lambda r: order.get(r.stage, 99)):
            duration = None
            if row.started_at and row.finished_at:
                duration = round((row.finished_at - row.started_at).total_seconds(), 3)
            stages.append(StageTiming(row.stage, row.status.value, row.attempts, row.started_at, row.finished_at,
                                      duration, row.error))
        summaries.append(RunSummary(run.run_number, run.trigger, run.status.value, dict(run.route or {}), run.error,
                                    run.error_stage, run.created_at, run.finished_at, stages))
    return summaries
