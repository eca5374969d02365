"""QIDO-RS over the catalogue: studies, series and instances matched in SQL, answered in the DICOM JSON Model.

The catalogue holds the study's descriptive attributes and its patient context (PatientName, PatientID,
AccessionNumber; never birth dates), so QIDO matches on, and returns, what it holds; a query on anything else is
refused with a 400 that lists what works. Matching is PS3.18 8.3.4 / PS3.4 C.2.2.2: universal (empty), single
value, a list of UIDs, date ranges and wildcards ``*`` and ``?`` through the matcher C-FIND uses
(``dicom_node.qr.matching.WildcardPattern``: SQL ``LIKE`` with escaping, SQLite's ``GLOB`` where ``LIKE`` would ignore
case). PatientName matches without regard to case (PostgreSQL: Unicode; SQLite: ASCII letters); everything else
exactly. Fuzzy matching is off unless the query says ``fuzzymatching=true``; then a PatientName without wildcards
matches every name holding each of its words (split at spaces, ``^``, ``,`` and ``=``; any case, any order: ``john
doe`` finds ``DOE^JOHN``), and the other keys match as above.
Each value is at most 64 characters (PatientName 194: three component groups). Values are bound parameters: a query
parameter never becomes SQL text.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from pydicom.datadict import keyword_for_tag
from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from dicom_node.qr.matching import WildcardPattern, has_wildcard
from service.db.models import Instance, Series, Study
from service.dicomweb.dicom_json import attribute
from service.dicomweb.results import ResultInstances

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


STUDY_KEYS = {"StudyInstanceUID", "StudyDate", "ModalitiesInStudy", "StudyDescription", "PatientName", "PatientID",
              "AccessionNumber"}
# The keys whose answers carry patient data: every search is audited with the studies it returned.
PATIENT_KEYS = {"PatientName", "PatientID", "AccessionNumber"}
_MAX_LENGTH = {"PatientName": 194, "AccessionNumber": 16}
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
    fuzzy: bool = False  # fuzzymatching=true: PatientName by its words (PS3.18 8.3.4.6 leaves the method to the server)


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
    elif any(len(v) > _MAX_LENGTH.get(keyword, 64) for v in values):
        raise QidoError(f"{keyword} values are at most {_MAX_LENGTH.get(keyword, 64)} characters")
    elif keyword in PATIENT_KEYS and len(values) != 1:
        raise QidoError(f"{keyword} takes one value (with wildcards * and ? if you like)")
    return values


def parse_qido(items: list[tuple[str, str]], level: QidoLevel, *, limit: int, offset: int) -> QidoQuery:
    """Check every query parameter; raise ``QidoError`` for one the catalogue cannot answer."""
    query = QidoQuery(level, limit=limit, offset=offset)
    supported = KEYS[level]
    collected: dict[str, list[str]] = {}
    for key, value in items:
        if key in _CONTROL:
            if key == "fuzzymatching":
                query.fuzzy = value.strip().lower() == "true"
            continue
        keyword = _keyword(key)
        if keyword not in supported:
            raise QidoError(f"cannot match on {key!r} here; this level matches on {', '.join(sorted(supported))}")
        if value.strip():
            collected.setdefault(keyword, []).append(value)
    for keyword, values in collected.items():
        parts = values if keyword.endswith("Description") or keyword in {"StudyDate", "PatientName", "PatientID",
                                                                          "AccessionNumber"} else _split(values)
        query.filters[keyword] = _check(keyword, parts)
    return query


def _text_match(column, values: list[str], dialect: str = "postgresql", *, ignore_case: bool = False):
    """Single-value or wildcard matching of a text column (PS3.4 C.2.2.2.1/C.2.2.2.4), the same as C-FIND's."""
    value = values[0]
    if has_wildcard(value):
        pattern = WildcardPattern(value, ignore_case=ignore_case)
        if ignore_case:
            return func.lower(column).like(pattern.sql_like().lower(), escape="\\")
        if dialect == "sqlite":  # SQLite's LIKE ignores the case of ASCII letters; GLOB does not
            return column.op("GLOB")(pattern.sql_glob())
        return column.like(pattern.sql_like(), escape="\\")
    if ignore_case:
        return func.lower(column) == value.lower()
    return column == value


_NAME_WORDS = re.compile(r"[\s^,=]+")


def _fuzzy_name(column, value: str):
    """Every word of ``value`` somewhere in the name, any case (LIKE with its wildcards escaped)."""
    words = [w for w in _NAME_WORDS.split(value.lower()) if w][:8]
    escaped = [w.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") for w in words]
    return and_(*(func.lower(column).like(f"%{w}%", escape="\\") for w in escaped)) if escaped else column.is_not(None)


def _where(query, filters: dict[str, list[str]], dialect: str = "postgresql", fuzzy: bool = False):
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
            query = query.where(_text_match(Study.study_description, values, dialect))
        elif keyword == "PatientName" and fuzzy and not has_wildcard(values[0]):
            query = query.where(_fuzzy_name(Study.patient_name, values[0]))
        elif keyword == "PatientName":
            query = query.where(_text_match(Study.patient_name, values, dialect, ignore_case=True))
        elif keyword == "PatientID":
            query = query.where(_text_match(Study.patient_id, values, dialect))
        elif keyword == "AccessionNumber":
            query = query.where(_text_match(Study.accession_number, values, dialect))
        elif keyword == "SeriesInstanceUID":
            query = query.where(Series.series_uid.in_(values))
        elif keyword == "Modality":
            query = query.where(Series.modality.in_(values))
        elif keyword == "SeriesNumber":
            query = query.where(Series.series_number == int(values[0]))
        elif keyword == "SeriesDescription":
            query = query.where(_text_match(Series.series_description, values, dialect))
        elif keyword == "BodyPartExamined":
            query = query.where(Series.body_part_examined.in_(values))
        elif keyword == "SOPInstanceUID":
            query = query.where(Instance.sop_instance_uid.in_(values))
        elif keyword == "SOPClassUID":
            query = query.where(Instance.sop_class_uid.in_(values))
    return query


def _person_name(name: str | None) -> dict:
    """A PN attribute with its component groups (Alphabetic=Ideographic=Phonetic, PS3.18 F.2.2)."""
    if not name:
        return {"vr": "PN"}
    groups = dict(zip(("Alphabetic", "Ideographic", "Phonetic"), name.split("=")))
    return {"vr": "PN", "Value": [{k: v for k, v in groups.items() if v}]}


def _study_json(study: Study, modalities: list[str], series: int, instances: int, base: str) -> dict:
    return {
        "00080020": attribute("DA", study.study_date),
        "00080050": attribute("SH", study.accession_number),
        "00080061": attribute("CS", *modalities),
        "00081030": attribute("LO", study.study_description),
        "00081190": attribute("UR", f"{base}/studies/{study.study_uid}"),
        "00100010": _person_name(study.patient_name),
        "00100020": attribute("LO", study.patient_id),
        "0020000D": attribute("UI", study.study_uid),
        "00201206": attribute("IS", series),
        "00201208": attribute("IS", instances),
    }


def _series_json(study_uid: str, series_uid: str, modality: str, description: str, body_part: str, number,
                 instances: int, base: str) -> dict:
    return {
        "00080060": attribute("CS", modality),
        "0008103E": attribute("LO", description),
        "00081190": attribute("UR", f"{base}/studies/{study_uid}/series/{series_uid}"),
        "00180015": attribute("CS", body_part),
        "0020000D": attribute("UI", study_uid),
        "0020000E": attribute("UI", series_uid),
        "00200011": attribute("IS", int(number) if str(number or "").lstrip("-").isdigit() else None),
        "00201209": attribute("IS", instances),
    }


def _instance_json(study_uid: str, series_uid: str, sop_class_uid: str, sop_uid: str, modality: str,
                   transfer_syntax_uid: str, base: str) -> dict:
    return {
        "00080016": attribute("UI", sop_class_uid),
        "00080018": attribute("UI", sop_uid),
        "00080060": attribute("CS", modality),
        "00081190": attribute("UR", f"{base}/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"),
        "00083002": attribute("UI", transfer_syntax_uid),
        "0020000D": attribute("UI", study_uid),
        "0020000E": attribute("UI", series_uid),
    }


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def _held():
    """Instances QIDO and WADO serve: neither a second copy kept for a conflicting re-send, nor an instance of another
    patient that arrived under the study's UID (kept and flagged, never served with it)."""
    return Instance.conflict.is_(False) & Instance.other_patient.is_(False)


def _search_studies(session: Session, query: QidoQuery, base: str, results: ResultInstances | None) -> list[dict]:
    ids = _where(select(Study.id).outerjoin(Series, Series.study_id == Study.id), query.filters,
                 _dialect(session), query.fuzzy).distinct()
    studies = session.execute(
        select(Study).where(Study.id.in_(ids)).order_by(Study.id).limit(query.limit).offset(query.offset)
    ).scalars().all()
    if not studies:
        return []
    counts = {
        study_id: [series, instances]
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
    if results is not None:  # the results m3edge made are series of these studies too
        ids_by_uid = {s.study_uid: s.id for s in studies}
        produced = results.of_studies(list(ids_by_uid))
        for study_uid, study_id in ids_by_uid.items():
            mine = [r for r in produced if r.study_uid == study_uid]
            if mine:
                count = counts.setdefault(study_id, [0, 0])
                count[0] += len({r.series_uid for r in mine})
                count[1] += len(mine)
                modalities.setdefault(study_id, set()).update(r.modality for r in mine if r.modality)
    return [_study_json(s, sorted(modalities.get(s.id, ())), *counts.get(s.id, (0, 0)), base) for s in studies]


def _result_study_uids(session: Session, query: QidoQuery) -> list[str] | None:
    """The studies whose results may match: those matching the study-level keys (``None``: no such key, all)."""
    study_filters = {k: v for k, v in query.filters.items() if k in STUDY_KEYS}
    if not study_filters:
        return None
    return list(session.scalars(
        _where(select(Study.study_uid).outerjoin(Series, Series.study_id == Study.id), study_filters,
               _dialect(session), query.fuzzy).distinct()))


def _page(query: QidoQuery, rows: list[dict], count_held: Callable[[], int], produced: Callable[[], list[dict]]
          ) -> list[dict]:
    """One page over the received rows (already limited and offset in SQL) followed by the produced ones."""
    if len(rows) >= query.limit:
        return rows
    received = query.offset + len(rows) if rows else count_held()
    start = max(0, query.offset - received)
    return rows + produced()[start:start + query.limit - len(rows)]


def _search_series(session: Session, query: QidoQuery, base: str, results: ResultInstances | None) -> list[dict]:
    count = select(func.count(Instance.id)).where(Instance.series_id == Series.id, _held()).scalar_subquery()
    served = select(Instance.id).where(Instance.series_id == Series.id, _held()).exists()  # not another patient's
    matching = _where(select(Study, Series, count).join(Series, Series.study_id == Study.id).where(served),
                      query.filters, _dialect(session), query.fuzzy)
    rows = [
        _series_json(study.study_uid, series.series_uid, series.modality, series.series_description,
                     series.body_part_examined, series.series_number, int(n), base)
        for study, series, n in session.execute(
            matching.order_by(Series.id).limit(query.limit).offset(query.offset)).all()
    ]
    if results is None:
        return rows

    def produced() -> list[dict]:
        by_series: dict[str, list] = {}
        for r in results.of_studies(_result_study_uids(session, query), query.filters):
            by_series.setdefault(r.series_uid, []).append(r)
        return [_series_json(m[0].study_uid, uid, m[0].modality, m[0].series_description, m[0].body_part_examined,
                             m[0].series_number, len(m), base) for uid, m in by_series.items()]

    return _page(query, rows, lambda: session.scalar(select(func.count()).select_from(matching.subquery())),
                 produced)


def _search_instances(session: Session, query: QidoQuery, base: str, results: ResultInstances | None) -> list[dict]:
    matching = _where(select(Study.study_uid, Series.series_uid, Series.modality, Instance)
                      .join(Series, Series.study_id == Study.id).join(Instance, Instance.series_id == Series.id)
                      .where(_held()), query.filters, _dialect(session), query.fuzzy)
    rows = [
        _instance_json(study_uid, series_uid, i.sop_class_uid, i.sop_instance_uid, modality, i.transfer_syntax_uid,
                       base)
        for study_uid, series_uid, modality, i in session.execute(
            matching.order_by(Instance.id).limit(query.limit).offset(query.offset)).all()
    ]
    if results is None:
        return rows

    def produced() -> list[dict]:
        return [_instance_json(r.study_uid, r.series_uid, r.sop_class_uid, r.sop_instance_uid, r.modality,
                               r.transfer_syntax_uid, base)
                for r in results.of_studies(_result_study_uids(session, query), query.filters)]

    return _page(query, rows, lambda: session.scalar(select(func.count()).select_from(matching.subquery())),
                 produced)


def search(session: Session, query: QidoQuery, base: str, results: ResultInstances | None = None) -> list[dict]:
    """The DICOM JSON answers to ``query`` (``base``: the DICOMweb root URL, for RetrieveURL); with ``results``,
    the objects m3edge produced are answered after the received ones."""
    if query.level is QidoLevel.STUDY:
        return _search_studies(session, query, base, results)
    if query.level is QidoLevel.SERIES:
        return _search_series(session, query, base, results)
    return _search_instances(session, query, base, results)
