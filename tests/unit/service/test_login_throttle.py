"""The log-in limit in the database: sequential rules, and concurrent attempts in several threads with their own
connections (as several API processes would be), on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import timedelta

from service.db.models import LoginAttempt
from service.db.session import session_scope
from service.security.login_limits import LoginOutcome, LoginThrottle


def attempt(session_factory, throttle, name, address, outcome=LoginOutcome.FAILURE):
    """One attempt; returns the lockout's scope, or the outcome recorded when its password was 'checked'."""
    with session_scope(session_factory) as db:
        ticket = throttle.admit(db, name, address)
        if ticket.lockout is not None:
            return ticket.lockout.scope
        throttle.finish(db, ticket, outcome)
        return outcome.value


def test_the_limit_locks_a_name_and_a_success_starts_its_count_afresh(session_factory):
    throttle = LoginThrottle(max_failures_per_user=3, max_failures_per_address=100)
    results = [attempt(session_factory, throttle, "rex", f"10.0.0.{n}") for n in range(2)]
    results.append(attempt(session_factory, throttle, "rex", "10.0.0.9", LoginOutcome.SUCCESS))
    results += [attempt(session_factory, throttle, "rex", "10.0.0.9") for _ in range(4)]
    assert results == ["failure", "failure", "success", "failure", "failure", "failure", "user"]
    assert attempt(session_factory, throttle, "ada", "10.0.0.9", LoginOutcome.SUCCESS) == "success"


def test_locked_attempts_do_not_count_and_the_address_limit_spans_names(session_factory):
    throttle = LoginThrottle(max_failures_per_user=2, max_failures_per_address=4, window=timedelta(minutes=5))
    assert [attempt(session_factory, throttle, "rex", "10.0.0.1") for _ in range(5)] == \
        ["failure", "failure", "user", "user", "user"]
    assert [attempt(session_factory, throttle, name, "10.0.0.1") for name in ("anna", "bob", "cy")] == \
        ["failure", "failure", "address"]
    with session_scope(session_factory) as db:
        outcomes = sorted(row.outcome for row in db.query(LoginAttempt))
    assert outcomes.count("failure") == 4 and outcomes.count("locked") == 4 and "pending" not in outcomes


def test_concurrent_attempts_never_check_more_passwords_than_the_limit(session_factory):
    throttle = LoginThrottle(max_failures_per_user=5, max_failures_per_address=100)
    start = threading.Barrier(30)
    results: list[str] = []

    def guess(n: int) -> None:
        start.wait()
        results.append(attempt(session_factory, throttle, "rex", f"10.0.1.{n}"))

    threads = [threading.Thread(target=guess, args=(n,)) for n in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(results) == 30
    # at most the limit get their password checked; none at all is possible (and safe) when every attempt is recorded
    # before any of them counts: each then sees 29 pending attempts and is refused
    assert results.count("failure") <= 5 and results.count("user") == 30 - results.count("failure")
