"""Failed dashboard log-ins, limited per user name and per client address, counted from the audit log.

Every log-in attempt is an audit event anyway (``ui.login`` with outcome ``success``, ``failure`` or ``locked``), so the
throttle keeps no state of its own: it counts the recent failures in ``audit_events``. That makes the limit hold across
every API process that shares the database and across restarts (an in-memory counter would reset on both), at the cost
of two indexed COUNT queries per attempt, which is nothing beside the scrypt check a log-in does.

- Per user: ``max_failures_per_user`` failures for one name within ``window`` lock that name until the oldest of them
  leaves the window. A successful log-in starts the count afresh.
- Per address: ``max_failures_per_address`` failures from one address within ``window`` (whatever names were tried, and
  not reset by a success) lock that address: this stops one client spraying guesses over many names.

A locked attempt is refused without checking the password and is audited as ``locked``, not as a failure, so hammering
a locked name does not extend its lock-out.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.db.models import AuditEvent, utcnow

__all__ = ["LOGIN_ACTION", "LoginOutcome", "LoginThrottle", "LoginLockout"]

LOGIN_ACTION = "ui.login"


class LoginOutcome(str, enum.Enum):
    """The audit outcome of a log-in attempt."""

    SUCCESS = "success"
    FAILURE = "failure"
    LOCKED = "locked"


@dataclass(frozen=True)
class LoginLockout:
    """Why an attempt is refused before its password is checked, and for how long."""

    scope: str  # "user" or "address"
    retry_after_s: int

    @property
    def message(self) -> str:
        minutes = max(1, -(-self.retry_after_s // 60))
        who = "this user name" if self.scope == "user" else "this address"
        return (f"Too many failed log-ins for {who}. Try again in about {minutes} minute{'s' if minutes > 1 else ''}, "
                "or ask an administrator to check the audit log.")


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


class LoginThrottle:
    def __init__(self, max_failures_per_user: int = 5, max_failures_per_address: int = 20,
                 window: timedelta = timedelta(minutes=15)) -> None:
        if max_failures_per_user < 1 or max_failures_per_address < 1:
            raise ValueError("the failure limits must be at least 1")
        if window <= timedelta(0):
            raise ValueError("the lock-out window must be positive")
        self.max_failures_per_user = max_failures_per_user
        self.max_failures_per_address = max_failures_per_address
        self.window = window

    def lockout(self, session: Session, name: str, remote_addr: str) -> LoginLockout | None:
        """The lock-out in force for this name or address, or None when the attempt may check its password."""
        now = utcnow()
        since = now - self.window
        attempts = AuditEvent.action == LOGIN_ACTION
        last_success = session.execute(
            select(func.max(AuditEvent.at)).where(attempts, AuditEvent.actor == name[:64], AuditEvent.at >= since,
                                                  AuditEvent.outcome == LoginOutcome.SUCCESS.value)
        ).scalar_one()
        user_since = max(since, _aware(last_success)) if last_success is not None else since
        checks = (
            ("user", AuditEvent.actor == name[:64], user_since, self.max_failures_per_user),
            ("address", AuditEvent.remote_addr == remote_addr[:64], since, self.max_failures_per_address),
        )
        for scope, condition, start, limit in checks:
            # the limit-th most recent failure: while it is inside the window, the name or address is locked
            pivot = session.execute(
                select(AuditEvent.at)
                .where(attempts, AuditEvent.outcome == LoginOutcome.FAILURE.value, AuditEvent.at > start, condition)
                .order_by(AuditEvent.at.desc()).offset(limit - 1).limit(1)
            ).scalar_one_or_none()
            if pivot is not None:
                retry = (_aware(pivot) + self.window - now).total_seconds()
                return LoginLockout(scope, max(1, int(retry) + 1))
        return None
