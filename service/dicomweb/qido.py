"""QIDO-RS over the catalogue: studies, series and instances matched in SQL, answered in the DICOM JSON Model.

The catalogue holds no patient attributes (by design: names, IDs and birth dates never enter the database), so QIDO
matches on, and returns, what it does hold; a query on anything else is refused with a 400 that lists what works.
Values are bound parameters: a query parameter never becomes SQL text.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

from pydicom.datadict import keyword_for_tag
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.db.models import Instance, Series, Study
from service.dicomweb.dicom_json import attribute

__all__ = ["QidoLevel", "QidoQuery", "QidoError", "parse_qido", "search"]

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_DATE_RANGE = re.compile(r"^(\d{8})?(-(\d{8})?)?$")
_CODE = re.compile(r"^[A-Z0-9_ ]{1,16}$")
_CONTROL = {"limit", "offset", "includefield", "fuzzymatching"}
MAX_LIMIT = 1000


class QidoLevel(str, enum.Enum):
    STUDY = "study"
    SERIES = "series"
    INSTANCE = "instance"


class QidoError(ValueError):
    """A query the catalogue cannot answer; the message says what can be asked instead (a 400)."""


STUDY_KEYS = {"StudyInstanceUID", "StudyDate", "ModalitiesInStudy", "StudyDescription"}
SERIES_KEYS = {"SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription", "BodyPartExamined"}
INSTANCE_KEYS = {"SOPInstanceUID", "SOPClassUID"}
KEYS = {QidoLevel.STUDY: STUDY_KEYS, QidoLevel.SERIES: STUDY_KEYS | SERIES_KEYS,
        QidoLevel.INSTANCE: STUDY_KEYS | SERIES_KEYS | INSTANCE_KEYS}


@dataclass
class QidoQuery:
    level: QidoLevel
    filters: dict[str, list[str]] = field(default_factory=dict)
    limit: int = 100
    offset: int = 0
    warnings: list[str] = field(default_factory=list)


def _keyword(key: str) -> str:
    if re.fullmatch(r"[0-9A-Fa-f]{8}", key):
        return keyword_for_tag(int(key, 16)) or key
    return key


def _split(values: list[str]) -> list[str]:
    return [part.strip() for value in values for part in re.split(r"[,\\]", value) if part.strip()]


def _check(keyword: str, values: list[str]) -> list[str]:
    if keyword.endswith("UID"):
        for value in values:
            if not _UID.match(value) or len(value) > 64:
                raise QidoError(f"{keyword}={value!r} is not a UID (digits and dots, at most 64 characters)")
    elif keyword == "StudyDate":
        if len(values) != 1 or not _DATE_RANGE.match(values[0]) or values[0] in ("", "-"):
            raise QidoError("StudyDate is YYYYMMDD or a range YYYYMMDD-YYYYMMDD (either end may be left open)")
    elif keyword in ("Modality", "ModalitiesInStudy", "BodyPartExamined"):
        for value in values:
            if not _CODE.match(value):
                raise QidoError(f"{keyword}={value!r} is not a code string (A-Z, 0-9, _ and space, 1-16 characters)")
    elif keyword == "SeriesNumber":
        if len(values) != 1 or not re.fullmatch(r"-?\d{1,10}", values[0]):
            raise QidoError("SeriesNumber is one integer")
    elif any(len(v) > 64 for v in values):
        raise QidoError(f"{keyword} values are at most 64 characters")
    return values


def parse_qido(items: list[tuple[str, str]], level: QidoLevel, *, limit: int, offset: int) -> QidoQuery:
    """Check every query parameter; raise ``QidoError`` for one the catalogue cannot answer."""
    query = QidoQuery(level, limit=limit, offset=offset)
    supported = KEYS[level]
    collected: dict[str, list[str]] = {}
    for key, value in items:
        if key in _CONTROL:
            if key == "fuzzymatching" and value.lower() == "true":
                query.warnings.append('299 m3edge "fuzzymatching is not supported; matching is exact or by wildcard"')
            continue
        keyword = _keyword(key)
        if keyword not in supported:
            raise QidoError(f"cannot match on {key!r} here; this level matches on {', '.join(sorted(supported))} "
                            "(the catalogue holds no patient attributes)")
        if value.strip():
            collected.setdefault(keyword, []).append(value)
    for keyword, values in collected.items():
        parts = values if keyword.endswith("Description") or keyword == "StudyDate" else _split(values)
        query.filters[keyword] = _check(keyword, parts)
    return query


def _like(pattern: str):
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _text_match(column, values: list[str]):
    value = values[0]
    if "*" in value or "?" in value:
        return column.like(_like(value), escape="\\")
    return column == value


def _where(query, filters: dict[str, list[str]]):
    for keyword, values in filters.items():
        if keyword == "StudyInstanceUID":
            query = query.where(Study.study_uid.in_(values))
        elif keyword == "StudyDate":
            low, dash, high = values[0].partition("-")
            if not dash:
                query = query.where(Study.study_date == low)
            else:
                query = query.where(Study.study_date != "")
                if low:
                    query = query.where(Study.study_date >= low)
                if high:
                    query = query.where(Study.study_date <= high)
        elif keyword == "ModalitiesInStudy":
            query = query.where(Study.id.in_(select(Series.study_id).where(Series.modality.in_(values))))
        elif keyword == "StudyDescription":
            query = query.where(_text_match(Study.study_description, values))
        elif keyword == "SeriesInstanceUID":
            query = query.where(Series.series_uid.in_(values))
        elif keyword == "Modality":
            query = query.where(Series.modality.in_(values))
        elif keyword == "SeriesNumber":
            query = query.where(Series.series_number == int(values[0]))
        elif keyword == "SeriesDescription":
            query = query.where(_text_match(Series.series_description, values))
        elif keyword == "BodyPartExamined":
            query = query.where(Series.body_part_examined.in_(values))
        elif keyword == "SOPInstanceUID":
            query = query.where(Instance.sop_instance_uid.in_(values))
        elif keyword == "SOPClassUID":
            query = query.where(Instance.sop_class_uid.in_(values))
    return query


def _study_json(study: Study, modalities: list[str], series: int, instances: int, base: str) -> dict:
    return {
        "00080020": attribute("DA", study.study_date),
        "00080061": attribute("CS", *modalities),
        "00081030": attribute("LO", study.study_description),
        "00081190": attribute("UR", f"{base}/studies/{study.study_uid}"),
        "0020000D": attribute("UI", study.study_uid),
        "00201206": attribute("IS", series),
        "00201208": attribute("IS", instances),
    }


def _series_json(study: Study, series: Series, instances: int, base: str) -> dict:
    return {
        "00080060": attribute("CS", series.modality),
        "0008103E": attribute("LO", series.series_description),
        "00081190": attribute("UR", f"{base}/studies/{study.study_uid}/series/{series.series_uid}"),
        "00180015": attribute("CS", series.body_part_examined),
        "0020000D": attribute("UI", study.study_uid),
        "0020000E": attribute("UI", series.series_uid),
        "00200011": attribute("IS", series.series_number),
        "00201209": attribute("IS", instances),
    }


def _instance_json(study: Study, series: Series, instance: Instance, base: str) -> dict:
    return {
        "00080016": attribute("UI", instance.sop_class_uid),
        "00080018": attribute("UI", instance.sop_instance_uid),
        "00080060": attribute("CS", series.modality),
        "00081190": attribute("UR", f"{base}/studies/{study.study_uid}/series/{series.series_uid}"
                                    f"/instances/{instance.sop_instance_uid}"),
        "00083002": attribute("UI", instance.transfer_syntax_uid),
        "0020000D": attribute("UI", study.study_uid),
        "0020000E": attribute("UI", series.series_uid),
    }


def _held():
    """Instances QIDO and WADO serve: a second copy kept for a conflicting re-send is not one of them."""
    return Instance.conflict.is_(False)


def _search_studies(session: Session, query: QidoQuery, base: str) -> list[dict]:
    ids = _where(select(Study.id).outerjoin(Series, Series.study_id == Study.id), query.filters).distinct()
    studies = session.execute(
        select(Study).where(Study.id.in_(ids)).order_by(Study.id).limit(query.limit).offset(query.offset)
    ).scalars().all()
    if not studies:
        return []
    counts = {
        study_id: (series, instances)
        for study_id, series, instances in session.execute(
            select(Series.study_id, func.count(func.distinct(Series.id)), func.count(Instance.id))
            .outerjoin(Instance, (Instance.series_id == Series.id) & _held())
            .where(Series.study_id.in_([s.id for s in studies])).group_by(Series.study_id)
        )
    }
    modalities: dict[int, set[str]] = {}
    for study_id, modality in session.execute(
        select(Series.study_id, Series.modality).where(Series.study_id.in_([s.id for s in studies])).distinct()
    ):
        if modality:
            modalities.setdefault(study_id, set()).add(modality)
    return [_study_json(s, sorted(modalities.get(s.id, ())), *counts.get(s.id, (0, 0)), base) for s in studies]


def _search_series(session: Session, query: QidoQuery, base: str) -> list[dict]:
    count = select(func.count(Instance.id)).where(Instance.series_id == Series.id, _held()).scalar_subquery()
    rows = session.execute(
        _where(select(Study, Series, count).join(Series, Series.study_id == Study.id), query.filters)
        .order_by(Series.id).limit(query.limit).offset(query.offset)
    ).all()
    return [_series_json(study, series, int(n), base) for study, series, n in rows]


def _search_instances(session: Session, query: QidoQuery, base: str) -> list[dict]:
    rows = session.execute(
        _where(select(Study, Series, Instance).join(Series, Series.study_id == Study.id)
               .join(Instance, Instance.series_id == Series.id).where(_held()), query.filters)
        .order_by(Instance.id).limit(query.limit).offset(query.offset)
    ).all()
    return [_instance_json(study, series, instance, base) for study, series, instance in rows]


def search(session: Session, query: QidoQuery, base: str) -> list[dict]:
    """The DICOM JSON answers to ``query``; ``base`` is the DICOMweb root URL for RetrieveURL."""
    if query.level is QidoLevel.STUDY:
        return _search_studies(session, query, base)
    if query.level is QidoLevel.SERIES:
        return _search_series(session, query, base)
    return _search_instances(session, query, base)
