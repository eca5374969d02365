"""Patient context for studies received before m3edge kept it (migration 0009 left their columns NULL).

The recorder fills a study's patient name, Patient ID and accession number as its instances arrive. A study received
earlier gets them here, when a page first shows it: from the header of one of its instances still in the spool
(pydicom's public reader, only the few attributes needed, no pixel data). A study whose files are gone stays NULL
("not recorded"). Nothing read here is logged.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.db.models import Instance, Series, Study

__all__ = ["backfill_patient_context"]

_TAGS = ["SpecificCharacterSet", "PatientName", "PatientID", "AccessionNumber"]


def _read(path: Path) -> dict | None:
    from pydicom import dcmread

    try:
        header = dcmread(path, stop_before_pixels=True, specific_tags=_TAGS)
    except Exception:  # noqa: BLE001 - an unreadable file: try another instance, or leave the study "not recorded"
        return None
    return {"patient_name": str(header.get("PatientName", "") or "")[:200],
            "patient_id": str(header.get("PatientID", "") or "")[:64],
            "accession_number": str(header.get("AccessionNumber", "") or "")[:16]}


def backfill_patient_context(session: Session, spool_dir: Path, study_uids: Iterable[str], *,
                             tries_per_study: int = 3) -> int:
    """Fill the NULL patient context of ``study_uids`` from their spooled instances; returns how many were filled.
    The caller commits."""
    uids = list(study_uids)[:500]
    if not uids:
        return 0
    spool = Path(spool_dir).resolve()
    rows = session.execute(
        select(Study.id, Instance.path).join(Series, Series.study_id == Study.id)
        .join(Instance, Instance.series_id == Series.id)
        .where(Study.study_uid.in_(uids), Study.patient_id.is_(None), Instance.conflict.is_(False),
               Instance.other_patient.is_(False))
        .order_by(Study.id, Instance.id)
    ).all()
    candidates: dict[int, list[Path]] = {}
    for study_id, relative in rows:
        paths = candidates.setdefault(study_id, [])
        if len(paths) < tries_per_study:
            path = (spool / relative).resolve()
            if path.is_relative_to(spool):
                paths.append(path)
    filled = 0
    for study_id, paths in candidates.items():
        for path in paths:
            context = _read(path) if path.is_file() else None
            if context is not None:
                session.execute(update(Study).where(Study.id == study_id, Study.patient_id.is_(None))
                                .values(**context).execution_options(synchronize_session=False))
                filled += 1
                break
    return filled
