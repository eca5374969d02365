"""Failed dashboard log-ins, limited per user name and per client address, counted in ``login_attempts``.

Every attempt is written and committed *before* its password is checked (outcome ``pending``), and only then are the
attempts of its name and address counted, its own included. Concurrent attempts therefore see each other: of any
number of simultaneous guesses at most the limit get their password checked, the others are refused as locked. The
count lives in the database, so the limit holds across every API process that shares it and across restarts, at the
cost of one insert and three indexed queries per attempt (nothing beside the scrypt check a log-in does).

- Per user: ``max_failures_per_user`` failed (or still pending) attempts for one name within ``window`` lock that
  name until the oldest of them leaves the window. A successful log-in starts the count afresh.
- Per address: ``max_failures_per_address`` within ``window`` from one address (whatever names were tried, and not
  reset by a success) lock that address: this stops one client spraying guesses over many names.

A locked attempt is refused without checking the password and does not count (hammering a locked name does not extend
its lock-out). Every attempt is also an audit event ``ui.login`` (the log-in route records it).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from service.db.models import LoginAttempt, utcnow

__all__ = ["LOGIN_ACTION", "LoginOutcome", "LoginThrottle", "LoginLockout", "LoginTicket"]

LOGIN_ACTION = "ui.login"


class LoginOutcome(str, enum.Enum):
    """The outcome of a log-in attempt (in ``login_attempts`` and in the audit log)."""

    PENDING = "pending"  # recorded, password not checked yet: counts as a failure until it is
    SUCCESS = "success"
    FAILURE = "failure"
    LOCKED = "locked"


_COUNTED = (LoginOutcome.PENDING.value, LoginOutcome.FAILURE.value)


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


@dataclass(frozen=True)
class LoginTicket:
    """An attempt recorded by :meth:`LoginThrottle.admit`: its row, and the lock-out that refuses it (if any)."""

    attempt_id: int
    lockout: LoginLockout | None


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


class LoginThrottle:
    def __init__(self, max_failures_per_user: int = 5, max_failures_per_address: int = 20,
                 window: timedelta = timedelta(minutes=15), clock: Callable[[], datetime] = utcnow) -> None:
        if max_failures_per_user < 1 or max_failures_per_address < 1:
            raise ValueError("the failure limits must be at least 1")
        if window <= timedelta(0):
            raise ValueError("the lock-out window must be positive")
        self.max_failures_per_user = max_failures_per_user
        self.max_failures_per_address = max_failures_per_address
        self.window = window
        self.clock = clock

    def admit(self, db: Session, name: str, remote_addr: str) -> LoginTicket:
        """Record the attempt and commit it, then decide: the ticket's lockout is None when its password may be checked.

        Commits ``db`` (the record must be visible to concurrent attempts before this one counts them)."""
        now = self.clock()
        db.execute(delete(LoginAttempt).where(LoginAttempt.at < now - self.window))
        attempt = LoginAttempt(at=now, name=name[:64], remote_addr=remote_addr[:64], outcome=LoginOutcome.PENDING.value)
        db.add(attempt)
        db.commit()
        lockout = self._lockout(db, attempt, now)
        if lockout is not None:
            self.finish(db, LoginTicket(attempt.id, lockout), LoginOutcome.LOCKED)
        return LoginTicket(attempt.id, lockout)

    @staticmethod
    def finish(db: Session, ticket: LoginTicket, outcome: LoginOutcome) -> None:
        """Record how the attempt ended (in the caller's transaction)."""
        db.execute(update(LoginAttempt).where(LoginAttempt.id == ticket.attempt_id).values(outcome=outcome.value))

    def _lockout(self, db: Session, attempt: LoginAttempt, now: datetime) -> LoginLockout | None:
        since = now - self.window
        last_success = db.execute(
            select(func.max(LoginAttempt.at)).where(LoginAttempt.name == attempt.name, LoginAttempt.at >= since,
                                                    LoginAttempt.outcome == LoginOutcome.SUCCESS.value)
        ).scalar_one()
        user_since = max(since, _aware(last_success)) if last_success is not None else since
        checks = (
            ("user", LoginAttempt.name == attempt.name, user_since, self.max_failures_per_user),
            ("address", LoginAttempt.remote_addr == attempt.remote_addr, since, self.max_failures_per_address),
        )
        for scope, condition, start, limit in checks:
            # the limit-th most recent other attempt still counted: while it is inside the window, this one is refused
            pivot = db.execute(
                select(LoginAttempt.at)
                .where(condition, LoginAttempt.outcome.in_(_COUNTED), LoginAttempt.at > start,
                       LoginAttempt.id != attempt.id)
                .order_by(LoginAttempt.at.desc()).offset(limit - 1).limit(1)
            ).scalar_one_or_none()
            if pivot is not None:
                retry = (_aware(pivot) + self.window - now).total_seconds()
                return LoginLockout(scope, max(1, int(retry) + 1))
        return None
