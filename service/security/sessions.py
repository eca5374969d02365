"""Dashboard sessions kept in the database: opened at log-in, checked on every request, ended for good.

A session is a random 256-bit id; the cookie carries the id and the database only its SHA-256 (like API tokens), so
the table gives nobody a usable cookie. A session is valid while it has not been ended, was used within the idle
timeout, is younger than its absolute lifetime, and its user is enabled. It is ended by log-out, by disabling its user
and by a change of its user's password: every copy of the cookie stops working on its next request.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from service.db.models import DashboardSession, SessionEnd, User, utcnow
from service.security.credentials import token_digest
from service.security.users import Principal, principal_of

__all__ = ["SessionPolicy", "open_session", "session_principal", "end_session", "end_sessions_of", "live_session_counts"]

# A session's last use is written at most this often: the idle timeout is exact to within this, and a page that
# refreshes itself every few seconds does not write the database every few seconds.
_TOUCH_INTERVAL = timedelta(seconds=60)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class SessionPolicy:
    """How long a session lives: ``idle`` since its last use, ``lifetime`` since log-in, whatever happens."""

    idle: timedelta
    lifetime: timedelta
    clock: Callable[[], datetime] = utcnow

    def __post_init__(self) -> None:
        if self.idle <= timedelta(0) or self.lifetime <= timedelta(0):
            raise ValueError("a session's idle timeout and lifetime must be positive")

    @property
    def touch_interval(self) -> timedelta:
        return min(_TOUCH_INTERVAL, self.idle / 10)


def open_session(db: Session, principal: Principal, policy: SessionPolicy, remote_addr: str = "") -> str:
    """Record a new session for ``principal`` (in the caller's transaction); returns its id, for the cookie only."""
    session_id = secrets.token_urlsafe(32)
    now = policy.clock()
    # sessions past their lifetime can never be valid again: the table holds at most a lifetime's log-ins
    db.execute(delete(DashboardSession).where(DashboardSession.created_at < now - policy.lifetime))
    db.add(DashboardSession(user_id=principal.user_id, token_hash=token_digest(session_id), created_at=now,
                            last_seen_at=now, remote_addr=remote_addr[:64]))
    db.flush()
    return session_id


def session_principal(db: Session, session_id: str, policy: SessionPolicy) -> Principal | None:
    """Who holds this session, or None when it is unknown, ended, idle too long, too old, or its user is disabled.

    A valid session's last use is brought forward (at most once per ``policy.touch_interval``)."""
    if not session_id:
        return None
    row = db.execute(
        select(DashboardSession, User).join(User, User.id == DashboardSession.user_id)
        .where(DashboardSession.token_hash == token_digest(session_id))
    ).first()
    if row is None:
        return None
    record, user = row
    now = policy.clock()
    if (record.ended_at is not None or user.disabled or not user.password_hash
            or now - _aware(record.created_at) >= policy.lifetime
            or now - _aware(record.last_seen_at) >= policy.idle):
        return None
    if now - _aware(record.last_seen_at) >= policy.touch_interval:
        record.last_seen_at = now
    return principal_of(user)


def end_session(db: Session, session_id: str, reason: SessionEnd | str, now: datetime | None = None) -> bool:
    """End one session (log-out); returns whether it was still open."""
    result = db.execute(
        update(DashboardSession)
        .where(DashboardSession.token_hash == token_digest(session_id), DashboardSession.ended_at.is_(None))
        .values(ended_at=now or utcnow(), end_reason=SessionEnd(reason))
    )
    return bool(result.rowcount)


def end_sessions_of(db: Session, user_id: int, reason: SessionEnd | str, now: datetime | None = None) -> int:
    """End every open session of a user (disabled, password changed); returns how many were open."""
    result = db.execute(
        update(DashboardSession)
        .where(DashboardSession.user_id == user_id, DashboardSession.ended_at.is_(None))
        .values(ended_at=now or utcnow(), end_reason=SessionEnd(reason))
    )
    return result.rowcount or 0


def live_session_counts(db: Session, policy: SessionPolicy) -> dict[int, int]:
    """How many valid sessions each user holds now (not ended, neither idle too long nor too old)."""
    now = policy.clock()
    rows = db.execute(
        select(DashboardSession.user_id, func.count())
        .where(DashboardSession.ended_at.is_(None), DashboardSession.created_at > now - policy.lifetime,
               DashboardSession.last_seen_at > now - policy.idle)
        .group_by(DashboardSession.user_id)
    ).all()
    return dict(rows)
