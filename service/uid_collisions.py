"""UIDs that arrive in a second study: each copy is stored under its own study (the recorder does that), and the pair
is flagged here, in the recorder's transaction: a ``UidCollision`` row (study pages, ``m3edge studies show``,
``m3edge_uid_collisions``) and a warning in the log that names UIDs only, never patient data.

A series UID is checked once per (study, series) row the recorder creates; SOP Instance UIDs with one indexed query
per batch. A second copy of an instance in the *same* study (same study and series UIDs, other bytes: another patient
or a changed image) is kept beside the first as a conflicting copy by the spool and the recorder, not here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.engine import Connection

from dicom_node.intake.recording import ReceivedInstance
from service.db.models import Instance, Series, Study, UidCollision, UidKind

__all__ = ["flag_series_collision", "flag_instance_collisions", "flag_study_patient_collision",
           "has_patient_collision"]

LOGGER = logging.getLogger(__name__)


def _insert_flag(connection: Connection):
    """INSERT of a flag that does nothing when the same pair is already flagged (several writers at once)."""
    if connection.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(UidCollision).on_conflict_do_nothing(
        index_elements=[UidCollision.kind, UidCollision.uid, UidCollision.study_id, UidCollision.other_study_id])


def _flag(connection: Connection, kind: UidKind, uid: str, study_uid: str, study_id: int,
          other_study_ids: Iterable[int], detected_at: datetime) -> None:
    """Record that ``uid`` arrived in ``study_id`` after being stored in each of ``other_study_ids``."""
    others = sorted(set(other_study_ids) - {study_id})
    if not others:
        return
    other_uids = dict(connection.execute(select(Study.id, Study.study_uid).where(Study.id.in_(others))).all())
    for other in others:
        connection.execute(_insert_flag(connection).values(
            kind=kind.value, uid=uid, study_id=study_id, other_study_id=other, detected_at=detected_at))
        LOGGER.warning(
            "%s UID %s arrived in study %s but is already stored in study %s: kept apart under each study and "
            "flagged, never merged", "Series Instance" if kind is UidKind.SERIES else "SOP Instance", uid, study_uid,
            other_uids.get(other, "?"),
        )


def flag_series_collision(connection: Connection, instance: ReceivedInstance, study_id: int) -> None:
    """A series row was just created for (study, series UID): is the same UID stored under another study?"""
    others = connection.execute(
        select(Series.study_id).where(Series.series_uid == instance.series_uid, Series.study_id != study_id)
    ).scalars().all()
    _flag(connection, UidKind.SERIES, instance.series_uid, instance.study_uid, study_id, others,
          instance.received_at)


def flag_instance_collisions(connection: Connection, instances: list[ReceivedInstance],
                             study_ids: Mapping[str, int]) -> None:
    """SOP Instance UIDs of a batch already stored under another study, or arriving in two studies within it.
    ``study_ids``: Study Instance UID -> row id, for every study of the batch."""
    by_uid: dict[str, set[int]] = {}
    for study_id, uid in connection.execute(
        select(Series.study_id, Instance.sop_instance_uid)
        .join(Instance, Instance.series_id == Series.id)
        .where(Instance.sop_instance_uid.in_({i.sop_instance_uid for i in instances}))
    ):
        by_uid.setdefault(uid, set()).add(study_id)
    for instance in instances:
        study_id = study_ids[instance.study_uid]
        _flag(connection, UidKind.INSTANCE, instance.sop_instance_uid, instance.study_uid, study_id,
              by_uid.get(instance.sop_instance_uid, ()), instance.received_at)
        by_uid.setdefault(instance.sop_instance_uid, set()).add(study_id)


def flag_study_patient_collision(connection: Connection, study_uid: str, study_id: int, detected_at: datetime) -> None:
    """An instance arrived in ``study_id`` with another Patient ID than the study's: the Study Instance UID is used by
    two patients. Flagged once (a ``study`` row naming the study twice); the pipeline never processes such a study
    (``service.pipeline.ledger``), so no report mixes two patients' images. The log names the UID only."""
    connection.execute(_insert_flag(connection).values(
        kind=UidKind.STUDY.value, uid=study_uid, study_id=study_id, other_study_id=study_id, detected_at=detected_at))
    LOGGER.warning(
        "Study Instance UID %s arrived with a second Patient ID: two patients under one study UID; flagged, not "
        "processed, never merged", study_uid)


def has_patient_collision(connection_or_session, study_id: int) -> bool:
    """Whether the study's UID has been seen with two Patient IDs."""
    return connection_or_session.execute(
        select(UidCollision.id).where(UidCollision.kind == UidKind.STUDY, UidCollision.study_id == study_id).limit(1)
    ).first() is not None
