"""The audit trail: who read or changed what, when, from where. Recording never carries patient data."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.models import AuditEvent

__all__ = ["record_audit", "query_audit", "audit_csv"]

LOGGER = logging.getLogger(__name__)


def record_audit(session: Session, actor: str, action: str, *, study_uid: str = "", target: str = "",
                 outcome: str = "success", remote_addr: str = "", detail: dict | None = None) -> None:
    """Add an event to the caller's transaction (so it commits, or not, with what it describes)."""
    session.add(AuditEvent(actor=actor[:64], action=action[:64], study_uid=study_uid[:64], target=target[:256],
                           outcome=outcome[:16], remote_addr=remote_addr[:64], detail=detail or {}))


def query_audit(session: Session, *, actor: str | None = None, action: str | None = None, study_uid: str | None = None,
                since: datetime | None = None, limit: int = 100, offset: int = 0) -> tuple[list[AuditEvent], int]:
    from sqlalchemy import func

    query = select(AuditEvent)
    if actor:
        query = query.where(AuditEvent.actor == actor)
    if action:
        query = query.where(AuditEvent.action == action)
    if study_uid:
        query = query.where(AuditEvent.study_uid == study_uid)
    if since:
        query = query.where(AuditEvent.at >= since)
    total = session.execute(select(func.count()).select_from(query.subquery())).scalar_one()
    rows = session.execute(query.order_by(AuditEvent.id.desc()).limit(limit).offset(offset)).scalars().all()
    return list(rows), total


def audit_csv(events: Iterable[AuditEvent]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["id", "at", "actor", "action", "study_uid", "target", "outcome", "remote_addr"])
    for e in events:
        writer.writerow([e.id, e.at.isoformat(), e.actor, e.action, e.study_uid, e.target, e.outcome, e.remote_addr])
    return out.getvalue()
