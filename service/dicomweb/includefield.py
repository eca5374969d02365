"""QIDO-RS ``includefield`` (PS3.18 8.3.4.3): attributes beyond the default ones, from the metadata kept per instance.

A search answers from the catalogue's columns; an attribute asked with ``includefield`` (a keyword or a tag, comma
separated, or ``all``) is added from the DICOM JSON that ``instances.dicom_json`` kept for the study's, series' or
instance's first received instance (the one with the lowest id): study and patient attributes are the same in every
instance of a study (PS3.3 C.7.1, C.7.2), series attributes in every instance of a series. ``all`` adds the
attributes PS3.18 Table 10.6.3-3 lists for the level (and the levels above it). Attributes the row already has are
kept; bulk data and sequences are never added. Result objects m3edge wrote (SR, SEG) have no row in ``instances``:
their rows get nothing more. Patient attributes added here reach only an authenticated caller, and the search is
audited like any other.
"""

from __future__ import annotations

import json

from pydicom.datadict import tag_for_keyword
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dicom_node.dicomweb import unpack_metadata
from service.db.models import Instance, Series, Study
from service.dicomweb.qido import QidoError, QidoLevel

__all__ = ["parse_includefield", "include_fields", "ALL_FIELDS"]

MAX_FIELDS = 64
_STUDY = ("00080005", "00080020", "00080030", "00080050", "00080056", "00080090", "00080201", "00081030",
          "00100010", "00100020", "00100030", "00100040", "00101010", "00200010")
_SERIES = ("00080021", "00080031", "00080060", "0008103E", "00080070", "00180015", "00200011", "00200060",
           "00400244", "00400245")
_INSTANCE = ("00080008", "00080016", "00080018", "00200013", "00280008", "00280010", "00280011", "00280100")
ALL_FIELDS = {QidoLevel.STUDY: _STUDY, QidoLevel.SERIES: _STUDY + _SERIES,
              QidoLevel.INSTANCE: _STUDY + _SERIES + _INSTANCE}


def parse_includefield(values: list[str], level: QidoLevel) -> list[str]:
    """The tags (8 hex digits, upper case) the ``includefield`` parameters ask for; ``QidoError`` for a name that is
    neither a keyword nor a tag."""
    tags: list[str] = []
    for value in values:
        for item in (part.strip() for part in value.split(",")):
            if not item:
                continue
            if item == "all":
                tags.extend(ALL_FIELDS[level])
                continue
            if len(item) == 8 and all(c in "0123456789abcdefABCDEF" for c in item):
                tags.append(item.upper())
                continue
            tag = tag_for_keyword(item) if item.isidentifier() else None
            if tag is None:
                raise QidoError(f"includefield={item[:40]!r} is neither a DICOM keyword nor a tag (8 hex digits)")
            tags.append(f"{tag:08X}")
    unique = list(dict.fromkeys(tags))
    if len(unique) > MAX_FIELDS and "all" not in values:
        raise QidoError(f"ask for at most {MAX_FIELDS} fields with includefield (or includefield=all)")
    return unique


def _first(row: dict, tag: str) -> str:
    values = (row.get(tag) or {}).get("Value") or [""]
    return str(values[0])


def _representatives(session: Session, rows: list[dict], level: QidoLevel) -> dict[tuple, bytes]:
    """Per row key, the kept metadata of the first received instance under it."""
    if level is QidoLevel.STUDY:
        keys = {(_first(r, "0020000D"),) for r in rows}
        first = (select(Study.study_uid, func.min(Instance.id))
                 .join(Series, Series.study_id == Study.id).join(Instance, Instance.series_id == Series.id)
                 .where(Study.study_uid.in_([k[0] for k in keys]), func.length(Instance.dicom_json) > 0,
                        Instance.conflict.is_(False))
                 .group_by(Study.study_uid))
    elif level is QidoLevel.SERIES:
        keys = {(_first(r, "0020000D"), _first(r, "0020000E")) for r in rows}
        first = (select(Study.study_uid, Series.series_uid, func.min(Instance.id))
                 .join(Series, Series.study_id == Study.id).join(Instance, Instance.series_id == Series.id)
                 .where(Series.series_uid.in_([k[1] for k in keys]), func.length(Instance.dicom_json) > 0,
                        Instance.conflict.is_(False))
                 .group_by(Study.study_uid, Series.series_uid))
    else:
        keys = {(_first(r, "0020000D"), _first(r, "0020000E"), _first(r, "00080018")) for r in rows}
        first = (select(Study.study_uid, Series.series_uid, Instance.sop_instance_uid, Instance.id)
                 .join(Series, Series.study_id == Study.id).join(Instance, Instance.series_id == Series.id)
                 .where(Instance.sop_instance_uid.in_([k[2] for k in keys]), func.length(Instance.dicom_json) > 0,
                        Instance.conflict.is_(False)))
    ids = {tuple(found[:-1]): found[-1] for found in session.execute(first) if tuple(found[:-1]) in keys}
    if not ids:
        return {}
    kept = dict(session.execute(select(Instance.id, Instance.dicom_json)
                                .where(Instance.id.in_(list(ids.values())))).all())
    return {key: kept[id_] for key, id_ in ids.items() if kept.get(id_)}


def include_fields(session: Session, rows: list[dict], level: QidoLevel, tags: list[str]) -> None:
    """Add the attributes ``tags`` to each of ``rows`` (in place) where the kept metadata has them."""
    if not rows or not tags:
        return
    documents = _representatives(session, rows, level)
    for row in rows:
        if level is QidoLevel.STUDY:
            key: tuple = (_first(row, "0020000D"),)
        elif level is QidoLevel.SERIES:
            key = (_first(row, "0020000D"), _first(row, "0020000E"))
        else:
            key = (_first(row, "0020000D"), _first(row, "0020000E"), _first(row, "00080018"))
        kept = documents.get(key)
        if kept is None:
            continue
        document = json.loads(unpack_metadata(kept))
        for tag in tags:
            element = document.get(tag)
            if tag in row or element is None or element.get("vr") == "SQ" or "BulkDataURI" in element:
                continue
            row[tag] = element
