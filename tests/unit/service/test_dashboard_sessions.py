"""Dashboard sessions in the database, with a clock the test moves: the idle timeout, the absolute lifetime, and the
account changes that end sessions (on SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from service.db.models import DashboardSession, SessionEnd
from service.db.session import session_scope
from service.security import (
    SessionPolicy,
    add_user,
    authenticate_token,
    disable_user,
    enable_user,
    end_session,
    live_session_counts,
    open_session,
    session_principal,
    set_password,
)
from service.security.users import principal_of


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 1, 8, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def policy(clock) -> SessionPolicy:
    return SessionPolicy(idle=timedelta(minutes=30), lifetime=timedelta(hours=8), clock=clock)


@pytest.fixture
def rex(session_factory):
    with session_scope(session_factory) as db:
        user, token = add_user(db, "rex", "reviewer", password="another long secret")
        return principal_of(user), token


def open_for(session_factory, principal, policy) -> str:
    with session_scope(session_factory) as db:
        return open_session(db, principal, policy, "127.0.0.1")


def holder(session_factory, session_id, policy):
    with session_scope(session_factory) as db:
        principal = session_principal(db, session_id, policy)
        return principal.name if principal else None


def test_a_session_in_use_lives_until_its_lifetime_and_an_idle_one_ends(session_factory, policy, clock, rex):
    busy = open_for(session_factory, rex[0], policy)
    idle = open_for(session_factory, rex[0], policy)
    for _ in range(16):  # 7 h 44 min, used every 29 minutes
        clock.advance(minutes=29)
        assert holder(session_factory, busy, policy) == "rex"
    assert holder(session_factory, idle, policy) is None
    clock.advance(minutes=20)  # used 20 minutes ago, but logged in 8 h 4 min ago
    assert holder(session_factory, busy, policy) is None
    open_for(session_factory, rex[0], policy)  # a new log-in clears the sessions past their lifetime away
    with session_scope(session_factory) as db:
        assert db.query(DashboardSession).count() == 1


def test_a_session_is_idle_from_its_last_use_recorded_at_most_once_a_minute(session_factory, policy, clock, rex):
    session_id = open_for(session_factory, rex[0], policy)
    clock.advance(seconds=30)
    assert holder(session_factory, session_id, policy) == "rex"  # not recorded: too soon
    clock.advance(minutes=29, seconds=31)
    assert holder(session_factory, session_id, policy) is None  # 30 minutes since the recorded use


def test_unknown_ended_and_disabled_sessions_are_refused(session_factory, policy, rex):
    assert holder(session_factory, "", policy) is None
    assert holder(session_factory, "not-a-session", policy) is None
    ended = open_for(session_factory, rex[0], policy)
    with session_scope(session_factory) as db:
        assert end_session(db, ended, SessionEnd.LOGOUT)
        assert not end_session(db, ended, SessionEnd.LOGOUT)
    assert holder(session_factory, ended, policy) is None


def test_disabling_ends_sessions_and_tokens_for_good(session_factory, policy, rex):
    principal, token = rex
    sessions = [open_for(session_factory, principal, policy) for _ in range(2)]
    with session_scope(session_factory) as db:
        change = disable_user(db, "rex")
    assert (change.tokens_revoked, change.sessions_ended) == (1, 2)
    with session_scope(session_factory) as db:
        enable_user(db, "rex")
        assert authenticate_token(db, token) is None
        reasons = {row.end_reason for row in db.query(DashboardSession)}
    assert reasons == {SessionEnd.DISABLED}
    assert [holder(session_factory, s, policy) for s in sessions] == [None, None]
    assert holder(session_factory, open_for(session_factory, principal, policy), policy) == "rex"


def test_a_new_password_ends_the_users_sessions_only(session_factory, policy, rex):
    with session_scope(session_factory) as db:
        other, _ = add_user(db, "ada", "admin", password="correct horse battery")
        other = principal_of(other)
    mine = open_for(session_factory, rex[0], policy)
    theirs = open_for(session_factory, other, policy)
    with session_scope(session_factory) as db:
        assert set_password(db, "rex", "a brand new passphrase").sessions_ended == 1
        with pytest.raises(ValueError, match="at least 10 characters"):
            set_password(db, "rex", "short")
    assert holder(session_factory, mine, policy) is None
    assert holder(session_factory, theirs, policy) == "ada"


def test_live_sessions_are_those_neither_ended_nor_idle_nor_too_old(session_factory, policy, clock, rex):
    ended = open_for(session_factory, rex[0], policy)
    open_for(session_factory, rex[0], policy)
    with session_scope(session_factory) as db:
        end_session(db, ended, SessionEnd.LOGOUT)
        assert live_session_counts(db, policy) == {rex[0].user_id: 1}
    clock.advance(minutes=31)
    with session_scope(session_factory) as db:
        assert live_session_counts(db, policy) == {}


def test_the_policy_refuses_non_positive_durations():
    with pytest.raises(ValueError, match="must be positive"):
        SessionPolicy(idle=timedelta(0), lifetime=timedelta(hours=1))
