"""Read-side queries over what the node received: the rows behind ``m3edge studies list|show`` (and later the API)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from service.db.models import Instance, Series, Study, StudyStatus

__all__ = ["StudySummary", "SeriesSummary", "StudyDetail", "list_studies", "get_study", "StudyNotFound"]


class StudyNotFound(LookupError):
    def __init__(self, study_uid: str) -> None:
        super().__init__(f"no study with Study Instance UID {study_uid!r} has been received")
        self.study_uid = study_uid


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

    def to_json(self) -> dict:
        data = asdict(self)
        data["first_received_at"] = self.first_received_at.isoformat()
        data["last_received_at"] = self.last_received_at.isoformat()
        return data


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
        )
        return data


def _summary_query():
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


def _to_summary(study: Study, series_count: int, instance_count: int, size_bytes: int) -> StudySummary:
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
    )


def list_studies(
    session: Session, *, status: StudyStatus | str | None = None, limit: int = 100, offset: int = 0
) -> list[StudySummary]:
    """Studies, most recently received first."""
    query = _summary_query().order_by(Study.last_received_at.desc(), Study.id.desc()).limit(limit).offset(offset)
    if status is not None:
        query = query.where(Study.status == StudyStatus(status))
    return [_to_summary(*row) for row in session.execute(query).all()]


def get_study(session: Session, study_uid: str) -> StudyDetail:
    row = session.execute(_summary_query().where(Study.study_uid == study_uid)).first()
    if row is None:
        raise StudyNotFound(study_uid)
    study = row[0]
    series_rows = session.execute(
        select(
            Series,
            func.count(Instance.id),
            func.coalesce(func.sum(case((Instance.conflict, 1), else_=0)), 0),
            func.coalesce(func.sum(Instance.size_bytes), 0),
        )
        .outerjoin(Instance, Instance.series_id == Series.id)
        .where(Series.study_id == study.id)
        .group_by(Series.id)
        .order_by(Series.series_number, Series.id)
    ).all()
    return StudyDetail(
        summary=_to_summary(*row),
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
            )
            for s, n, c, b in series_rows
        ],
    )
